"""Build the toy world from scratch and measure its base model.

Writes the `toy` section of docs/benchmarks.md: build time on this machine, greedy accuracy on the
held-out test split, pass@8 and distinct solutions per prompt at T=1, and mean token entropy.

    python scripts/bench_toy.py [--out DIR] [--problems N] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time

from cft_rl.reports import markdown_table, write_section
from cft_rl.toy.build import ToyBuildConfig, build_toy, load_toy


def parse_overrides(pairs: list[str]) -> dict:
    fields = {f.name: f.type for f in dataclasses.fields(ToyBuildConfig)}
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown ToyBuildConfig field {key!r}; valid: {sorted(fields)}")
        out[key] = json.loads(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="build folder (default: a fresh temporary one)")
    parser.add_argument("--problems", type=int, default=200, help="test problems to evaluate")
    parser.add_argument("--samples", type=int, default=8, help="samples per problem at T=1")
    parser.add_argument("--set", nargs="*", default=[], help="ToyBuildConfig overrides, key=json")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    from cft_rl.eval.scoring import summarize
    from cft_rl.generation import generate

    config = ToyBuildConfig(**parse_overrides(args.set))
    out = args.out or tempfile.mkdtemp(prefix="toy-bench-")
    start = time.perf_counter()
    build_toy(out, config)
    build_s = time.perf_counter() - start
    model, tokenizer, data = load_toy(out)
    test = data["test"].select(range(min(args.problems, len(data["test"]))))
    greedy = summarize(
        generate(model, tokenizer, test["prompt"], n=1, temperature=0.0, max_new_tokens=200), test["answer"]
    )
    sampled = generate(
        model, tokenizer, test["prompt"], n=args.samples, temperature=1.0, max_new_tokens=200, batch_size=8
    )
    t1 = summarize(sampled, test["answer"], ks=(1, args.samples))
    params = sum(p.numel() for p in model.parameters())
    rows = [
        ["build time (from scratch)", f"{build_s:.0f} s"],
        ["parameters", f"{params / 1e6:.2f} M"],
        ["greedy accuracy (test)", f"{greedy['accuracy']:.1%}"],
        [f"pass@1 / pass@{args.samples} at T=1", f"{t1['pass@1']:.1%} / {t1[f'pass@{args.samples}']:.1%}"],
        [f"distinct solutions per prompt (of {args.samples}) at T=1", f"{t1['distinct_completions']:.2f}"],
        ["mean token entropy at T=1", f"{t1['entropy']:.3f} nats"],
        [
            "mean completion length (greedy / T=1)",
            f"{greedy['mean_length']:.0f} / {t1['mean_length']:.0f} tokens",
        ],
    ]
    body = f"## Toy world base model\n\n{len(test)} held-out test problems.\n\n" + markdown_table(
        ["measure", "value"], rows
    )
    print(body)
    if not args.no_write:
        command = "python " + " ".join(["scripts/bench_toy.py", *sys.argv[1:]])
        print("wrote", write_section("toy", body, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
