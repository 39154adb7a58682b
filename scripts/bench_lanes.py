"""GRPO throughput of the pipeline's lanes: one stage on every thread against stages side by side.

Writes the ``lanes`` section of docs/benchmarks.md (issue 17). The workload is the toy recipe's GRPO
stage (``recipes/toy/pipeline.yaml``: 8 prompts x 8 completions of up to 224 tokens, all parameters
trained) from the embedded default model, run by ``scripts/bench_grpo_speed.py``'s ``run_variant``
in worker processes, as the pipeline runs each stage in its own process:

    one      one GRPO run on ``--threads`` torch threads (what ``lanes: 1`` does)
    lanes    ``--lanes`` GRPO runs at once, each on threads // lanes threads (what ``lanes: N`` does)

Throughput is optimizer steps per second over all runs. For the side-by-side arm it counts only the
steps that ran while every run was running (between the last first-step end and the first last-step
end), so that no run is timed alone. The first ``--warmup`` steps of each run are left out. Arms take
turns in rounds, the order alternating, so drift of a shared machine hits both; the ratio is per round.

    python scripts/bench_lanes.py [--rounds 3] [--steps 8] [--threads 2] [--lanes 2] [--no-write]
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
    from cft_rl.reports import markdown_table

    per_lane = max(1, args.threads // args.lanes)
    arms = {"one": [(args.threads, 0)], "lanes": [(per_lane, i) for i in range(args.lanes)]}
    rates: dict[str, list[float]] = {name: [] for name in arms}
    counted: dict[str, list[int]] = {name: [] for name in arms}
    for round_index in range(args.rounds):
        order = list(arms) if round_index % 2 == 0 else list(arms)[::-1]
        for name in order:
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
    args = parser.parse_args(argv)
    if args.steps <= args.warmup + 1:
        parser.error("--steps must exceed --warmup by at least 2")
    started = time.time()
    body = bench(args)
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
