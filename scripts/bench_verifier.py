"""Accuracy and speed of the math verifier on the real benchmark files.

Writes the `verifier` section of docs/benchmarks.md:
1. reference solutions verify against their own gold (the benchmarks that ship worked solutions);
2. `\\boxed{gold}` verifies and a clearly wrong answer does not, on every one of the 14 files, with the
   failing rows shown so the cause is visible;
3. speed on GSM8K test: single calls against the batch API (each on fresh workers, so neither
   inherits the other's parse caches), p50/p99 latency, and the worst case over adversarial inputs.

    python scripts/bench_verifier.py [--data-root DIR] [--limit N] [--part all|accuracy|speed]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time

from cft_rl.data.datasets import BENCHMARKS, load_benchmark
from cft_rl.reports import bench_command, markdown_table, write_section
from cft_rl.verify import verifier as rewards

SOLUTION_SETS = ("gsm8k_train", "gsm8k_test", "math500", "minerva_math")
TARGET = 0.995
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
ADVERSARIAL = rewards.PATHOLOGICAL_INPUTS


def wrong_answer(answers: list[str], i: int) -> str:
    """A clearly wrong answer for row i: a different number, or another row's different answer."""
    gold = answers[i]
    if len(gold) == 1 and gold in "ABCDE":
        return "ABCDE"[("ABCDE".index(gold) + 1) % 4]
    if _NUMBER.match(gold):
        value = float(gold) + 1
        return str(int(value)) if value.is_integer() else str(value)
    for step in range(1, len(answers)):
        other = answers[(i + step) % len(answers)]
        if other.strip() != gold.strip():
            return other
    return gold + "+1"


def rate(scores: list[float]) -> float:
    return sum(scores) / max(1, len(scores))


def show_failures(name: str, kind: str, rows: list[tuple[str, str, str]], limit: int = 3) -> list[str]:
    lines = [f"- **{name}**, {kind}: {len(rows)} rows"]
    for pred, gold, status in rows[:limit]:
        lines.append(f"  - gold `{gold[:80]}` vs `{pred[:80]}` -> {status}")
    return lines


def accuracy_section(args) -> str:
    rows, causes = [], []
    for name in BENCHMARKS:
        ds = load_benchmark(name, data_root=args.data_root, limit=args.limit)
        answers, solutions = ds["answer"], ds["solution"]
        boxed = rewards.check_batch([f"\\boxed{{{a}}}" for a in answers], answers)
        wrongs = [wrong_answer(answers, i) for i in range(len(answers))]
        wrong = rewards.check_batch([f"\\boxed{{{w}}}" for w in wrongs], answers)
        boxed_rate, wrong_rate = rate([v.score or 0.0 for v in boxed]), rate([v.score or 0.0 for v in wrong])
        ref_cell = "-"
        if name in SOLUTION_SETS:
            ref = rewards.check_batch(solutions, answers)
            ref_rate = rate([v.score or 0.0 for v in ref])
            ref_cell = f"{ref_rate:.2%}" + ("" if ref_rate >= TARGET else " ✗")
            bad = [
                (s[-80:], a, v.status)
                for s, a, v in zip(solutions, answers, ref, strict=True)
                if v.score != 1.0
            ]
            causes += show_failures(name, "reference solution not verified", bad) if bad else []
        bad_boxed = [(a, a, v.status) for a, v in zip(answers, boxed, strict=True) if v.score != 1.0]
        bad_wrong = [
            (w, a, v.status) for w, a, v in zip(wrongs, answers, wrong, strict=True) if v.score == 1.0
        ]
        causes += show_failures(name, "boxed gold not verified", bad_boxed) if bad_boxed else []
        causes += show_failures(name, "wrong answer accepted", bad_wrong) if bad_wrong else []
        rows.append(
            [
                name,
                len(ds),
                ref_cell,
                f"{boxed_rate:.2%}" + ("" if boxed_rate >= TARGET else " ✗"),
                f"{wrong_rate:.2%}" + ("" if wrong_rate <= 1 - TARGET else " ✗"),
            ]
        )
        print(rows[-1], flush=True)
    table = markdown_table(
        ["benchmark", "rows", "reference solution ✓", "\\boxed{gold} ✓", "wrong answer ✓"], rows
    )
    body = f"Target: ≥ {TARGET:.1%} verified, ≤ {1 - TARGET:.1%} of wrong answers accepted (✗ marks a miss).\n\n{table}"
    return body + (
        "\n\nRows that did not behave (first 3 of each):\n\n" + "\n".join(causes) if causes else ""
    )


def _fresh_workers() -> None:
    rewards.shutdown()  # drop the workers' parse caches: no mode may inherit another's
    rewards.warmup()


def timed_modes(preds: list, golds: list, repeats: int = 3) -> dict:
    """Single calls against the batch API on the same pairs: best of ``repeats``, each on fresh workers."""
    single, batch, latencies = 0.0, 0.0, []
    for _ in range(repeats):
        _fresh_workers()
        run = []
        loop_start = time.perf_counter()
        for p, g in zip(preds, golds, strict=True):
            start = time.perf_counter()
            rewards.verify(p, g)
            run.append(time.perf_counter() - start)
        rate = len(preds) / (time.perf_counter() - loop_start)  # wall time, as for the batch
        if rate > single:
            single, latencies = rate, run
        _fresh_workers()
        start = time.perf_counter()
        rewards.verify_batch(preds, golds)
        batch = max(batch, len(preds) / (time.perf_counter() - start))
    q = statistics.quantiles(latencies, n=100)
    return {"single": single, "batch": batch, "p50": q[49], "p99": q[98]}


def speed_section(args) -> str:
    ds = load_benchmark("gsm8k_test", data_root=args.data_root, limit=args.limit)
    solutions, golds = list(ds["solution"]), list(ds["answer"])  # plain lists: no column access in timings
    # The reference solutions state the gold verbatim, which the verifier settles without sympy. A reward
    # also sees wrong answers and equivalent rewrites, which need the symbolic path: one of each per row.
    mixed_preds, mixed_golds = [], []
    for s, g in zip(solutions, golds, strict=True):
        value = int(float(g)) if _NUMBER.match(g) and float(g).is_integer() else None
        rewrites = (
            [rf"\boxed{{{value + 1}}}", rf"\boxed{{\frac{{{2 * value}}}{{2}}}}"] if value is not None else []
        )
        mixed_preds += [s, *rewrites]
        mixed_golds += [g] * (1 + len(rewrites))
    reference = timed_modes(solutions, golds)
    mixed = timed_modes(mixed_preds, mixed_golds)
    worst = 0.0
    for p, g in ADVERSARIAL:
        start = time.perf_counter()
        assert rewards.verify(p, g, timeout=rewards.DEFAULT_TIMEOUT_S) == 0.0
        worst = max(worst, time.perf_counter() - start)
    rows = []
    for label, m in (
        (f"reference solutions ({len(solutions)})", reference),
        (f"mixed: reference, wrong, rewritten ({len(mixed_preds)})", mixed),
    ):
        rows.append(
            [
                label,
                f"{m['single']:.0f}/s",
                f"{m['batch']:.0f}/s",
                f"{m['batch'] / m['single']:.2f}x",
                f"{m['p50'] * 1e3:.2f} / {m['p99'] * 1e3:.2f} ms",
            ]
        )
    table = markdown_table(
        [
            "GSM8K test workload (pairs)",
            "single `verify`",
            "`verify_batch`",
            "batch / single",
            "single p50 / p99",
        ],
        rows,
    )
    return (
        f"{table}\n\nBest of 3 runs per mode, each on fresh workers. Target: batch ≥ 1.8x single on work that needs the symbolic path (the mixed row); "
        "verbatim answers (the reference row) are settled in-process before any worker is involved: both "
        "modes do the same tens of microseconds of string work per pair there, and a whole run takes "
        f"~30-50 ms, so that row's ratio is timing noise.\n\nWorst case over {len(ADVERSARIAL)} adversarial inputs: {worst:.2f} s "
        f"(timeout {rewards.DEFAULT_TIMEOUT_S:.0f} s, promised bound {rewards.DEFAULT_TIMEOUT_S + 1:.0f} s)."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--limit", type=int, default=None, help="rows per benchmark (default: all)")
    parser.add_argument("--part", choices=("all", "accuracy", "speed"), default="all")
    args = parser.parse_args()
    command = bench_command("scripts/bench_verifier.py")
    # Two sections, so the timed part can be rerun alone on a quiet machine.
    if args.part in ("all", "accuracy"):
        body = f"## Verifier: agreement with gold answers\n\n{accuracy_section(args)}"
        print(body)
        write_section("verifier-accuracy", body, command)
    if args.part in ("all", "speed"):
        body = f"## Verifier: speed\n\n{speed_section(args)}"
        print(body)
        write_section("verifier-speed", body, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
