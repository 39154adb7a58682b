"""Speed of critical-token annotation: the fast engine against the reference, on a toy build.

Writes the `annotate` section of docs/benchmarks.md. The reference (~12 s a solution on the toy)
runs on the first ``--ref-n`` solutions (all 100 by default: ~20 minutes), side by side with the fast
engine on the same ones (same run, same machine, same settings: denormals flushed for both); with
``--ref-n`` below ``--n`` the fast engine then also runs alone on all ``--n`` solutions.
``--source self`` (the paper's setting) annotates the model's own greedy solutions of test
questions, kept when correct; ``--source dataset`` the test split's reference solutions.

    python scripts/bench_annotate.py --model DIR [--n 100] [--ref-n 100] [--source self] [--max-tokens 512]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

from cft_rl.annotate.engine import annotate_many
from cft_rl.annotate.rule import annotate_reference
from cft_rl.cpu import cpu_float_math
from cft_rl.generation import generate
from cft_rl.reports import markdown_table, write_section
from cft_rl.toy.build import load_toy
from cft_rl.verify.verifier import check


def _solutions(model, tokenizer, data, args) -> list[dict]:
    """``args.n`` rows with a ``solution`` to annotate, drawn from the test split in order."""
    rows = list(data["test"])
    if args.source == "dataset":
        return rows[: args.n]
    kept: list[dict] = []
    for start in range(0, len(rows), 64):
        chunk = rows[start : start + 64]
        # Padded batched greedy generation: a benchmark only needs correct solutions of the model's own
        # (the annotate job decodes them unpadded, in a branch pool, so that sharding cannot move an argmax).
        groups = generate(model, tokenizer, [r["prompt"] for r in chunk], max_new_tokens=args.max_tokens)
        for row, group in zip(chunk, groups, strict=True):
            if check(group[0].text, row["answer"]).score == 1.0:
                kept.append({**row, "solution": group[0].text.strip()})
        if len(kept) >= args.n:
            break
    return kept[: args.n]


def _timed_reference(rows, model, tokenizer, args):
    start = time.perf_counter()
    results = [
        annotate_reference(model, tokenizer, r["prompt"], r["solution"], r["answer"], args.k, args.max_tokens)
        for r in rows
    ]
    return results, time.perf_counter() - start


def _timed_fast(rows, model, tokenizer, args):
    """The fast engine on all ``rows`` at once (it decodes branches of many solutions together)."""
    start = time.perf_counter()
    examples = [(i, r["prompt"], r["solution"], r["answer"]) for i, r in enumerate(rows)]
    done = dict(
        annotate_many(
            model,
            tokenizer,
            examples,
            args.k,
            args.max_tokens,
            args.batch_size,
            eager_alternatives=args.eager,
        )
    )
    return [done[i] for i in range(len(rows))], time.perf_counter() - start


def _compare(model, tokenizer, rows, args):
    """Reference and fast engine on the same rows, interleaved against drift: table rows, the
    reference's tokens per second, and the fast engine's annotations and mean time.

    Shared machines speed up and slow down over minutes, and the reference takes ~12 s a solution.
    So the fast engine runs on all ``rows`` three times, before, between and after the two halves of
    the reference run, and the speed-up divides the reference's time by the fast engine's mean.
    """
    fast_s, ref, ref_s = [], [], 0.0
    half = (len(rows) + 1) // 2
    for part in (rows[:half], rows[half:], []):
        got, seconds = _timed_fast(rows, model, tokenizer, args)
        fast_s.append(seconds)
        if part:
            annotations, seconds = _timed_reference(part, model, tokenizer, args)
            ref, ref_s = ref + annotations, ref_s + seconds
    mean_fast = sum(fast_s) / len(fast_s)
    same = sum(a == b for a, b in zip(ref, got, strict=True))
    flags = [
        (x.critical, y.critical) for a, b in zip(ref, got, strict=True) for x, y in zip(a, b, strict=True)
    ]
    return (
        [
            [f"reference, {len(rows)} solutions ({len(flags)} tokens)", f"{ref_s:.1f} s"],
            [
                f"fast engine, same {len(rows)} solutions (mean of 3 runs: before, between, after)",
                f"{mean_fast:.2f} s ({', '.join(f'{s:.1f}' for s in fast_s)})",
            ],
            ["**speed-up** (same solutions, same run)", f"**{ref_s / mean_fast:.1f}x**"],
            ["identical annotation lists", f"{same}/{len(rows)}"],
            ["identical critical flags", f"{sum(x == y for x, y in flags)}/{len(flags)}"],
            ["reference, tokens annotated per second", f"{len(flags) / ref_s:.2f}"],
        ],
        len(flags) / ref_s,
        (got, mean_fast),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a toy build folder (cft-rl toy build --out DIR)")
    parser.add_argument("--source", choices=("self", "dataset"), default="self")
    parser.add_argument("--n", type=int, default=100, help="solutions for the fast engine alone")
    parser.add_argument(
        "--ref-n", type=int, default=100, help="solutions also run through the reference (~12 s each)"
    )
    parser.add_argument("--k", type=int, default=2, help="alternatives per token")
    parser.add_argument("--max-tokens", type=int, default=512, help="continuation (and solution) budget")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--eager", action="store_true", help="every rank's alternative at once")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    model, tokenizer, data = load_toy(args.model)
    with cpu_float_math():
        rows = _solutions(model, tokenizer, data, args)
        _timed_fast(rows[:2], model, tokenizer, args)  # warm-up (and the verifier's worker pool)
        table, ref_rate, (everything, all_s) = _compare(model, tokenizer, rows[: args.ref_n], args)
        if args.ref_n < len(rows):
            everything, all_s = _timed_fast(rows, model, tokenizer, args)
    tokens = sum(len(a) for a in everything)
    critical = sum(x.critical for a in everything for x in a)
    table += [
        [f"fast engine, {len(rows)} solutions ({tokens} tokens)", f"{all_s:.1f} s"],
        ["fast engine, tokens annotated per second", f"{tokens / all_s:.1f}"],
    ]
    if args.ref_n < len(rows):
        ratio = f"**{tokens / all_s / ref_rate:.1f}x**"
        table.append(
            [f"**throughput ratio** (fast engine on all, reference on the first {args.ref_n})", ratio]
        )
    table += [
        ["critical fraction", f"{critical / max(tokens, 1):.3f}"],
        [
            "peak memory (maxrss, whole process)",
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB",
        ],
    ]
    body = (
        f"Critical-token annotation on the toy base model, {args.source} solutions of the test split, "
        f"k={args.k}, budget {args.max_tokens} tokens; fast engine: batch {args.batch_size}, "
        f"{'eager alternatives' if args.eager else 'rank r+1 only where rank r failed'}; float32, "
        f"denormals flushed for both engines, {torch.get_num_threads()} torch threads. The reference ran "
        f"on {min(args.ref_n, len(rows))} solutions in two halves, the fast engine on the same solutions "
        "before, between and after them (this machine's speed drifts over minutes); the speed-up is the "
        "reference's time over the fast engine's mean.\n\n" + markdown_table(["measure", "value"], table)
    )
    print(body)
    if not args.no_write:
        write_section("annotate", body, "python " + " ".join(sys.argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
