"""GRPO step time of the toy recipe under TRL's and transformers' speed options, side by side.

    python scripts/bench_grpo_speed.py [--variants baseline,static_cache,...] [--rounds 2] [--steps 5]
        [--no-write]

Every variant trains the toy recipe's GRPO stage (``recipes/toy/pipeline.yaml``, section ``grpo``: 8
prompts x 8 completions of up to 224 tokens at T=1, all parameters trained, on the CPU) from the same
toy model for ``--steps`` steps, with the probe and checkpoints off. The variants run in one process,
round after round; the order alternates from round to round (reversed every other round), and every
variant of a round uses the round's seed, so a variant that samples the same way draws the same first
batch as the baseline. Torch runs on one thread with denormals flushed (``cpu_float_math(1)``): the
machine is shared and absolute times are noisy, so read the ratios to the baseline of the same round.

Columns: seconds per step after the first ``--warmup`` steps (those absorb one-time costs such as
compilation and are reported apart; with ``steps_per_generation`` k, leave a multiple of k steps after
them, so that generating and training-only steps count in their true proportion), the time inside
``generate`` per step, the ratios of both to the baseline (median over rounds), and a sampling check:
the share of the first generation batch that is token for token the baseline's (same seed, same
weights), and the mean completion length and reward over all steps. The variants are TRL
``GRPOConfig`` fields; ``--variants`` picks among them. Writes the section ``grpo-speed`` of
``docs/benchmarks.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "toy" / "pipeline.yaml"
TOY = ROOT / "cft_rl" / "toy" / "embedded" / "default"

# name -> (GRPOConfig fields on top of the recipe, what the option does in the installed TRL)
VARIANTS = {
    "baseline": ({}, "the recipe as it is"),
    "static_cache": (
        {"cache_implementation": "static"},
        "preallocated KV cache in model.generate (TRL passes it, with disable_compile=True)",
    ),
    "continuous_batching": (
        {"use_transformers_continuous_batching": True},
        "transformers' paged continuous-batching engine (generate_batch); use_transformers_paged is its old name",
    ),
    "steps_per_generation_2": (
        {"steps_per_generation": 2},
        "one generate call of 2 x 64 completions every 2 steps: the second step trains on completions of "
        "the policy before the first step's update (off-policy), and TRL adds a forward pass for their "
        "old log-probabilities",
    ),
    "torch_compile": ({"torch_compile": True}, "torch.compile of the training forward/backward (inductor)"),
}


def recipe_fields(recipe: Path) -> dict:
    """The GRPO settings of the pipeline recipe, less the pipeline's own keys (as its grpo stages pass them)."""
    from cft_rl.pipeline.recipe import Recipe
    from cft_rl.pipeline.sections import pipeline_keys

    return {k: v for k, v in Recipe.load(recipe).grpo.items() if k not in pipeline_keys("grpo")}


class StepClock:
    """Wall time of each optimizer step and of each ``generate`` call, and the first batch's tokens."""

    def __init__(self):
        self.steps: list[float] = []
        self.ends: list[float] = []  # wall-clock time (time.time) of each step's end
        self.generate_seconds: list[float] = []
        self.first_batch: list[list[int]] | None = None
        self._start = 0.0

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                clock.steps.append(time.perf_counter() - clock._start)
                clock.ends.append(time.time())

        return Clock()

    def wrap_generation(self, model, pad_token_id: int) -> None:
        """Time the model's ``generate`` and ``generate_batch`` (the continuous-batching engine) in place."""
        generate, generate_batch = model.generate, getattr(model, "generate_batch", None)

        def timed_generate(*args, **kwargs):
            start = time.perf_counter()
            out = generate(*args, **kwargs)
            self.generate_seconds.append(time.perf_counter() - start)
            if self.first_batch is None:
                prompt = kwargs["input_ids"].size(1)
                self.first_batch = [[t for t in row if t != pad_token_id] for row in out[:, prompt:].tolist()]
            return out

        def timed_generate_batch(*args, **kwargs):
            start = time.perf_counter()
            out = generate_batch(*args, **kwargs)
            self.generate_seconds.append(time.perf_counter() - start)
            if self.first_batch is None:
                self.first_batch = [list(o.generated_tokens) for o in out.values()]
            return out

        model.generate = timed_generate
        if generate_batch is not None:
            model.generate_batch = timed_generate_batch


def run_variant(name: str, toy: Path, fields: dict, seed: int, steps: int, work: Path) -> dict:
    from cft_rl.grpo.run import GRPORunConfig, build_trainer
    from cft_rl.toy.build import load_toy

    overrides, _ = VARIANTS[name]
    model, tokenizer, data = load_toy(toy)
    settings = {**fields, **overrides}
    settings.update(
        output_dir=str(work / f"{name}-{seed}"),
        max_steps=steps,
        seed=seed,
        probe_steps=0,
        save_strategy="no",
        disable_tqdm=True,
        report_to="none",
    )
    config = GRPORunConfig(**settings)
    clock = StepClock()
    trainer = build_trainer(config, model, data["train"], tokenizer=tokenizer, callbacks=[clock.callback()])
    clock.wrap_generation(trainer.model, tokenizer.pad_token_id)
    trainer.train()
    history = [e for e in trainer.state.log_history if "reward" in e]
    return {
        "steps": clock.steps,
        "ends": clock.ends,
        "generate_per_step": sum(clock.generate_seconds) / max(1, len(clock.steps)),
        "first_batch": clock.first_batch or [],
        "mean_length": statistics.mean(e["completions/mean_length"] for e in history),
        "reward": statistics.mean(e["reward"] for e in history),
    }


def same_share(batch: list[list[int]], reference: list[list[int]]) -> float:
    """Share of rows of ``batch`` equal, token for token, to the row of ``reference`` at the same place."""
    if not reference or len(batch) != len(reference):
        return float("nan")
    return sum(a == b for a, b in zip(batch, reference, strict=True)) / len(reference)


def steady(run: dict, warmup: int) -> float:
    """A run's mean step time after its ``warmup`` steps."""
    return statistics.mean(run["steps"][warmup:])


def _variant_row(name: str, runs: dict[str, list[dict]], warmup: int) -> list[str]:
    """One variant's table row: medians over rounds, each ratio against the baseline of its own round."""
    own, baseline = runs[name], runs["baseline"]
    step_ratios = [
        steady(base, warmup) / steady(run, warmup) for run, base in zip(own, baseline, strict=True)
    ]
    gen_ratios = [
        base["generate_per_step"] / run["generate_per_step"] for run, base in zip(own, baseline, strict=True)
    ]
    same = [same_share(r["first_batch"], b["first_batch"]) for r, b in zip(own, baseline, strict=True)]
    return [
        f"`{name}`",
        f"{statistics.median(steady(r, warmup) for r in own):.2f}",
        f"{statistics.median(step_ratios):.2f}x ({min(step_ratios):.2f}-{max(step_ratios):.2f})",
        f"{statistics.median(r['generate_per_step'] for r in own):.2f}",
        f"{statistics.median(gen_ratios):.2f}x",
        f"{statistics.median(sum(r['steps'][:warmup]) for r in own):.1f}",
        "-" if any(map(math.isnan, same)) else f"{statistics.mean(same):.0%}",
        f"{statistics.mean(r['mean_length'] for r in own):.1f}",
        f"{statistics.mean(r['reward'] for r in own):.3f}",
    ]


def bench(args) -> str:
    from cft_rl.reports import alternating, markdown_table

    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if "baseline" not in names:
        names = ["baseline", *names]
    fields = recipe_fields(Path(args.recipe))
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for round_index, name in alternating(names, args.rounds):
        run = run_variant(name, Path(args.toy), fields, round_index, args.steps, Path(args.work))
        runs[name].append(run)
        print(f"round {round_index} {name}: {steady(run, args.warmup):.2f} s/step", flush=True)

    rows = [_variant_row(name, runs, args.warmup) for name in names]
    table = markdown_table(
        [
            "variant",
            "s/step",
            "speed-up vs baseline (range)",
            "generate s/step",
            "generate speed-up",
            f"first {args.warmup} step(s) s",
            "first batch = baseline's",
            "mean length",
            "mean reward",
        ],
        rows,
    )
    notes = "\n".join(f"- `{n}`: {VARIANTS[n][0] or '(recipe)'}: {VARIANTS[n][1]}" for n in names)
    return (
        f"GRPO step time, toy recipe `{Path(args.recipe).name}` (grpo), {args.steps} steps per run, "
        f"{args.rounds} round(s) alternating order, seconds after {args.warmup} warm-up step(s); speed-up = "
        f"baseline time / variant time in the same round (median, range).\n\n{table}\n\n{notes}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="baseline,static_cache,steps_per_generation_2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of s/step")
    parser.add_argument("--toy", default=str(TOY), help="a toy build (model folder with data/)")
    parser.add_argument("--recipe", default=str(RECIPE), help="pipeline recipe with a grpo section")
    parser.add_argument("--work", default="/tmp/bench_grpo_speed", help="scratch folder for the runs")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    from cft_rl.cpu import cpu_float_math

    with cpu_float_math(threads=args.threads):
        body = bench(args)
    from cft_rl.reports import bench_command

    command = bench_command("scripts/bench_grpo_speed.py", argv)
    print(f"{body}\n\nCommand: `{command}`")
    if not args.no_write:
        from cft_rl.reports import write_section

        print(
            "wrote",
            write_section("grpo-speed", "## GRPO: speed options on the toy\n\n" + body, command),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
