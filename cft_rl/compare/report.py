"""Rendering of a run comparison (:mod:`cft_rl.compare.analysis`): PNG figures, markdown and one HTML page.

Figures use matplotlib's object API (``Figure``, no pyplot): no global state, no display needed, and
safe to call from tests in any order. The HTML page embeds every image as base64 and has no script and
no external resource, so it opens anywhere, offline, as a single file.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cft_rl.compare.analysis import CompareConfig, Report
from cft_rl.compare.curves import Curve
from cft_rl.compare.summary import (
    controls_markdown,
    fmt,
    learning_markdown,
    summary_data,
    verdict_markdown,
)
from cft_rl.reports import markdown_table

_BAND_NAMES = {"minmax": "min-max over seeds", "ci": "95% CI over seeds", "none": ""}


def label_colors(labels) -> dict[str, str]:
    """One colour per label, fixed for the whole report (tab10 in order of first appearance)."""
    palette = [f"C{i}" for i in range(10)]
    return {label: palette[i % len(palette)] for i, label in enumerate(dict.fromkeys(labels))}


def _draw(ax, metric: str, curves: list[Curve], colors: dict[str, str]) -> None:
    for curve in curves:
        color = colors[curve.label]
        n = len(curve.seeds)
        ax.plot(curve.steps, curve.mean, color=color, lw=1.8, label=f"{curve.label} (n={n})")
        band = np.isfinite(curve.low) & np.isfinite(curve.high)
        if band.any():
            ax.fill_between(curve.steps, curve.low, curve.high, where=band, color=color, alpha=0.2, lw=0)
        if len(curve.steps) == 1:  # a single logged point would be an invisible line
            ax.plot(curve.steps, curve.mean, "o", color=color)
    ax.set_title(metric, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if not curves:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def metric_figure(
    metric: str, curves: list[Curve], band: str, colors: dict[str, str] | None = None
) -> Figure:
    """One metric against steps: each label's mean over seeds, with its band."""
    colors = colors or label_colors(c.label for c in curves)
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    _draw(ax, metric, curves, colors)
    if curves:
        ax.legend(fontsize=8, title=_BAND_NAMES[band] or None, title_fontsize=7)
    return fig


def overview_figure(
    curves: dict[str, list[Curve]], band: str, colors: dict[str, str] | None = None
) -> Figure:
    """Every metric side by side (three to a row), one legend for all."""
    colors = colors or label_colors(c.label for cs in curves.values() for c in cs)
    cols = min(3, max(1, len(curves)))
    rows = math.ceil(max(1, len(curves)) / cols)
    fig = Figure(figsize=(4.3 * cols, 3.1 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (metric, metric_curves) in zip(axes, curves.items(), strict=False):
        _draw(ax, metric, metric_curves, colors)
    for ax in axes[len(curves) :]:
        ax.set_visible(False)
    handles = [axes[0].plot([], [], color=c, lw=1.8)[0] for c in colors.values()]
    title = f"mean over seeds; band: {_BAND_NAMES[band]}" if band != "none" else "mean over seeds"
    fig.legend(handles, list(colors), loc="outside upper center", ncols=min(6, len(colors)), title=title)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# --- markdown --------------------------------------------------------------------------------------


def report_markdown(report: Report, config: CompareConfig) -> str:
    """The report as markdown: the verdict, the per-label table, collapse flags, fits and notes."""
    rows = [
        [metric, label, s["seeds"], fmt(s["final"]), fmt(s["peak"]), fmt(s["auc"])]
        for metric, by_label in report.stats.items()
        for label, s in by_label.items()
    ]
    parts = [
        verdict_markdown(report, config),
        controls_markdown(report),
        learning_markdown(report),
        "## Final, peak and area under the curve (mean over seeds)\n",
        "AUC is the area under the logged curve divided by its step span (the step-weighted mean).\n",
        markdown_table(["metric", "label", "seeds", "final", "peak", "AUC"], rows),
        f"\n## Entropy collapse (`{config.collapse_metric}` below {config.collapse_fraction:g} x its start)\n",
    ]
    flags = [
        [
            c["label"],
            c["run"],
            fmt(c["start"]),
            fmt(c["min"]),
            "no" if c["step"] is None else f"**yes**, step {c['step']:g}",
        ]
        for c in report.collapse
    ]
    parts.append(
        markdown_table(["label", "run", "start", "min", "collapsed"], flags) if flags else "No run logs it."
    )
    if config.fit:
        parts.append(f"\n## Fit R = -a exp(H) + b (`{config.reward_metric}` on `{config.entropy_metric}`)\n")
        fit_rows = [
            [
                label,
                *(fmt(f[k]) for k in ("a", "b", "ceiling")),
                fmt(f["r2"]) if f["degenerate"] is None else f"degenerate: {f['degenerate']}",
                f["points"],
            ]
            for label, f in report.fits.items()
        ]
        parts.append(
            markdown_table(["label", "a", "b", "ceiling b - a (R at H=0)", "R²", "points"], fit_rows)
        )
    if report.notes:
        parts.append("\n## Notes\n\n" + "\n".join(f"- {n}" for n in report.notes))
    return "\n".join(parts) + "\n"


def write_report(report: Report, config: CompareConfig, sections: Sequence[str] = ()) -> Path:
    """Figures, report.md, report.json and the self-contained report.html in ``config.out``.

    ``sections``: extra markdown (## headings, tables, bullets) placed before the curve statistics,
    e.g. the pipeline's accuracy table."""
    out = Path(config.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    figures = {
        "overview": save_figure(overview_figure(report.curves, config.band), out / "figures" / "overview.png")
    }
    for metric, curves in report.curves.items():
        name = re.sub(r"[^A-Za-z0-9]+", "_", metric).strip("_")
        figures[metric] = save_figure(
            metric_figure(metric, curves, config.band), out / "figures" / f"{name}.png"
        )
    markdown = "\n".join([*sections, report_markdown(report, config)])
    (out / "report.md").write_text("# Run comparison\n\n" + markdown)
    data = {"runs": [{"path": str(r.path), "label": r.label, "source": str(r.source)} for r in report.runs]}
    data |= {"stats": report.stats, "collapse": report.collapse, "fits": report.fits, "notes": report.notes}
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "summary.json").write_text(json.dumps(summary_data(report, config), indent=2) + "\n")
    (out / "report.html").write_text(html_report(report, figures, markdown))
    return out


# --- HTML ------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
.grid figure { margin: 0; width: 600px; max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def _inline(text: str) -> str:
    """Escaped text with our markdown's only inline marks: **bold** and `code`."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown_to_html(markdown: str) -> str:
    """The subset :func:`report_markdown` writes: ## headings, pipe tables, - bullets, paragraphs."""
    out, table, bullets = [], [], []

    def flush():
        if table:
            head, body = table[0], table[2:]  # row 1 is the |---| rule
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body)
            out.append("</table>")
        if bullets:
            out.append("<ul>" + "".join(f"<li>{_inline(b)}</li>" for b in bullets) + "</ul>")
        table.clear()
        bullets.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if line.startswith("- "):
            bullets.append(line[2:])
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def html_report(report: Report, figures: dict[str, Path], markdown: str) -> str:
    """A self-contained page: the markdown's tables (the verdict first), the curves, then the runs."""
    runs = "".join(
        f"<tr><td>{html.escape(r.label)}</td><td>{html.escape(str(r.path))}</td>"
        f"<td>{html.escape(str(r.source))}</td><td>{max((e.get('step', 0) for e in r.history), default=0)}</td></tr>"
        for r in report.runs
    )
    per_metric = "".join(
        f"<figure>{_image(path, name)}<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, path in figures.items()
        if name != "overview"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Run comparison</title><style>{_STYLE}</style></head>
<body>
<h1>Run comparison</h1>
{markdown_to_html(markdown)}
<h2>Curves</h2>
{_image(figures["overview"], "all metrics")}
<div class="grid">{per_metric}</div>
<h2>Runs</h2>
<table><tr><th>label</th><th>run</th><th>trainer_state.json</th><th>last step</th></tr>{runs}</table>
</body></html>
"""
