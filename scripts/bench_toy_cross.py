"""Does a toy build's accuracy come from its model or from its problems? Each model on each world's problems.

Greedy accuracy of every build's model on the first ``--problems`` train problems of every build's world
(each model reading the prompts with its own tokenizer). Equal rows mean the worlds are equally hard and
the seed's effect lies in the model (its initialisation and data order); equal columns, the reverse.

    python scripts/bench_toy_cross.py DIR [DIR ...] [--problems 80] [--max-new-tokens 224]
"""

from __future__ import annotations

import argparse
import sys

from bench_toy_curve import greedy_accuracy

from cft_rl.cpu import cpu_float_math
from cft_rl.toy.build import load_toy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs="+", help="toy build folders")
    parser.add_argument("--problems", type=int, default=80, help="train problems of each world")
    parser.add_argument("--max-new-tokens", type=int, default=224, help="generation budget")
    args = parser.parse_args()
    worlds = {folder: load_toy(folder) for folder in args.builds}
    print("| model \\ problems | " + " | ".join(args.builds) + " |")
    print("|---" * (len(args.builds) + 1) + "|")
    with cpu_float_math(1):
        for folder, (model, tokenizer, _) in worlds.items():
            row = []
            for _, _, data in worlds.values():
                rows = data["train"].select(range(min(args.problems, len(data["train"]))))
                row.append(f"{greedy_accuracy(model, tokenizer, rows, args.max_new_tokens):.1%}")
            print(f"| {folder} | " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
