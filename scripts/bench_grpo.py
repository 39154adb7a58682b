"""GRPO on the toy world: monitor overhead against plain TRL, the probe's cost, and a learning run.

    python scripts/bench_grpo.py [--toy /tmp/toy_real] [--only overhead|learn] [--no-write]

overhead: plain ``trl.GRPOTrainer`` and our ``MonitoredGRPOTrainer`` train side by side in one process,
    round after round (which goes first alternates), each round from the same warm-start with the same
    seed, so both sample the same completions and differ only by the monitors. Monitors run at every
    step (``logging_steps=1``, their worst case); the probe is off and timed on its own. Besides the
    wall time per step, the time spent inside the monitor code is measured directly: on a shared,
    noisy machine it is the steadier figure.
learn: the tuned toy recipe (``recipes/toy/grpo/toy.yaml``) from the toy warm-start; the mean training
    reward of the first and last 20 steps, and how the monitors moved.

Runs single-threaded torch (``cpu_float_math(1)``): on the shared 2-core machine, two threads fight the
other jobs and run several times slower. Writes the sections ``grpo-overhead`` and ``grpo-learn`` of
``docs/benchmarks.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from cft_rl.cpu import QUIET_CPU_RUN

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "toy" / "grpo" / "toy.yaml"


# --- overhead ----------------------------------------------------------------------------------------


def _timed_trainer_class():
    """``MonitoredGRPOTrainer`` that adds up the seconds spent in its monitor code."""
    from cft_rl.grpo.trainer import MonitoredGRPOTrainer

    class Timed(MonitoredGRPOTrainer):
        monitor_seconds = 0.0

        def _timed(self, method, *args):
            start = time.perf_counter()
            try:
                return method(*args)
            finally:
                self.monitor_seconds += time.perf_counter() - start

        def _group_metrics(self, *args):
            return self._timed(super()._group_metrics, *args)

        def _record_entropies(self, *args):
            return self._timed(super()._record_entropies, *args)

        def _entropy_metrics(self, *args):
            return self._timed(super()._entropy_metrics, *args)

    return Timed


def _overhead_config(out: Path, seed: int, steps: int, **extra):
    from cft_rl.grpo.run import GRPORunConfig

    return GRPORunConfig(
        **extra,
        output_dir=str(out),
        num_generations=8,
        per_device_train_batch_size=32,
        max_completion_length=128,
        temperature=1.0,
        learning_rate=1e-4,
        max_steps=steps,
        logging_steps=1,
        **QUIET_CPU_RUN,
        log_completions=False,
        disable_tqdm=True,
        seed=seed,
    )


def _one_run(kind: str, toy: Path, seed: int, steps: int, out: Path) -> dict:
    from trl import GRPOTrainer

    from cft_rl.toy.build import load_toy
    from cft_rl.verify.rewards import build_reward_funcs

    model, tokenizer, data = load_toy(toy)
    config = _overhead_config(out / f"{kind}-{seed}", seed, steps)
    common = dict(model=model, args=config, train_dataset=data["train"], processing_class=tokenizer)
    if kind == "plain":
        from cft_rl.verify.verifier import math_reward

        trainer = GRPOTrainer(reward_funcs=[math_reward], **common)
    else:
        funcs = build_reward_funcs(["math_reward"])
        trainer = _timed_trainer_class()(
            reward_funcs=funcs, monitor=config.monitor_config(), correct_reward="math_reward", **common
        )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    rewards = [e["reward"] for e in trainer.state.log_history if "reward" in e]
    return {
        "seconds_per_step": seconds / steps,
        "monitor_seconds_per_step": getattr(trainer, "monitor_seconds", 0.0) / steps,
        "rewards": rewards,
    }


def _probe_seconds(toy: Path, repeats: int = 3) -> tuple[float, int, int]:
    """Seconds per probe call of the recipe's probe settings on the warm-start."""
    from cft_rl.grpo.run import build_trainer, make_probe
    from cft_rl.grpo.trainer import ProbeCallback
    from cft_rl.toy.build import load_toy

    model, tokenizer, data = load_toy(toy)
    config = _overhead_config(Path("/tmp/bench_grpo_probe"), 0, 1, **_recipe_probe_fields())
    trainer = build_trainer(
        config, model, data["train"], probe_dataset=data["validation"], tokenizer=tokenizer
    )
    callback = ProbeCallback(trainer, make_probe(config, data["validation"]))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        callback.run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), config.probe_size, config.probe_num_samples


def _recipe_probe_fields() -> dict:
    import yaml

    recipe = yaml.safe_load(RECIPE.read_text())
    return {k: v for k, v in recipe.items() if k.startswith("probe_") and k != "probe_split"}


def bench_overhead(args) -> str:
    from cft_rl.reports import alternating, markdown_table

    out = Path(args.work) / "overhead"
    runs = {"plain": [], "monitored": []}
    for round_index, kind in alternating(["plain", "monitored"], args.rounds):
        runs[kind].append(_one_run(kind, Path(args.toy), round_index, args.steps, out))
        print(kind, round_index, f"{runs[kind][-1]['seconds_per_step']:.2f} s/step", flush=True)
    same = all(p["rewards"] == m["rewards"] for p, m in zip(runs["plain"], runs["monitored"], strict=True))
    plain = [r["seconds_per_step"] for r in runs["plain"]]
    monitored = [r["seconds_per_step"] for r in runs["monitored"]]
    ratios = [m / p for m, p in zip(monitored, plain, strict=True)]
    monitor = [r["monitor_seconds_per_step"] for r in runs["monitored"]]
    probe, probe_size, probe_n = _probe_seconds(Path(args.toy))
    rows = [
        [i, f"{p:.2f}", f"{m:.2f}", f"{r:+.1%}", f"{t * 1000:.1f}", f"{t / p:.2%}"]
        for i, (p, m, r, t) in enumerate(zip(plain, monitored, [x - 1 for x in ratios], monitor, strict=True))
    ]
    table = markdown_table(
        [
            "round (seed)",
            "plain TRL s/step",
            "monitored s/step",
            "wall difference",
            "monitor code ms/step",
            "monitor code / step",
        ],
        rows,
    )
    mean_plain = statistics.mean(plain)
    return (
        "## GRPO monitors: step-time overhead\n\n"
        f"Toy warm-start `{args.toy}`, 4 prompts x G=8 completions per step (<= 128 tokens), `logging_steps=1` "
        f"(monitors at every step), {args.steps} steps per run, {args.rounds} rounds alternating which "
        "trainer goes first; same seed per round, so both trainers sample the same completions "
        f"(identical reward sequences: {same}). Probe off.\n\n"
        f"{table}\n\n"
        f"Median wall-time ratio monitored/plain: {statistics.median(ratios):.3f}; time inside the monitor "
        f"code: {statistics.mean(monitor) * 1000:.1f} ms per step = {statistics.mean(monitor) / mean_plain:.2%} "
        f"of a plain step (budget: 5%). {noise_sentence(plain, monitored)}\n\n"
        f"Probe (separate, not in the step time): {probe:.2f} s per probe of {probe_size} prompts x "
        f"{probe_n} samples at T=1, = {probe / mean_plain:.1f} plain steps; logged as `probe/seconds`."
    )


def noise_sentence(plain: list[float], monitored: list[float]) -> str:
    """Whether the monitored/plain wall-time difference stands out of the machine's noise.

    The noise is how much the same job, plain TRL, varies from round to round: the range of its
    seconds per step over their median. The difference is the median monitored/plain ratio of the
    rounds, less 1; it is within the noise when its size is at most that range.
    """
    difference = statistics.median(m / p for m, p in zip(monitored, plain, strict=True)) - 1
    if len(plain) < 2:
        return (
            f"The wall-time difference ({difference:+.1%}) comes from one round: no noise estimate, "
            "run more rounds; the direct measurement is the bound."
        )
    noise = (max(plain) - min(plain)) / statistics.median(plain)
    spread = f"plain TRL alone varies by {noise:.1%} from round to round"
    if abs(difference) <= noise:
        return (
            f"The wall-time difference ({difference:+.1%}) is within the machine's noise ({spread}; other "
            "jobs share its cores); the direct measurement is the bound."
        )
    if difference > 0:
        return (
            f"The wall-time difference ({difference:+.1%}) exceeds the machine's noise ({spread}): the "
            "monitors cost more wall time than the code measured directly accounts for."
        )
    return (
        f"The monitored runs were faster ({difference:+.1%}) by more than the machine's noise ({spread}): "
        "an artefact of the order or the machine's load, not a saving; rerun with more rounds."
    )


# --- learning run ----------------------------------------------------------------------------------------


def _learn_run(args, name: str, extra: list[str]):
    from cft_rl.grpo.run import run_cli

    argv = ["--config", str(RECIPE), "--model_name_or_path", args.toy, "--dataset_name", f"{args.toy}/data"]
    argv += ["--output_dir", str(Path(args.work) / name), "--report_to", "none", *args.recipe_args.split()]
    argv += ["--overwrite_output_dir", "true"]  # a measurement trains afresh, never resumes or skips
    start = time.perf_counter()
    trainer = run_cli(argv + extra)
    return trainer.state.log_history, (time.perf_counter() - start) / 60


def _window(rows: list[dict], name: str) -> list[float]:
    return [e[name] for e in rows if name in e]


def _mean_se(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} (+-{statistics.stdev(values) / len(values) ** 0.5:.3f})"


def _probe_table(runs: dict[str, list[dict]]) -> str:
    """The fixed probe at each probed step of the recipe's run, with the lr-0 control's beside it."""
    from cft_rl.reports import markdown_table

    probes = {label: {e["step"]: e for e in h if "probe/pass@1" in e} for label, h in runs.items()}
    columns = ["probe/pass@1", "probe/pass@4", "probe/maj@4", "probe/entropy", "probe/distinct_answers"]
    probe_rows = []
    for step, e in probes["GRPO (recipe)"].items():
        c = probes["control (lr 0)"].get(step, {})
        probe_rows.append(
            [
                step,
                *(f"{e[n]:.3f}" for n in columns),
                *(f"{c[n]:.3f}" if n in c else "-" for n in columns[::3]),
            ]
        )
    return markdown_table(
        ["step", *(f"`{n}`" for n in columns), "control `probe/pass@1`", "control `probe/entropy`"],
        probe_rows,
    )


def bench_learn(args) -> str:
    """The recipe, then the same recipe at learning rate 0: the same seed draws the same prompts, so
    the control says how much of a first-vs-last difference the prompt draw alone makes."""
    from cft_rl.reports import markdown_table

    k = 20
    trained, minutes = _learn_run(args, "learn", [])
    control, _ = _learn_run(args, "control", ["--learning_rate", "0"])
    runs = {"GRPO (recipe)": trained, "control (lr 0)": control}
    steps = {label: [e for e in h if "reward" in e] for label, h in runs.items()}
    reward_rows = [
        [label, _mean_se(_window(rows[:k], "reward")), _mean_se(_window(rows[-k:], "reward"))]
        for label, rows in steps.items()
    ]
    names = [
        "reward",
        "entropy",
        "entropy/p90",
        "entropy/numeric",
        "entropy/word",
        "entropy/forking_frac",
        "explore/pass@1",
        "explore/pass@8",
        "explore/frac_zero_std",
        "explore/distinct_answers",
        "explore/self_bleu",
        "completions/mean_length",
    ]
    grpo, control = steps["GRPO (recipe)"], steps["control (lr 0)"]

    def cell(rows: list[dict], name: str) -> str:
        values = _window(rows, name)
        return f"{statistics.mean(values):.3f}" if values else "-"

    table = markdown_table(
        ["metric", f"GRPO first {k}", f"GRPO last {k}", f"control first {k}", f"control last {k}"],
        [
            [f"`{n}`", *(cell(rows, n) for rows in (grpo[:k], grpo[-k:], control[:k], control[-k:]))]
            for n in names
        ],
    )
    probe_table = _probe_table(runs)
    return (
        "## GRPO on the toy: does RL learn?\n\n"
        f"Recipe `recipes/toy/grpo/toy.yaml` {args.recipe_args} from the toy warm-start `{args.toy}`, "
        f"{len(steps['GRPO (recipe)'])} steps, {minutes:.1f} min; then the same run at learning rate 0 (the "
        "same seed draws the same prompts, so the control shows what the prompt draw alone does).\n\n"
        + markdown_table(
            ["run", f"mean training reward, first {k} steps (s.e.)", f"last {k} steps"], reward_rows
        )
        + f"\n\n{table}\n\nFixed probe (held-out validation prompts, T=1):\n\n{probe_table}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", default="/tmp/toy_real", help="a toy build (cft-rl toy build --out DIR)")
    parser.add_argument("--work", default="/tmp/bench_grpo", help="scratch folder for the runs")
    parser.add_argument("--only", choices=["overhead", "learn"], default=None)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--recipe-args", default="", help="extra recipe flags, e.g. '--max_steps 60'")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/benchmarks.md")
    args = parser.parse_args(argv)
    from cft_rl.cpu import cpu_float_math
    from cft_rl.reports import bench_command, write_section

    command = bench_command("scripts/bench_grpo.py", argv)
    sections = {}
    with cpu_float_math(threads=1):
        if args.only in (None, "overhead"):
            sections["grpo-overhead"] = bench_overhead(args)
        if args.only in (None, "learn"):
            sections["grpo-learn"] = bench_learn(args)
    for name, body in sections.items():
        print(body, "\n")
        if not args.no_write:
            write_section(name, body, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
