"""A label's curves across seeds, and what is read off them: the mean and band, final/peak/AUC, entropy
collapse, the entropy-reward fit, and each label's effects against the baseline label.

Pure maths on arrays (no files): :mod:`cft_rl.compare.analysis` loads the runs and builds the report from
these; :mod:`cft_rl.compare.effects` holds the interval arithmetic.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cft_rl.compare.effects import (
    CONFIDENCE,
    Interval,
    detectable_difference,
    difference,
    ema,
    hedges_g,
    mean_interval,
)

# Two-sided 95% Student t quantiles by degrees of freedom (no scipy); 1.96 beyond the table.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145)


def natural_key(name: str) -> list:
    """Metric names in natural order: pass@2 before pass@16, digits compared as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# --- curves and their statistics -------------------------------------------------------------------


@dataclass
class Curve:
    """One label's aggregate of one metric: mean and band on a step grid, and the seeds' own series."""

    label: str
    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    seeds: list[tuple[np.ndarray, np.ndarray]]


def aggregate(label: str, seeds: list[tuple[np.ndarray, np.ndarray]], band: str = "minmax") -> Curve:
    """Mean over seeds on the union of their steps, with a ``band``: "minmax", "ci" (95%, t) or "none".

    Each seed is linearly interpolated onto the grid within its own step range and absent outside it,
    so seeds logging every 5 and every 10 steps align, and a seed that stopped early drops out of the
    mean after its last step instead of being extrapolated.
    """
    if band not in ("minmax", "ci", "none"):
        raise ValueError(f"band must be minmax, ci or none; got {band!r}")
    seeds = [(s, v) for s, v in seeds if len(s)]
    grid = np.unique(np.concatenate([s for s, _ in seeds])) if seeds else np.array([])
    table = np.full((len(seeds), len(grid)), np.nan)
    for i, (s, v) in enumerate(seeds):
        inside = (grid >= s[0]) & (grid <= s[-1])
        table[i, inside] = np.interp(grid[inside], s, v)
    count = (~np.isnan(table)).sum(0)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(table, 0) if seeds else grid
        if band == "minmax":
            low, high = np.nanmin(table, 0), np.nanmax(table, 0)
        elif band == "ci":
            t = np.array([_T95[c - 2] if 2 <= c <= len(_T95) + 1 else 1.96 for c in count])
            half = t * np.nanstd(table, 0, ddof=1) / np.sqrt(np.maximum(count, 1))
            low, high = np.where(count > 1, mean - half, np.nan), np.where(count > 1, mean + half, np.nan)
        else:
            low = high = np.full(len(grid), np.nan)
    return Curve(label, grid, mean, low, high, seeds)


def curve_stats(steps: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """final (last logged value), peak (max) and AUC: the trapezoid area over the logged steps divided
    by their span, i.e. the step-weighted mean (comparable between runs of different lengths)."""
    span = steps[-1] - steps[0]
    area = float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(steps)))
    return {
        "final": float(values[-1]),
        "peak": float(values.max()),
        "auc": area / span if span else float(values[0]),
    }


def label_stats(curve: Curve) -> dict[str, float]:
    """:func:`curve_stats` of each seed, averaged over the label's seeds."""
    per_seed = [curve_stats(s, v) for s, v in curve.seeds]
    return {k: float(np.mean([p[k] for p in per_seed])) for k in ("final", "peak", "auc")} | {
        "seeds": len(per_seed)
    }


def entropy_collapse(steps: np.ndarray, values: np.ndarray, fraction: float) -> float | None:
    """The first step where ``values`` falls below ``fraction`` of its first value; None if never."""
    if not len(values) or values[0] <= 0:
        return None
    below = np.nonzero(values < fraction * values[0])[0]
    return float(steps[below[0]]) if len(below) else None


def fit_entropy_reward(entropy: Sequence[float], reward: Sequence[float]) -> dict:
    """Least-squares fit of R = -a exp(H) + b (linear in exp(H) and 1).

    Returns a, b, the implied ceiling b - a (R at H = 0: no entropy left to trade), R², the count of
    points and ``degenerate``: None, or why there is no fit (too few points, entropy or reward
    constant: R² would be 0 / 0), with a, b, ceiling and R² None.
    """
    h, r = np.asarray(entropy, float), np.asarray(reward, float)
    fit = {"a": None, "b": None, "ceiling": None, "r2": None, "points": len(h), "degenerate": None}
    if len(h) < 3:
        return fit | {"degenerate": f"too few points ({len(h)}, need 3)"}
    if np.ptp(np.exp(h)) == 0:
        return fit | {"degenerate": "entropy constant"}
    if np.ptp(r) == 0:
        return fit | {"degenerate": "reward constant"}
    x = np.stack([np.exp(h), np.ones_like(h)], axis=1)
    (slope, b), *_ = np.linalg.lstsq(x, r, rcond=None)
    residual = float(np.sum((r - x @ np.array([slope, b])) ** 2))
    total = float(np.sum((r - r.mean()) ** 2))
    return fit | {"a": float(-slope), "b": float(b), "ceiling": float(b + slope), "r2": 1 - residual / total}


# --- effects against the baseline ----------------------------------------------------------------


def arm_effects(
    curves: dict[str, list[Curve]], baseline: str, method: str = "t", confidence: float = CONFIDENCE
) -> list[dict]:
    """Every other label against ``baseline``, per metric and measure (final value, AUC): the
    difference of the means over seeds with its ``confidence`` interval (:mod:`cft_rl.compare.effects`)
    and Hedges' g.

    Each seed's own final value and AUC (:func:`curve_stats`) is one observation, so the interval is
    across seeds; a label missing the metric is left out of that metric's rows.
    """
    rows = []
    for metric, by_label in curves.items():
        per_label = {c.label: [curve_stats(s, v) for s, v in c.seeds] for c in by_label}
        if baseline not in per_label:
            continue
        for arm, seeds in per_label.items():
            if arm == baseline:
                continue
            for measure in ("final", "auc"):
                a = [s[measure] for s in seeds]
                b = [s[measure] for s in per_label[baseline]]
                interval = difference(a, b, method, confidence)
                rows.append(
                    {
                        "arm": arm,
                        "metric": metric,
                        "measure": measure,
                        "diff": interval.diff,
                        "low": interval.low,
                        "high": interval.high,
                        "hedges_g": hedges_g(a, b),
                        "mde": detectable_difference(a, b),
                        "significant": interval.significant,
                        "note": interval.note,
                        "seeds": len(a),
                        "baseline_seeds": len(b),
                        "method": interval.method,
                    }
                )
    return rows


# --- GRPO against its learning-rate-0 control ----------------------------------------------------

# Probe keys that are no measure of the policy.
NOT_LEARNING = ("probe/seconds",)


def rl_learning(curves: dict[str, list[Curve]], notes: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """label -> probe metric -> the paired rise of GRPO over its lr-0 control (:func:`mean_interval`
    of each seed's final value minus its own first, plus ``from_steps``: the first probe steps).

    At learning rate 0 the policy never changes, and the probe samples each of its batches under a
    seed of its own (not one per step), so every probe of an lr-0 run equals the step-0 probe of the
    same warm start: the step-0 probe *is* the lr-0 control, paired seed by seed, with no second run.
    The probe logs at step 0 (before training); a seed whose first probe is later is measured from
    that step, and ``notes`` says so. A seed with a single probe point has no rise and is left out.
    """
    out: dict[str, dict[str, dict]] = {}
    for metric, by_label in curves.items():
        if not metric.startswith("probe/") or metric in NOT_LEARNING:
            continue
        for curve in by_label:
            seeds = [(s, v) for s, v in curve.seeds if len(s) > 1]
            if not seeds:
                continue
            starts = sorted({float(s[0]) for s, _ in seeds})
            late = sum(s[0] != 0 for s, _ in seeds)
            if late and notes is not None:
                notes.append(
                    f"{curve.label}: `{metric}` has no step-0 probe in {late} of {len(seeds)} seeds: the "
                    f"rise over the lr-0 control is measured from step {', '.join(f'{x:g}' for x in starts)}"
                )
            rise = mean_interval([v[-1] - v[0] for _, v in seeds])
            out.setdefault(curve.label, {})[metric] = rise | {"from_steps": starts}
    return out


def row_interval(row: dict) -> Interval:
    """The :class:`~cft_rl.compare.effects.Interval` of an :func:`arm_effects` row."""
    return Interval(row["diff"], row["low"], row["high"], row["method"], row["note"])


def smoothed(curve: Curve, weight: float) -> Curve:
    """The curve as plotted with TensorBoard's smoothing; its seeds (the statistics' input) stay raw."""
    return dataclasses.replace(
        curve, mean=ema(curve.mean, weight), low=ema(curve.low, weight), high=ema(curve.high, weight)
    )
