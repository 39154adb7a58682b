"""Controls with expectations: arms whose answer is known in advance, checked before any other is read.

A comparison of arms is only as good as its instrument. A *positive* control ("differs": an arm built to
lose diversity, e.g. a planted entropy collapse) must separate from the baseline on every diversity
metric of :data:`CONTROL_METRICS`; a *negative* control ("same": the baseline's settings under other
seeds) must separate on none. If either fails, the run cannot tell an effect of that size from seed
noise, or sees effects that are not there, and the verdicts of the other arms mean little.

"Separates" is the final value's interval against the baseline excluding 0
(:func:`cft_rl.compare.curves.arm_effects`), at the confidence :func:`control_confidence` gives, so that
each control is itself a test at 5%: a negative control FAILs when *any* of its metrics separates, so
each metric is judged at a Bonferroni-corrected confidence; a positive control PASSes only when *every*
metric separates, which needs no correction. A metric missing from either arm, or without an interval
(under 2 seeds), fails the control either way: an instrument that did not measure has not been shown
to work. Pure functions over the effect rows; :mod:`cft_rl.compare.analysis` computes them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

from cft_rl.compare.curves import natural_key, row_interval
from cft_rl.compare.effects import CONFIDENCE, describe

EXPECTATIONS = {"differs": "positive control: must differ from", "same": "negative control: must match"}

# The diversity metrics a control is judged on, as fnmatch patterns over the runs' metrics: the probe's
# token entropy, its distinct final answers per prompt, and the exploration gap pass@k - pass@1 (derived
# by compare, with k the largest probe pass@k logged).
CONTROL_METRICS = ("probe/entropy", "probe/distinct_answers", "probe/pass@*-pass@1")


def control_confidence(expect: str, metrics: int) -> float:
    """The confidence of each metric's interval when a control of ``expect`` is judged on ``metrics``
    metrics, such that the control as a whole errs at most 1 - :data:`~cft_rl.compare.effects.CONFIDENCE`
    (5%) of the time.

    - "same" FAILs when any metric separates. At 95% each, an arm identical to the baseline would FAIL
      in 1 - 0.95^m of runs for m independent metrics (14% for 3), and in at most m x 5% whatever
      their dependence. Bonferroni gives 1 - 0.05/m each (98.3% for 3), which bounds it by 5%; for
      "does any metric separate", Holm's step-down procedure decides the same, as its first step is
      Bonferroni's.
    - "differs" PASSes only when every metric separates: an intersection-union test, whose chance of a
      false PASS is at most each single test's level, so each stays at 95%.
    """
    if expect == "same":
        return 1 - (1 - CONFIDENCE) / max(metrics, 1)
    return CONFIDENCE


def check_controls(controls: Mapping) -> dict[str, str]:
    """``controls`` as arm label -> expectation, or a ValueError naming the arm and the valid values."""
    if not isinstance(controls, Mapping):
        raise ValueError(
            f"controls must map arm labels to {' or '.join(EXPECTATIONS)}, e.g. "
            f"'{{collapse: differs, replica: same}}'; got {controls!r}"
        )
    for arm, expect in controls.items():
        if expect not in EXPECTATIONS:
            raise ValueError(
                f"controls: arm {arm!r} expects {expect!r}; valid expectations are {', '.join(EXPECTATIONS)} "
                "(differs: a positive control, must separate from the baseline; same: a negative one)"
            )
    return {str(arm): str(expect) for arm, expect in controls.items()}


def control_metrics(available: Iterable[str]) -> dict[str, str | None]:
    """Each pattern of :data:`CONTROL_METRICS` -> the metric it names among ``available`` (the last
    in natural order when several match, i.e. the largest k), or None when the runs log none."""
    available = list(available)
    return {p: max(fnmatch.filter(available, p), key=natural_key, default=None) for p in CONTROL_METRICS}


def judge_control(
    arm: str,
    expect: str,
    baseline: str,
    rows: Mapping[str, dict | None],
    confidence: float = CONFIDENCE,
) -> dict:
    """PASS or FAIL of one control, with the evidence: each control metric's final-value effect row
    (``rows``: metric -> row of :func:`cft_rl.compare.curves.arm_effects`, None where not logged), its
    interval at ``confidence`` (:func:`control_confidence`).

    Returns arm, expect, baseline, confidence, status, the metrics' differences and intervals, and
    ``line``, the sentence the report prints.
    """
    missing = [m for m, r in rows.items() if r is None]
    undefined = [m for m, r in rows.items() if r is not None and r["low"] is None]
    separated = [m for m, r in rows.items() if r is not None and r["significant"]]
    held = [m for m, r in rows.items() if r is not None and r["low"] is not None and not r["significant"]]
    why = [f"not logged: {', '.join(missing)}"] if missing else []
    why += [f"no interval: {', '.join(undefined)}"] if undefined else []
    if expect == "differs":
        why += [f"does not separate on {', '.join(held)}"] if held else []
    else:
        why += [f"separates on {', '.join(separated)}"] if separated else []
    status = "FAIL" if why else "PASS"
    evidence = "; ".join(
        describe(row_interval(r), m) if r is not None else f"{m} not logged" for m, r in rows.items()
    )
    level = f"{100 * confidence:.3g}% intervals"
    if expect == "same":
        level += f": a family-wise {1 - CONFIDENCE:.0%} over {len(rows)} metrics"
    line = f"**{status}** {arm} ({EXPECTATIONS[expect]} {baseline}; {level}): {evidence}"
    keep = ("diff", "low", "high", "significant", "note")
    return {
        "arm": arm,
        "expect": expect,
        "baseline": baseline,
        "confidence": confidence,
        "status": status,
        "why": why,
        "metrics": {m: (None if r is None else {k: r[k] for k in keep}) for m, r in rows.items()},
        "line": line + (f" ({'; '.join(why)})" if why else ""),
    }
