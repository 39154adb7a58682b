"""Speed of critical-token annotation: the fast engine against the reference, on a toy build.

Writes the `annotate` section of docs/benchmarks.md. The reference is slow, so it runs only on the
first ``--ref-n`` solutions, side by side with the fast engine on the same ones (same run, same
machine); the fast engine then runs alone on all ``--n`` solutions of the test split.

    python scripts/bench_annotate.py --model DIR [--n 100] [--ref-n 3] [--k 2] [--max-tokens 512]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

from cft_rl.annotate_core import annotate_reference
from cft_rl.annotate_fast import annotate_fast
from cft_rl.reports import markdown_table, write_section
from cft_rl.toy import load_toy


def _timed(fn, rows, model, tokenizer, args, **extra):
    start = time.perf_counter()
    results = [
        fn(model, tokenizer, r["prompt"], r["solution"], r["answer"], args.k, args.max_tokens, **extra)
        for r in rows
    ]
    return results, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a toy build folder (cft-rl toy build --out DIR)")
    parser.add_argument("--n", type=int, default=100, help="test solutions for the fast engine alone")
    parser.add_argument("--ref-n", type=int, default=3, help="solutions also run through the reference")
    parser.add_argument("--k", type=int, default=2, help="alternatives per token")
    parser.add_argument("--max-tokens", type=int, default=512, help="continuation budget")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    model, tokenizer, data = load_toy(args.model)
    model.eval()
    rows = list(data["test"].select(range(min(args.n, len(data["test"])))))
    annotate_fast(*_first_args(model, tokenizer, rows[0], args))  # warm-up: verifier workers, kernels
    ref, ref_s = _timed(annotate_reference, rows[: args.ref_n], model, tokenizer, args)
    fast, fast_s = _timed(
        annotate_fast, rows[: args.ref_n], model, tokenizer, args, batch_size=args.batch_size
    )
    same = sum(a == b for a, b in zip(ref, fast, strict=True))
    flags = [
        (x.critical, y.critical) for a, b in zip(ref, fast, strict=True) for x, y in zip(a, b, strict=True)
    ]
    all_fast, all_s = _timed(annotate_fast, rows, model, tokenizer, args, batch_size=args.batch_size)
    tokens = sum(len(a) for a in all_fast)
    critical = sum(x.critical for a in all_fast for x in a)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table = markdown_table(
        ["measure", "value"],
        [
            [f"reference, {len(ref)} solutions", f"{ref_s:.1f} s"],
            [f"fast engine, same {len(ref)} solutions", f"{fast_s:.2f} s"],
            ["speed-up (same solutions, same run)", f"{ref_s / fast_s:.1f}x"],
            ["identical annotation lists", f"{same}/{len(ref)}"],
            ["identical critical flags", f"{sum(x == y for x, y in flags)}/{len(flags)}"],
            [f"fast engine, {len(rows)} solutions", f"{all_s:.1f} s"],
            ["tokens annotated per second", f"{tokens / all_s:.1f}"],
            ["critical fraction", f"{critical / max(tokens, 1):.3f}"],
            ["peak memory (maxrss)", f"{peak_mb:.0f} MB"],
        ],
    )
    body = (
        f"Critical-token annotation on the toy model (test split, dataset solutions), k={args.k}, "
        f"budget {args.max_tokens} tokens, batch size {args.batch_size}, float32, "
        f"{torch.get_num_threads()} torch threads.\n\n{table}"
    )
    print(body)
    if not args.no_write:
        write_section("annotate", body, "python " + " ".join(sys.argv))
    return 0


def _first_args(model, tokenizer, row, args):
    return model, tokenizer, row["prompt"], row["solution"], row["answer"], args.k, args.max_tokens


if __name__ == "__main__":
    raise SystemExit(main())
