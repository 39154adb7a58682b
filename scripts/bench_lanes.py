"""Toy pipeline speed: GRPO in lanes (one stage on every thread against stages side by side), and SFT
epoch time by batch sampler.

Writes the ``lanes`` section of docs/benchmarks.md (issue 17). The workload is the toy recipe's GRPO
stage (``recipes/toy/pipeline.yaml`` as it stands: its prompts x completions per step, all parameters
trained) from the embedded default model, run by ``scripts/bench_grpo_speed.py``'s ``run_variant``
in worker processes, as the pipeline runs each stage in its own process:

    one      one GRPO run on ``--threads`` torch threads (what ``lanes: 1`` does)
    lanes    ``--lanes`` GRPO runs at once, each on threads // lanes threads (what ``lanes: N`` does)

Throughput is optimizer steps per second over all runs. For the side-by-side arm it counts only the
steps that ran while every run was running (between the last first-step end and the first last-step
end), so that no run is timed alone. The first ``--warmup`` steps of each run are left out. Arms take
turns in rounds, the order alternating, so drift of a shared machine hits both; the ratio is per round.

SFT: the demo's ``sft/full/seed0`` stage (``recipes/toy/pipeline.yaml``, its annotated solutions
from ``--pipeline``) for one epoch on one thread, under ``train_sampling_strategy`` ``random`` (TRL's
default) and ``group_by_length`` (the toy recipes' setting: batches of similar lengths, less padding),
in alternating order; wall time of the whole job (model load included, the same for both).

    python scripts/bench_lanes.py [--rounds 3] [--steps 8] [--threads 2] [--lanes 2] [--no-write]
        [--pipeline outputs/pipeline/toy]   # a finished demo (make demo); without it, no SFT table
    python scripts/bench_lanes.py --rounds 1 --steps 3 --no-write      # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(threads: int, seed: int, steps: int, work: str) -> None:
    """One GRPO run in this process; prints its step durations and end times as JSON."""
    sys.path.insert(0, str(HERE))
    from bench_grpo_speed import RECIPE, TOY, recipe_fields, run_variant

    from cft_rl.cpu import cpu_float_math

    with cpu_float_math(threads=threads):
        run = run_variant("baseline", TOY, recipe_fields(RECIPE), seed, steps, Path(work))
    print(json.dumps({"steps": run["steps"], "ends": run["ends"]}))


def start(threads: int, seed: int, steps: int, work: Path) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--worker", str(threads), str(seed), str(steps), str(work)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


def collect(process: subprocess.Popen) -> dict:
    out, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(
            f"a GRPO worker failed (exit {process.returncode}); rerun one with --worker to see why"
        )
    return json.loads(out.strip().splitlines()[-1])


def throughput(runs: list[dict], warmup: int) -> tuple[float, int]:
    """(steps per second over all runs, steps counted): the steps that ended inside the window where
    every run was past its warm-up and none had finished."""
    begin = max(r["ends"][warmup - 1] if warmup else r["ends"][0] - r["steps"][0] for r in runs)
    end = min(r["ends"][-1] for r in runs)
    rate, counted = 0.0, 0
    for run in runs:
        inside = [d for d, e in zip(run["steps"], run["ends"], strict=True) if begin <= e - d and e <= end]
        if not inside:
            raise SystemExit("the runs did not overlap after the warm-up; give more --steps")
        rate, counted = rate + 1 / statistics.mean(inside), counted + len(inside)
    return rate, counted


def bench(args) -> str:
    from cft_rl.reports import alternating, markdown_table

    per_lane = max(1, args.threads // args.lanes)
    arms = {"one": [(args.threads, 0)], "lanes": [(per_lane, i) for i in range(args.lanes)]}
    rates: dict[str, list[float]] = {name: [] for name in arms}
    counted: dict[str, list[int]] = {name: [] for name in arms}
    for round_index, name in alternating(list(arms), args.rounds):
        work = Path(args.work) / f"{name}-{round_index}"
        processes = [start(t, seed, args.steps, work / str(seed)) for t, seed in arms[name]]
        rate, n = throughput([collect(p) for p in processes], args.warmup)
        rates[name].append(rate)
        counted[name].append(n)
        print(f"round {round_index} {name}: {rate:.3f} steps/s ({n} steps counted)", flush=True)
    ratios = [b / a for a, b in zip(rates["one"], rates["lanes"], strict=True)]
    rows = [
        [
            f"one run, {args.threads} threads",
            f"{statistics.median(rates['one']):.3f}",
            f"{1 / statistics.median(rates['one']):.2f}",
            "1.00x",
            sum(counted["one"]),
        ],
        [
            f"{args.lanes} runs side by side, {per_lane} thread(s) each",
            f"{statistics.median(rates['lanes']):.3f}",
            f"{args.lanes / statistics.median(rates['lanes']):.2f}",
            f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f})",
            sum(counted["lanes"]),
        ],
    ]
    table = markdown_table(
        ["arm", "steps/s (all runs)", "s/step of one run", "throughput vs one run", "steps counted"], rows
    )
    return (
        f"GRPO throughput, toy recipe `pipeline.yaml` (grpo) from the embedded default model, {args.steps} "
        f"steps per run ({args.warmup} warm-up left out), {args.rounds} round(s) alternating order; "
        f"medians over rounds, the ratio per round (range). `lanes: {args.lanes}` in a recipe runs "
        f"independent stages this way.\n\n{table}"
    )


def sft_epochs(pipeline: Path, rounds: int, work: Path) -> str:
    """One epoch of the demo's sft/full/seed0 under each sampler, alternating; a markdown table."""
    import yaml

    from cft_rl.cpu import cpu_float_math
    from cft_rl.pipeline.recipe import Recipe, plan
    from cft_rl.reports import alternating, markdown_table
    from cft_rl.sft.run import main as sft_main

    recipe = Recipe.load(HERE.parent / "recipes" / "toy" / "pipeline.yaml", [f"output_dir={pipeline}"])
    stage = next(s for s in plan(recipe) if s.name.startswith("sft/full"))
    if not (pipeline / "annotate" / "dataset").is_dir():
        raise SystemExit(f"{pipeline} has no annotate/dataset; run make demo first")
    samplers = ["random", "group_by_length"]
    seconds: dict[str, list[float]] = {name: [] for name in samplers}
    for round_index, name in alternating(samplers, rounds):
        out = work / f"sft-{name}-{round_index}"
        config = {**stage.settings, "num_train_epochs": 1, "train_sampling_strategy": name}
        config |= {"output_dir": str(out), "disable_tqdm": True}
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config))
        start = time.perf_counter()
        with cpu_float_math(threads=1):
            sft_main(["--config", str(out / "config.yaml"), "--overwrite_output_dir", "true"])
        seconds[name].append(time.perf_counter() - start)
        print(f"round {round_index} sft {name}: {seconds[name][-1]:.1f} s", flush=True)
    ratios = [a / b for a, b in zip(seconds["random"], seconds["group_by_length"], strict=True)]
    rows = [
        ["random", f"{statistics.median(seconds['random']):.1f}", "1.00x"],
        [
            "group_by_length",
            f"{statistics.median(seconds['group_by_length']):.1f}",
            f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f})",
        ],
    ]
    head = (
        f"SFT, one epoch of the demo's `{stage.name}` ({pipeline}/annotate), 1 thread, {rounds} round(s) "
        "alternating; seconds of the whole job (median), speed-up per round (range):\n\n"
    )
    return head + markdown_table(["sampler", "seconds", "speed-up vs random"], rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(int(argv[1]), int(argv[2]), int(argv[3]), argv[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all (the cores)")
    parser.add_argument("--lanes", type=int, default=2)
    parser.add_argument("--work", default="/tmp/bench_lanes", help="scratch folder for the runs")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--pipeline", default=None, help="a finished demo's output_dir, for the SFT table")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup + 1:
        parser.error("--steps must exceed --warmup by at least 2")
    started = time.time()
    body = bench(args)
    if args.pipeline:
        body += "\n\n" + sft_epochs(Path(args.pipeline), args.rounds, Path(args.work))
    command = "python scripts/bench_lanes.py " + " ".join(argv)
    print(f"{body}\n\nCommand: `{command.strip()}` ({time.time() - started:.0f} s)")
    if not args.no_write:
        from cft_rl.reports import write_section

        print(
            "wrote",
            write_section("lanes", "## Pipeline lanes: stages side by side\n\n" + body, command.strip()),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
