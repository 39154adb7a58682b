"""The experiment's key figure: each arm's difference from the baseline, with its 95% interval.

    python scripts/plot_verdict.py --summary outputs/pipeline/toy/compare/summary.json --out docs/experiment_verdict.png

One panel per probe metric (final value, arm - baseline, over GRPO seeds), one row per arm: a forest
plot, read straight from the compare stage's ``summary.json``, so the figure shows what the verdict says.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METRICS = ("probe/entropy", "probe/pass@1", "probe/distinct_answers", "probe/pass@4-pass@1")


def effects_by_metric(summary: dict, measure: str) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {m: [] for m in METRICS}
    for e in summary["effects"]:
        if e["measure"] == measure and e["metric"] in rows and e.get("low") is not None:
            rows[e["metric"]].append(e)
    return {m: r for m, r in rows.items() if r}


def plot(summary: dict, measure: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    panels = effects_by_metric(summary, measure)
    if not panels:
        raise SystemExit(f"no {measure} effects with intervals for {METRICS} in the summary")
    fig = Figure(figsize=(3.2 * len(panels), 0.6 * max(len(r) for r in panels.values()) + 1.4))
    for i, (metric, rows) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for y, e in enumerate(rows):
            color = "tab:red" if e["significant"] else "tab:gray"
            ax.plot([e["low"], e["high"]], [y, y], color=color, lw=2)
            ax.plot([e["diff"]], [y], "o", color=color)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(rows)), [e["arm"] for e in rows] if i == 0 else [""] * len(rows))
        ax.set_title(metric, fontsize=9)
        ax.invert_yaxis()
    fig.suptitle(
        f"{measure} value, arm - {summary['baseline']} (95% interval over GRPO seeds; red: excludes 0)",
        fontsize=9,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", default="outputs/pipeline/toy/compare/summary.json")
    parser.add_argument("--out", default="docs/experiment_verdict.png")
    parser.add_argument("--measure", default="final", choices=["final", "auc"])
    args = parser.parse_args(argv)
    print("wrote", plot(json.loads(Path(args.summary).read_text()), args.measure, Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
