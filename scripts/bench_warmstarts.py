"""The SFT warm starts against the base model: does each arm keep the base's exploration?

For the base model and each SFT warm start, draws ``--samples`` completions at T=1 of the first
``--problems`` problems of ``--split`` under each of ``--seeds`` sampling seeds, and scores them as the
eval job does (:func:`cft_rl.eval.scoring.score_groups`: pass@1, pass@k, mean token entropy, distinct
final answers per problem), with distinct completions per problem. Greedy accuracy is read from the
pipeline's eval stages when they are there (it is not recomputed).

    python scripts/bench_warmstarts.py --pipeline outputs/pipeline/toy
    python scripts/bench_warmstarts.py --base MODEL --data DATA --arms full=DIR critical=DIR ...
        [--split validation] [--problems 100] [--samples 8] [--seeds 0 1 2] [--json PATH] [--no-write]

Each SFT run is measured. An arm is one SFT run (``sft/<arm>``, or an ``--arms`` entry), or, from a
pipeline run with ``sft.seed_per_grpo_seed``, one SFT run per GRPO seed (``sft/<arm>/seed<s>``, its
greedy accuracy from ``eval/sft/<arm>/seed<s>``).

Writes the ``warmstarts`` section of docs/benchmarks.md: a row per model (mean ± sd over its
replicates), then each arm's difference from the base (mean, with its min–max), then, for arms of
several runs, each run's row. An arm of one SFT run has its sampling seeds as replicates (``--seeds``,
default 0 1 2), so its spread leaves out the training-seed spread; an arm of several has its runs, each
its mean over the sampling seeds (default: seed 0 only), so its spread is the training seed's.
``full_replica`` (the experiment's ``full`` at other SFT seeds), when present, measures the
training-seed spread: its difference from ``full`` is printed (paired by GRPO seed, with several runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from pathlib import Path

# scripts/warmstarts_report.py: Python puts a script's own folder first on sys.path.
from bench_toy import demo_eval_budget
from warmstarts_report import arms_of, mean_of, render, replica_difference, summarize

from cft_rl.reports import bench_command, write_section

# The pipeline's required arms come first, in its order; the others follow by name.
ARM_ORDER = ("full", "critical")
SEED_RUN = re.compile(r"seed(\d+)")  # sft/<arm>/seed<s>: the arm's SFT run for GRPO seed s


# --- what to measure -------------------------------------------------------------------------------


def parse_arms(pairs: list[str]) -> dict[str, Path]:
    arms = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--arms expects name=path, got {pair!r} (e.g. --arms full=outputs/sft/full)")
        if name in arms or name == "base":
            raise SystemExit(f"--arms: the name {name!r} is taken (twice, or 'base'); rename that arm")
        arms[name] = Path(path)
    return arms


def _seed_runs(arm: Path) -> list[Path]:
    """``arm``'s ``seed<s>`` folders (sft.seed_per_grpo_seed), by seed; none for an arm trained once."""
    found = [p for p in arm.iterdir() if p.is_dir() and SEED_RUN.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(SEED_RUN.fullmatch(p.name)[1]))


def pipeline_arms(root: Path) -> dict[str, Path]:
    """Every SFT warm start of a pipeline folder, ``{run: folder}``: ``<arm>`` for ``sft/<arm>``, or
    ``<arm>/seed<s>`` for each ``sft/<arm>/seed<s>``; each must be finished (its trainer_state.json)."""
    from cft_rl.resume import finished_step

    sft = root / "sft"
    found = sorted(sft.iterdir()) if sft.is_dir() else []
    arms = [p for p in found if p.is_dir() and not p.name.startswith(".")]
    if not arms:
        raise SystemExit(f"{root} has no SFT warm starts in {sft}; run the pipeline's sft stages first")
    rank = {name: i for i, name in enumerate(ARM_ORDER)}
    arms.sort(key=lambda p: (rank.get(p.name, len(rank)), p.name))
    runs = {}
    for arm in arms:
        seeds = _seed_runs(arm)
        if seeds and finished_step(arm) is not None:  # from a run without sft.seed_per_grpo_seed
            print(f"note: {arm} holds a run and seed<s> folders; measuring the seed folders", file=sys.stderr)
        runs |= {f"{arm.name}/{p.name}": p for p in seeds} if seeds else {arm.name: arm}
    per_seed = sorted({name.split("/")[0] for name in runs if "/" in name})
    once = [name for name in runs if "/" not in name]
    if per_seed and once:
        raise SystemExit(
            f"{sft} mixes layouts: {once} trained once, {per_seed} once per GRPO seed (seed<s> folders); "
            "move the stale folders aside, or name the runs to compare with --base/--data/--arms"
        )
    unfinished = [name for name, path in runs.items() if finished_step(path) is None]
    if unfinished:
        raise SystemExit(
            f"SFT runs not finished in {sft}: {unfinished} (no trainer_state.json); rerun the pipeline, "
            "or name the finished ones with --base/--data/--arms"
        )
    return runs


def models_to_measure(args) -> tuple[Path | str, dict[str, dict]]:
    """The dataset, and ``{name: {"path", "eval"}}`` of the base then each arm (eval: a folder or None)."""
    if args.pipeline:
        if args.base or args.data or args.arms:
            raise SystemExit("pass --pipeline, or --base/--data/--arms for another layout, not both")
        root = Path(args.pipeline)
        world = root / "toy" / "world"
        if not (world / "data").is_dir():
            raise SystemExit(
                f"{world} holds no toy world (no data folder): is {root} a toy pipeline's output_dir? "
                "For another layout pass --base MODEL --data DATA --arms name=path ..."
            )
        models = {"base": {"path": world, "eval": root / "eval" / "base"}}
        for name, path in pipeline_arms(root).items():  # eval/sft/<arm> or eval/sft/<arm>/seed<s>
            models[name] = {"path": path, "eval": root / "eval" / "sft" / name}
        return world / "data", models
    if not (args.base and args.data and args.arms):
        raise SystemExit("pass --pipeline DIR, or all of --base MODEL --data DATA --arms name=path ...")
    models = {"base": {"path": args.base, "eval": None}}
    models |= {name: {"path": path, "eval": None} for name, path in parse_arms(args.arms).items()}
    return args.data, models


def default_seeds(models: dict[str, dict]) -> list[int]:
    """Sampling seeds 0 1 2 for arms of one SFT run; 0 when an arm has several: the runs are then its
    replicates (the training-seed spread), and one sampling seed samples each alike."""
    return [0] if any(len(runs) > 1 for runs in arms_of(models).values()) else [0, 1, 2]


def greedy_from_eval(folder: Path | None, benchmark: str | None) -> dict | None:
    """``{"benchmark", "accuracy", "questions", "max_new_tokens"}`` of a finished eval folder's greedy run.

    The eval folder's ``summary.json`` is written when every benchmark is done. ``benchmark`` picks one
    label; by default the only one, or the only toy split.
    """
    path = folder / "summary.json" if folder else None
    if path is None or not path.is_file():
        return None
    found = json.loads(path.read_text())["benchmarks"]
    if benchmark is None:
        labels = list(found) if len(found) == 1 else [b for b in found if b.startswith("toy-")]
        if len(labels) != 1:
            raise SystemExit(f"{path} holds benchmarks {sorted(found)}: pick one with --eval-benchmark")
        benchmark = labels[0]
    if benchmark not in found:
        raise SystemExit(f"{path} has no benchmark {benchmark!r}; it holds {sorted(found)}")
    summary = found[benchmark]
    if "greedy" not in summary:
        return None  # evaluated with greedy off: there is no greedy accuracy to report
    settings = summary.get("settings", {})
    return {
        "benchmark": benchmark,
        "accuracy": summary["greedy"]["accuracy"],
        "questions": summary["num_questions"],
        "max_new_tokens": settings.get("max_new_tokens"),
    }


# --- sampling --------------------------------------------------------------------------------------


def sample_metrics(groups, golds, k: int) -> dict:
    """The table's metrics of one seed's samples (``pass@k`` stored under the key ``pass@k``)."""
    from cft_rl.eval.scoring import score_groups

    metrics, _ = score_groups(groups, golds, ks=(1, k))
    return {
        "pass@1": metrics["pass@1"],
        "pass@k": metrics[f"pass@{k}"],
        "gap": metrics[f"pass@{k}"] - metrics["pass@1"],
        "entropy": metrics["entropy"],
        "distinct_answers": metrics["distinct_answers"],
        # Counted as cft_rl.eval.scoring.summarize counts them: identical texts are one completion.
        "distinct_completions": sum(len({s.text for s in g}) for g in groups) / len(groups),
        "accuracy": metrics["accuracy"],
        "frac_no_answer": metrics["frac_no_answer"],
    }


def measure(path, rows, args) -> dict[int, dict]:
    """``{seed: metrics}`` of one model, sampled as the eval job samples (same float settings on CPU)."""
    import torch

    from cft_rl.cpu import cpu_float_math
    from cft_rl.eval.job import load_model
    from cft_rl.generation import generate

    model, tokenizer = load_model(str(path))
    on_cpu = model.device.type == "cpu"
    out = {}
    with cpu_float_math(args.threads) if on_cpu else contextlib.nullcontext(), torch.inference_mode():
        for seed in args.seeds:
            groups = generate(
                model, tokenizer, rows["prompt"], n=args.samples, temperature=1.0,
                max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=seed,
            )  # fmt: skip
            out[seed] = sample_metrics(groups, rows["answer"], args.samples)
    return out


def measure_all(models: dict[str, dict], rows, args) -> None:
    """Fill each model's ``seeds``; progress and ETA on stderr."""
    start = time.monotonic()
    for done, (name, model) in enumerate(models.items()):
        print(f"== {name} ({model['path']}): {len(args.seeds)} seeds x {len(rows)} problems x "
              f"{args.samples} samples", file=sys.stderr, flush=True)  # fmt: skip
        model["seeds"] = measure(model["path"], rows, args)
        elapsed = time.monotonic() - start
        left = len(models) - done - 1
        print(f"   {name}: pass@1 {mean_of(model, 'pass@1'):.3f}; {elapsed:.0f} s so far, "
              f"ETA {elapsed / (done + 1) * left:.0f} s for {left} more", file=sys.stderr, flush=True)  # fmt: skip


# --- command line ----------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pipeline", help="a toy pipeline's output_dir (toy/world, sft/<arm> or sft/<arm>/seed<s>, eval/...)"
    )
    parser.add_argument("--base", help="the base model (with --data and --arms, instead of --pipeline)")
    parser.add_argument("--data", help="the dataset (folder, file or Hub id) the problems come from")
    parser.add_argument("--arms", nargs="+", default=[], help="warm starts, name=path ...")
    parser.add_argument("--split", default="validation", help="the split the problems come from")
    parser.add_argument("--problems", type=int, default=100, help="the first this many problems")
    parser.add_argument("--samples", type=int, default=8, help="samples per problem at T=1 (the k)")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="sampling seeds (default 0 1 2; 0 for arms of several SFT runs)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="generation budget (default: the demo recipe's eval budget)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--eval-benchmark", default=None, help="the eval label of greedy accuracy")
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    if args.samples < 2:
        parser.error("--samples must be at least 2: pass@1 against pass@k needs k > 1")
    if args.problems < 1:
        parser.error("--problems must be at least 1")
    if args.seeds and len(set(args.seeds)) < len(args.seeds):
        parser.error(f"--seeds lists a seed twice: {args.seeds}")
    args.max_new_tokens = args.max_new_tokens or demo_eval_budget()
    return args


def main(argv=None) -> int:
    from cft_rl.data.datasets import load_math_dataset

    args = parse_args(argv)
    data, models = models_to_measure(args)
    args.seeds = args.seeds or default_seeds(models)
    rows = load_math_dataset(data, split=args.split, limit=args.problems)
    if len(rows) == 0:
        raise SystemExit(f"{data} has no {args.split} problems; pick another --split")
    for model in models.values():  # read first: a bad eval folder fails before minutes of sampling
        model["greedy"] = greedy_from_eval(model["eval"], args.eval_benchmark)
    measure_all(models, rows, args)
    summary = summarize(models)
    keys = ("split", "samples", "seeds", "max_new_tokens")
    settings = {key: getattr(args, key) for key in keys} | {"problems": len(rows), "data": str(data)}
    body = render(models, summary, settings)
    print(body)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        dump = {"settings": settings, "models": models, "arms": summary}
        if found := replica_difference(models, summary):
            dump["full_replica_vs_full"] = found[0]
        Path(args.json).write_text(json.dumps(dump, indent=2, default=str) + "\n")
    if not args.no_write:
        command = bench_command("scripts/bench_warmstarts.py")
        print("wrote", write_section("warmstarts", body, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
