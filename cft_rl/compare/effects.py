"""Effect sizes across seeds: is one arm's final value, or area under its curve, different from the baseline's?

The experiment's question is a comparison of arms (critical, random-matched, a planted-collapse control...)
against the baseline arm (full SFT), each run with several seeds. One seed of GRPO can land anywhere, so a
difference means something only with its uncertainty: every comparison here is the difference of the two
arms' means over seeds with a 95% confidence interval, by Welch's t (the default: seeds are few, and the
two arms' spreads need not be equal) or by a percentile bootstrap (no normality assumed, but unreliable
with under ~5 seeds per arm), plus Hedges' g, the standardised size that lets a reader compare metrics of
different units.

A difference is called *significant* when its interval excludes 0. That is a statement about this many
seeds: a negative control (two arms with identical settings) must come out not significant, and a
positive control (an arm built to lose diversity) must come out significant, or the instrument cannot be
trusted to see the effect under test.

Two more questions get an answer with their uncertainty. How small a difference could this many seeds
see at all (:func:`minimum_detectable_difference`, at 80% power): without it, "not significant" cannot
be told from "too few seeds". And did each seed move from its own start (:func:`mean_interval` of the
paired per-seed changes), which is how GRPO is compared with its learning-rate-0 control.

Pure functions over numbers: no I/O, no models. The t quantile is computed from the regularised incomplete
beta function of mpmath (a dependency of sympy, which math-verify needs), since scipy is not a dependency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import mpmath
import numpy as np

CONFIDENCE = 0.95
METHODS = ("t", "bootstrap")


def t_cdf(x: float, df: float) -> float:
    """Student's t distribution function, from the regularised incomplete beta function."""
    tail = 0.5 * float(mpmath.betainc(df / 2, 0.5, 0, df / (df + x * x), regularized=True))
    return 1 - tail if x > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` (any positive real) degrees of freedom."""
    if not 0 < p < 1 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0; got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:  # bracket, then bisect: monotone, and exact to float precision
        low, high = high, high * 2
    for _ in range(200):
        mid = (low + high) / 2
        if mid in (low, high):
            break
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    """A difference of means (arm - baseline) with its confidence interval.

    ``low``/``high`` are None when the interval is undefined (a group with fewer than 2 seeds); ``note``
    then says why, as it does for an exact interval (no spread across seeds in either arm).
    """

    diff: float
    low: float | None
    high: float | None
    method: str
    note: str | None = None

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0 (a difference this many seeds can see)."""
        return self.low is not None and (self.low > 0 or self.high < 0)


def _groups(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.ndim != 1 or y.ndim != 1 or not len(x) or not len(y):
        raise ValueError("each arm needs a non-empty list of per-seed values")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("per-seed values must be finite (a run that logged no value has no place here)")
    return x, y


def _welch_df(va: float, vb: float, n_a: int, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom from each arm's squared standard error and seed count."""
    return (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """mean(a) - mean(b) with Welch's t interval (unequal variances, Welch-Satterthwaite df)."""
    x, y = _groups(a, b)
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return Interval(diff, None, None, "t", "fewer than 2 seeds in an arm: no interval")
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(diff, diff, diff, "t", "no spread across seeds in either arm")
    df = _welch_df(va, vb, len(x), len(y))
    half = t_quantile(0.5 + confidence / 2, df) * se
    return Interval(diff, diff - half, diff + half, "t")


def bootstrap_interval(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """mean(a) - mean(b) with a percentile bootstrap interval (each arm resampled on its own)."""
    x, y = _groups(a, b)
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return Interval(diff, None, None, "bootstrap", "fewer than 2 seeds in an arm: no interval")
    rng = np.random.default_rng(seed)
    means_x = x[rng.integers(0, len(x), (resamples, len(x)))].mean(1)
    means_y = y[rng.integers(0, len(y), (resamples, len(y)))].mean(1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means_x - means_y, [tail, 100 - tail])
    note = "no spread across seeds in either arm" if low == high else None
    return Interval(diff, float(low), float(high), "bootstrap", note)


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float | None:
    """(mean(a) - mean(b)) / pooled sd, with the small-sample correction; None without a spread."""
    x, y = _groups(a, b)
    n = len(x) + len(y)
    if len(x) < 2 or len(y) < 2:
        return None
    pooled = ((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / (n - 2)
    if pooled == 0:
        return None
    return float((x.mean() - y.mean()) / math.sqrt(pooled) * (1 - 3 / (4 * n - 9)))


def difference(
    a: Sequence[float], b: Sequence[float], method: str = "t", confidence: float = CONFIDENCE
) -> Interval:
    """The difference of means with the interval of ``method`` ("t" or "bootstrap")."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if method == "t":
        return welch_interval(a, b, confidence)
    return bootstrap_interval(a, b, confidence)


# --- power: the smallest difference this many seeds would see -------------------------------------

ALPHA = 0.05
POWER = 0.8


def minimum_detectable_difference(
    sd_a: float, n_a: int, sd_b: float, n_b: int, alpha: float = ALPHA, power: float = POWER
) -> float | None:
    """The smallest true difference of means a two-sided Welch test at level ``alpha`` detects with
    probability ``power``, given each arm's standard deviation over seeds and its seed count:

        MDE = (t(1 - alpha/2, df) + t(power, df)) * SE,   SE = sqrt(sd_a²/n_a + sd_b²/n_b),

    with the Welch-Satterthwaite df of :func:`welch_interval`. This is the normal-approximation formula
    (z 1.960 + 0.842 = 2.80 SE at alpha 0.05 and power 0.8) with t quantiles in place of z, which widens
    it as it should for few seeds; it approximates the noncentral t by a shifted central t and ignores
    rejections on the wrong side, both negligible at this power. The spreads are the observed ones, so
    the MDE is itself an estimate: a statement of scale, not a guarantee.

    None when it is undefined: an arm with fewer than 2 seeds (no spread), or no spread in either arm
    (df is 0 / 0; the exact interval then calls any non-zero difference significant).
    """
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must lie in (0, 1); got alpha={alpha}, power={power}")
    if n_a < 2 or n_b < 2:
        return None
    va, vb = sd_a**2 / n_a, sd_b**2 / n_b
    if va + vb == 0:
        return None
    df = _welch_df(va, vb, n_a, n_b)
    return (t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) * math.sqrt(va + vb)


def detectable_difference(a: Sequence[float], b: Sequence[float]) -> float | None:
    """:func:`minimum_detectable_difference` from two arms' per-seed values (sample SDs, ddof 1)."""
    x, y = _groups(a, b)
    if len(x) < 2 or len(y) < 2:
        return None
    return minimum_detectable_difference(x.std(ddof=1), len(x), y.std(ddof=1), len(y))


# --- a paired change: each seed against itself ----------------------------------------------------


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """The mean of per-seed values (e.g. each seed's final minus its own start) with its standard
    error, the one-sample t interval (n - 1 df) and ``z`` = mean / SE, the rise in standard errors.

    Keys: mean, se, low, high, n, z, note. se/low/high/z are None with fewer than 2 values; with no
    spread the interval is exact (low = high = mean) and z is None (a division by 0); ``note`` says so.
    """
    x = np.asarray(values, float)
    if x.ndim != 1 or not len(x) or not np.isfinite(x).all():
        raise ValueError("mean_interval needs a non-empty list of finite per-seed values")
    out = {"mean": float(x.mean()), "se": None, "low": None, "high": None, "n": len(x), "z": None}
    if len(x) < 2:
        return out | {"note": "fewer than 2 seeds: no interval"}
    se = float(x.std(ddof=1) / math.sqrt(len(x)))
    if se == 0:
        return out | {"se": 0.0, "low": out["mean"], "high": out["mean"], "note": "no spread across seeds"}
    half = t_quantile(0.5 + confidence / 2, len(x) - 1) * se
    low, high = out["mean"] - half, out["mean"] + half
    return out | {"se": se, "low": low, "high": high, "z": out["mean"] / se, "note": None}


def ema(values: Sequence[float], weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average with its start-up bias removed.

    ``weight`` 0 leaves the curve as it is; 0.9 averages over roughly the last 10 points. Dividing by
    ``1 - weight**(i+1)`` keeps the first points from being pulled towards 0, as TensorBoard does.
    """
    if not 0 <= weight < 1:
        raise ValueError(f"EMA weight must be in [0, 1); got {weight}")
    out, last, seen = np.empty(len(values)), 0.0, 0
    for i, value in enumerate(values):
        if not math.isfinite(float(value)):  # a gap (no seed there) stays a gap, as in TensorBoard
            out[i] = value
            continue
        last, seen = last * weight + (1 - weight) * float(value), seen + 1
        out[i] = last / (1 - weight**seen)
    return out


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}"


def describe(interval: Interval, what: str, digits: int = 3) -> str:
    """``"probe/entropy +0.040 [0.010, 0.070]"``: the difference and its interval, as a verdict reads."""
    if interval.low is None:
        return f"{what} {_signed(interval.diff, digits)} (no interval: {interval.note})"
    star = " *" if interval.significant else ""
    return (
        f"{what} {_signed(interval.diff, digits)} "
        f"[{interval.low:.{digits}f}, {interval.high:.{digits}f}]{star}"
    )


def verdict(arm: str, baseline: str, effects: dict[str, Interval], digits: int = 3) -> str:
    """One plain line per arm: each metric's difference over the baseline, significant ones starred.

    ``effects`` maps a metric's name (``"final probe/entropy"``) to its interval, in the order to print.
    """
    parts = "; ".join(describe(interval, name, digits) for name, interval in effects.items())
    return f"{arm} vs {baseline}: {parts}"
