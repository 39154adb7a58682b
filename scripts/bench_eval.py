"""Evaluation throughput on the toy model on CPU: batched generation against one sample at a time.

Writes the `eval` section of docs/benchmarks.md: completions per second for greedy decoding of the
same test questions with ``batch_size`` prompts per call and with one, both through the evaluation
backend (:class:`cft_rl.generation.HFGenerator`), plus the verifier's share and whether the two
settings wrote the same completions (left padding may flip a near-tie argmax in the last bits).

    python scripts/bench_eval.py [--toy DIR] [--problems N] [--batch-size B] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import time

from cft_rl.cpu import cpu_float_math
from cft_rl.eval.scoring import score_groups
from cft_rl.generation import HFGenerator
from cft_rl.reports import bench_command, markdown_table, write_section
from cft_rl.toy.build import load_toy


def timed(backend: HFGenerator, prompts, max_new_tokens: int):
    start = time.perf_counter()
    groups = backend.generate(prompts, n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    return groups, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", default="/tmp/toy_real", help="a full-size toy build (cft-rl toy build)")
    parser.add_argument("--problems", type=int, default=64, help="test questions evaluated")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per call when batched")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    model, tokenizer, data = load_toy(args.toy)
    test = data["test"].select(range(min(args.problems, len(data["test"]))))
    prompts = test["prompt"]
    with cpu_float_math(args.threads):
        timed(HFGenerator(model, tokenizer, 4), prompts[:4], 16)  # warm-up: first-call allocations
        batched, batched_s = timed(
            HFGenerator(model, tokenizer, args.batch_size), prompts, args.max_new_tokens
        )
        single, single_s = timed(HFGenerator(model, tokenizer, 1), prompts, args.max_new_tokens)
    start = time.perf_counter()
    metrics, _ = score_groups(batched, test["answer"])
    verify_s = time.perf_counter() - start
    same = sum(b[0].text == s[0].text for b, s in zip(batched, single, strict=True)) / len(prompts)
    tokens = sum(g[0].num_tokens for g in batched)
    n = len(prompts)
    rows = [
        [
            f"batched ({args.batch_size} prompts a call)",
            f"{batched_s:.1f} s",
            f"{n / batched_s:.2f}",
            f"{tokens / batched_s:.0f}",
        ],
        ["one sample at a time", f"{single_s:.1f} s", f"{n / single_s:.2f}", f"{tokens / single_s:.0f}"],
    ]
    body = (
        "## Evaluation throughput (toy model, CPU)\n\n"
        f"Greedy decoding of {n} toy test questions (up to {args.max_new_tokens} new tokens, mean "
        f"{tokens / n:.0f}), {args.threads} torch threads, denormals flushed.\n\n"
        + markdown_table(["generation", "wall time", "samples / s", "tokens / s"], rows)
        + f"\n\nBatched is **{single_s / batched_s:.1f}x** faster. Verifying the {n} completions took "
        f"{verify_s:.2f} s ({n / verify_s:.0f} samples / s); greedy accuracy {metrics['accuracy']:.1%}. "
        f"Batched and one-at-a-time completions identical for {same:.0%} of questions."
    )
    print(body)
    if not args.no_write:
        command = bench_command("scripts/bench_eval.py")
        print("wrote", write_section("eval", body, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
