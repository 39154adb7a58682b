"""Write the experiment's measured result into README.md, from the compare stage's ``summary.json``.

    python scripts/readme_result.py --summary outputs/pipeline/toy/compare/summary.json

Rewrites only the block between ``<!-- experiment-result -->`` and ``<!-- experiment-result:end -->``:
the verdict table (final probe values, arm - baseline, with their intervals), the controls' PASS /
FAIL lines, GRPO's rise over its lr-0 control, and the key figure (``scripts/plot_verdict.py``). Every
number comes from the summary, so the README cannot drift from the run it describes; what the numbers
*mean* is written by hand below the block.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cft_rl.reports import markdown_table, replace_block

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- experiment-result -->", "<!-- experiment-result:end -->"
METRICS = ("probe/entropy", "probe/pass@1", "probe/pass@4", "probe/pass@4-pass@1", "probe/distinct_answers")
FIGURE = "![The experiment's verdict: each arm minus full, with 95% intervals](docs/experiment_verdict.png)"


def _cell(effect: dict | None) -> str:
    if effect is None or effect.get("low") is None:
        return "n/a"
    star = " *" if effect.get("significant") else ""
    return f"{effect['diff']:+.3f} [{effect['low']:+.3f}, {effect['high']:+.3f}]{star}"


def verdict_table(summary: dict) -> str:
    """One row per arm, one column per probe metric: the final value's difference from the baseline."""
    final = {(e["arm"], e["metric"]): e for e in summary["effects"] if e["measure"] == "final"}
    arms = sorted({arm for arm, _ in final})
    rows = [[arm, *(_cell(final.get((arm, m))) for m in METRICS)] for arm in arms]
    return markdown_table(["arm", *(f"`{m}`" for m in METRICS)], rows)


def seeds_line(summary: dict) -> str:
    seeds = sorted(
        {e["seeds"] for e in summary["effects"]} | {e["baseline_seeds"] for e in summary["effects"]}
    )
    return "/".join(str(s) for s in seeds)


def block(summary: dict) -> str:
    base, level = summary["baseline"], round(100 * summary["confidence"])
    method = {"t": "Welch t", "bootstrap": "bootstrap"}.get(summary["interval"], summary["interval"])
    parts = [
        "### The measured result\n",
        f"From `make experiment` ({seeds_line(summary)} GRPO seeds per arm; final probe values, arm − "
        f"`{base}`, {level}% {method} interval over seeds, * when it excludes 0; `docs/benchmarks.md`, "
        '"The powered experiment", has every table and the wall time). Written by '
        "`scripts/readme_result.py` from the run's `compare/summary.json`.\n",
        verdict_table(summary),
        "",
        "**Controls**\n",
        *(f"- {c['line']}" for c in summary["controls"].values()),
        *([] if summary["controls"] else ["- none named (`compare.controls`)"]),
        "",
        "**RL learning** (each arm's rise over its lr-0 control)\n",
        *(f"- {line}" for line in summary["learning_lines"].values()),
        "",
        FIGURE,
    ]
    return "\n".join(parts)


def write(readme: Path, body: str) -> None:
    text = replace_block(readme.read_text(), START, END, f"{START}\n{body}\n{END}")
    if text is None:
        raise SystemExit(f"{readme} has no {START} ... {END} block to rewrite; add the two markers first")
    readme.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", type=Path, required=True, help="compare/summary.json of the experiment")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    if not args.summary.is_file():
        raise SystemExit(
            f"{args.summary} not found: run `make experiment` first (it writes compare/summary.json)"
        )
    write(args.readme, block(json.loads(args.summary.read_text())))
    print(f"wrote the experiment result into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
