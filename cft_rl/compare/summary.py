"""The report's answers, first in report.md / report.html and in summary.json: a verdict line per arm
against the baseline, the smallest difference its seeds could detect, the controls' PASS / FAIL, and
GRPO's rise over its learning-rate-0 control.

Text from the numbers of :class:`cft_rl.compare.analysis.Report` (no files, no figures: those are
:mod:`cft_rl.compare.report`'s).
"""

from __future__ import annotations

import fnmatch

from cft_rl.compare.analysis import CompareConfig, Report
from cft_rl.compare.controls import CONTROL_METRICS, control_confidence
from cft_rl.compare.curves import row_interval
from cft_rl.compare.effects import ALPHA, CONFIDENCE, POWER, Interval, describe, verdict
from cft_rl.reports import markdown_table


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


# The metrics of the verdict lines, when logged: the probe's diversity and accuracy (fixed prompts, so
# comparable across arms), then training reward. Every metric is in the effects table regardless.
HEADLINE = ("probe/entropy", "probe/pass@1", "probe/pass@*", "probe/distinct_answers", "reward")


def _headline(report: Report) -> dict[str, list[dict]]:
    """arm -> its final-value effect rows of the headline metrics (all its rows when none is logged)."""
    picked = {}
    for arm in dict.fromkeys(row["arm"] for row in report.effects):
        rows = [r for r in report.effects if r["arm"] == arm and r["measure"] == "final"]
        found = [r for p in HEADLINE for r in rows if fnmatch.fnmatch(r["metric"], p)]
        picked[arm] = list({r["metric"]: r for r in found or rows}.values())
    return picked


def verdicts(report: Report) -> dict[str, str]:
    """One line per arm: the final value of each headline metric against the baseline, with its interval."""
    return {
        arm: verdict(arm, report.baseline, {r["metric"]: row_interval(r) for r in rows})
        for arm, rows in _headline(report).items()
    }


def _unit(metric: str) -> str:
    return " nats" if "entropy" in metric and "frac" not in metric else ""


def power_lines(report: Report) -> dict[str, str]:
    """One sentence per arm: the smallest difference of each headline metric's final value that its seeds
    and the baseline's would detect at 80% power (:func:`cft_rl.compare.effects.detectable_difference`)."""
    lines = {}
    for arm, rows in _headline(report).items():
        counts = {(r["seeds"], r["baseline_seeds"]) for r in rows}
        (n, m), mixed = min(counts), len(counts) > 1  # a run missing a metric leaves it fewer seeds
        seeds = f"{n} seeds per arm" if n == m else f"{n} seeds of {arm} and {m} of {report.baseline}"
        seeds = f"as few as {seeds}" if mixed else seeds
        known = [f"{r['mde']:.3g}{_unit(r['metric'])} in {r['metric']}" for r in rows if r["mde"] is not None]
        unknown = [f"{r['metric']} ({r['note'] or 'undefined'})" for r in rows if r["mde"] is None]
        line = f"{arm} vs {report.baseline}: with {seeds}, "
        if known:
            line += f"this run could detect a difference of {', '.join(known)} at 80% power (two-sided 5%)"
        line += ("; " if known else "") + (f"no power statement for {', '.join(unknown)}" if unknown else "")
        lines[arm] = line
    return lines


def controls_markdown(report: Report) -> str:
    """The controls, PASS or FAIL with their evidence; a line saying there are none; "" without a verdict."""
    if not report.effects and not report.controls:
        return ""
    head = "## Controls: does the instrument see what it must, and only that?\n"
    if not report.controls:
        return head + "\nNo controls named (`controls`: arm -> differs / same): the verdicts are unchecked.\n"
    m = len(CONTROL_METRICS)
    same = 100 * control_confidence("same", m)
    uncorrected = 1 - CONFIDENCE**m  # an identical arm's FAIL rate with m independent metrics at 95% each
    explain = (
        f"A `differs` control must separate from `{report.baseline}` (95% interval of the final value "
        f"excluding 0) on every one of {', '.join(CONTROL_METRICS)}; a `same` control on none, each "
        f"judged at a {same:.3g}% interval (Bonferroni: an identical arm then FAILs at most "
        f"{1 - CONFIDENCE:.0%} of runs, not the {uncorrected:.0%} of {m} independent 95% tests). A FAIL "
        "means the other arms' verdicts cannot be trusted at this number of seeds."
    )
    return "\n".join([head, *(f"- {c['line']}" for c in report.controls), "", explain, ""])


def _rise(r: dict, digits: int = 3) -> str:
    if r["se"] is None:
        return f"{r['mean']:+.{digits}f} ({r['note']})"
    if r["z"] is None:
        return f"{r['mean']:+.{digits}f} (SE 0: {r['note']})"
    return f"{r['mean']:+.{digits}f} (SE {r['se']:.{digits}f}, {r['z']:.1f} SE)"


def learning_lines(report: Report) -> dict[str, str]:
    """One line per arm: probe/pass@1's paired rise over the lr-0 control (else its first probe metric)."""
    lines = {}
    for arm, by_metric in report.learning.items():
        metric = "probe/pass@1" if "probe/pass@1" in by_metric else next(iter(by_metric))
        r = by_metric[metric]
        verb = "rose" if r["mean"] >= 0 else "fell"
        lines[arm] = f"GRPO from {arm}: {metric} {verb} {_rise(r)} over the lr-0 control"
    return lines


def learning_markdown(report: Report) -> str:
    """The "RL learning" section: each arm's probe metrics, final minus step 0, paired by seed."""
    if not report.learning:
        return ""
    rows = [
        [arm, metric, describe(Interval(r["mean"], r["low"], r["high"], "t", r["note"]), "").strip()]
        + [fmt(r["se"]), fmt(r["z"]), r["n"], ", ".join(f"{x:g}" for x in r["from_steps"])]
        for arm, by_metric in report.learning.items()
        for metric, r in by_metric.items()
    ]
    explain = (
        "At learning rate 0 the policy never changes and the probe draws the same samples at every probe "
        "step (each probe batch has its own seed), so an lr-0 run's probe is the step-0 probe of its warm "
        "start. The rise is each seed's final probe value minus its own step-0 value: mean over seeds, "
        "its standard error, a 95% t interval (n - 1 df; * when it excludes 0) and rise / SE."
    )
    table = markdown_table(["arm", "metric", "rise [95% CI]", "SE", "rise / SE", "seeds", "from step"], rows)
    return "\n".join(
        ["## RL learning: GRPO over its lr-0 control\n", *(f"- {x}" for x in learning_lines(report).values())]
        + ["", explain, "", table, ""]
    )


def verdict_markdown(report: Report, config: CompareConfig) -> str:
    """The headline: a verdict line per arm, then every effect with its interval, or "" without a baseline."""
    if not report.effects:
        return ""
    seeds = sorted({r["seeds"] for r in report.effects} | {r["baseline_seeds"] for r in report.effects})
    rows = [
        [
            r["arm"],
            r["metric"],
            r["measure"],
            describe(row_interval(r), "").strip(),
            fmt(r["hedges_g"]),
            fmt(r["mde"]),
            f"{r['seeds']} / {r['baseline_seeds']}",
        ]
        for r in report.effects
    ]
    return "\n".join(
        [
            f"## Verdict: each arm against `{report.baseline}`\n",
            *(f"- {line}" for line in verdicts(report).values()),
            "",
            "The smallest difference each comparison could see (final values, 80% power):\n",
            *(f"- {line}" for line in power_lines(report).values()),
            "",
            f"Differences of the means over seeds (arm - {report.baseline}) with 95% intervals "
            f"({'Welch t' if config.interval == 't' else 'percentile bootstrap'}); * marks an interval "
            f"that excludes 0. Seeds per arm: {', '.join(map(str, seeds))}. A difference smaller than half "
            "an interval's width cannot be told from seed noise with this many seeds; MDE is the smallest "
            "true difference this many seeds would detect at 80% power (two-sided 5%, Welch t).\n",
            markdown_table(
                ["arm", "metric", "measure", "difference [95% CI]", "Hedges' g", "MDE (80% power)", "seeds"],
                rows,
            ),
            "",
        ]
    )


def summary_data(report: Report, config: CompareConfig) -> dict:
    """summary.json: the answers as data (baseline, verdicts, effects, power, controls, learning)."""
    summary = {"baseline": report.baseline, "interval": config.interval, "confidence": 0.95}
    summary |= {"verdicts": verdicts(report), "effects": report.effects}
    mde: dict[str, dict] = {}
    for r in (r for r in report.effects if r["measure"] == "final"):
        mde.setdefault(r["arm"], {})[r["metric"]] = r["mde"]
    summary["power"] = {"alpha": ALPHA, "power": POWER, "mde": mde, "sentences": power_lines(report)}
    summary["controls"] = {c["arm"]: c for c in report.controls}
    return summary | {"learning": report.learning, "learning_lines": learning_lines(report)}
