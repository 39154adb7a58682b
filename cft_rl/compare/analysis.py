"""``cft-rl compare RUN_DIR...``: training curves of several runs, grouped by label, side by side.

Input is any TRL run's ``trainer_state.json`` ``log_history`` (ours or plain TRL), found in the run
folder or its latest ``checkpoint-*/``. Runs share a label (e.g. ``init=sft``, ``init=cft``) and each
label may have several seeds. For every chosen metric the report shows each label's mean over seeds
with a min-max (or 95% CI) band, and a table of final, peak and area-under-curve values per label.
It flags entropy collapse, and can fit R = -a exp(H) + b (arXiv 2505.22617) to each label to show the
reward ceiling the entropy implies (R at H = 0: b - a). Against a baseline label it measures each
arm's effects (:func:`cft_rl.compare.curves.arm_effects`), judges the controls
(:mod:`cft_rl.compare.controls`) and, for every label, GRPO's rise over its lr-0 control
(:func:`cft_rl.compare.curves.rl_learning`); the exploration gap ``probe/pass@k-pass@1`` is derived here.

Imperfect runs are the norm: a run missing a metric is plotted where it has data and the report says
so; runs logging at different steps are aligned on the step axis (interpolated onto the union of the
label's steps, never extrapolated beyond a run's own first and last step). Plotting and HTML are in
:mod:`cft_rl.compare.report`, their text in :mod:`cft_rl.compare.summary`, the command in
:mod:`cft_rl.compare.run`; this module is data only.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cft_rl.compare.config import CompareConfig
from cft_rl.compare.controls import CONTROL_METRICS, control_confidence, control_metrics, judge_control
from cft_rl.compare.curves import (
    Curve,
    aggregate,
    arm_effects,
    entropy_collapse,
    fit_entropy_reward,
    label_stats,
    natural_key,
    rl_learning,
    smoothed,
)

# Metrics compared when none are named (patterns; those matching no run are left out quietly).
DEFAULT_METRICS = (
    "entropy",
    "reward",
    "explore/pass@*",
    "probe/pass@*",
    "probe/maj@*",
    "probe/entropy",
    "probe/distinct_answers",
    "entropy/numeric",
    "entropy/word",
    "entropy/format",
)


@dataclass
class Run:
    """One training run: its folder, its label, the trainer_state.json read and its log history."""

    path: Path
    label: str
    source: Path
    history: list[dict] = field(repr=False)

    def series(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of ``metric``, sorted by step; the last entry of a step wins, NaNs dropped.

        The exploration gap ``probe/pass@k-pass@1``, unless logged as such, is derived: pass@k minus
        pass@1 at the steps that log both."""
        gap = _GAP.fullmatch(metric)
        if gap and metric not in self.metrics(derived=False):
            steps_k, k = self.series(f"probe/pass@{gap.group(1)}")
            steps_1, one = self.series("probe/pass@1")
            common, ik, i1 = np.intersect1d(steps_k, steps_1, return_indices=True)
            return common, k[ik] - one[i1]
        by_step: dict[int, float] = {}
        for entry in self.history:
            value, step = entry.get(metric), entry.get("step")
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and math.isfinite(value) and isinstance(step, int | float):
                by_step[int(step)] = float(value)
        steps = np.array(sorted(by_step), dtype=float)
        return steps, np.array([by_step[int(s)] for s in steps], dtype=float)

    def metrics(self, derived: bool = True) -> set[str]:
        """The metrics the run logs, and (``derived``) the exploration gap it allows."""
        logged = {k for e in self.history for k, v in e.items() if isinstance(v, int | float) and k != "step"}
        gap = exploration_gap(logged) if derived else None
        return logged | {gap} if gap else logged


_PASS_AT = re.compile(r"probe/pass@(\d+)")
_GAP = re.compile(r"probe/pass@(\d+)-pass@1")


def exploration_gap(metrics: set[str]) -> str | None:
    """``probe/pass@k-pass@1``, with k the largest probe pass@k in ``metrics`` (k > 1), or None.

    The gap between what the policy finds in k samples and in one is what GRPO's sharpening trades
    away: an arm that keeps exploring keeps it open. Compare derives it, so every run that logs the
    probe's pass@1 and pass@k has it, whatever version of the trainer wrote the log.
    """
    ks = [int(m.group(1)) for name in metrics if (m := _PASS_AT.fullmatch(name))]
    k = max(ks, default=1)
    return f"probe/pass@{k}-pass@1" if k > 1 and "probe/pass@1" in metrics else None


# --- loading ---------------------------------------------------------------------------------------


def find_trainer_state(run_dir: str | Path) -> Path:
    """The most advanced trainer_state.json of a run: its own, or its latest checkpoint's.

    TRL writes one into every ``checkpoint-N/`` and (``trainer.save_state()``) into the run folder; a
    run that was cut off has only checkpoints. The one with the highest ``global_step`` wins.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run dir {run_dir} does not exist: pass the output_dir of a TRL run")
    candidates = [run_dir / "trainer_state.json", *run_dir.glob("checkpoint-*/trainer_state.json")]
    found = [p for p in candidates if p.is_file()]
    if not found:
        raise FileNotFoundError(
            f"{run_dir} holds no trainer_state.json (looked in it and in its checkpoint-*/ folders). "
            "Pass a TRL run's output_dir; TRL writes the file at each checkpoint and with trainer.save_state()."
        )
    return max(found, key=lambda p: (_read_state(p).get("global_step") or 0, p.parent == run_dir))


def _read_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc}); is the run still writing it?") from exc
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise ValueError(f"{path} has no log_history list: is it a TRL trainer_state.json?")
    return state


def default_label(run_dir: str | Path) -> str:
    """The run folder's name without its seed (``cft-seed1`` -> ``cft``; ``init=cft/seed=0`` -> ``init=cft``)."""
    path = Path(run_dir).resolve()
    seed = re.compile(r"[-_.]?seed[-_=]?\d+$", re.IGNORECASE)
    name = seed.sub("", path.name)
    return name or seed.sub("", path.parent.name) or path.parent.name


def load_runs(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[Run]:
    """Every run, with its label (given, or :func:`default_label`)."""
    if not run_dirs:
        raise ValueError("name at least one run dir: cft-rl compare RUN_DIR [RUN_DIR ...]")
    if labels and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} run dirs: give one label per run dir")
    runs = []
    for i, run_dir in enumerate(run_dirs):
        source = find_trainer_state(run_dir)
        label = labels[i] if labels else default_label(run_dir)
        runs.append(Run(Path(run_dir), label, source, _read_state(source)["log_history"]))
    return runs


def select_metrics(runs: Sequence[Run], patterns: Sequence[str] | None) -> list[str]:
    """The metrics matching ``patterns`` (fnmatch globs) in any run, in pattern order.

    Named patterns must each match something: a typo is an error listing what the runs do log. The
    default patterns only pick what is there.
    """
    available = sorted(set().union(*(r.metrics() for r in runs)))
    chosen: list[str] = []
    for pattern in patterns or DEFAULT_METRICS:
        hits = sorted(fnmatch.filter(available, pattern), key=natural_key)
        if not hits and patterns:
            raise ValueError(
                f"no run logs a metric matching {pattern!r}; the runs log: {', '.join(available)}"
            )
        chosen += [h for h in hits if h not in chosen]
    if not chosen:
        raise ValueError(f"none of the default metrics is logged; pick some with --metrics from: {available}")
    return chosen


# --- the comparison --------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything the report files show; plain data, so tests can check it without reading files."""

    runs: list[Run]
    metrics: list[str]
    curves: dict[str, list[Curve]]  # metric -> one curve per label that has it
    stats: dict[str, dict[str, dict]]  # metric -> label -> final/peak/auc/seeds
    collapse: list[dict]  # one row per run that logs collapse_metric
    fits: dict[str, dict]  # label -> fit (see fit_entropy_reward, "degenerate"); empty without --fit
    notes: list[str]
    baseline: str | None = None  # the label the effects are measured against
    effects: list[dict] = field(default_factory=list)  # see cft_rl.compare.curves.arm_effects
    controls: list[dict] = field(default_factory=list)  # see cft_rl.compare.controls.judge_control
    learning: dict[str, dict[str, dict]] = field(default_factory=dict)  # see curves.rl_learning


def _by_label(runs: Sequence[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return groups


def _paired(run: Run, x_metric: str, y_metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Values of two metrics at the steps where a run logged both."""
    xs, x = run.series(x_metric)
    ys, y = run.series(y_metric)
    common, ix, iy = np.intersect1d(xs, ys, return_indices=True)
    return x[ix], y[iy]


def _label_curves(metric: str, groups: dict[str, list[Run]], band: str) -> list[Curve]:
    """One curve of ``metric`` per label, over the label's runs that log it."""
    return [
        aggregate(label, seeds, band)
        for label, members in groups.items()
        if (seeds := [s for s in (r.series(metric) for r in members) if len(s[0])])
    ]


def build_report(config: CompareConfig) -> Report:
    """Load the runs and compute every curve, statistic, flag, fit and effect (no files written)."""
    runs = load_runs(config.runs, config.labels)
    metrics = select_metrics(runs, config.metrics)
    groups = _by_label(runs)
    curves, stats, notes = {}, {}, []
    for metric in metrics:
        missing = [str(r.path) for r in runs if not len(r.series(metric)[0])]
        if missing:
            notes.append(f"`{metric}` is missing in {', '.join(missing)}: plotted from the other runs")
        curves[metric] = _label_curves(metric, groups, config.band)
        stats[metric] = {c.label: label_stats(c) for c in curves[metric]}
    collapse = _collapse(runs, config, notes)
    fits = _fits(groups, config, notes) if config.fit else {}
    baseline = _baseline(config, list(groups), notes)
    effects = arm_effects(curves, baseline, config.interval) if baseline else []
    controls = _controls(config, groups, curves, baseline)
    learning = rl_learning(curves, notes)
    if config.smooth:
        curves = {m: [smoothed(c, config.smooth) for c in cs] for m, cs in curves.items()}
    return Report(runs, metrics, curves, stats, collapse, fits, notes, baseline, effects, controls, learning)


def _collapse(runs: Sequence[Run], config: CompareConfig, notes: list[str]) -> list[dict]:
    """Where each run's ``collapse_metric`` first falls below ``collapse_fraction`` of its start."""
    collapse = []
    for run in runs:
        steps, values = run.series(config.collapse_metric)
        if len(values):
            at = entropy_collapse(steps, values, config.collapse_fraction)
            collapse.append(
                {
                    "run": str(run.path),
                    "label": run.label,
                    "start": float(values[0]),
                    "min": float(values.min()),
                    "step": at,
                }
            )
        else:
            notes.append(f"{run.path} logs no `{config.collapse_metric}`: entropy collapse not checked")
    return collapse


def _fits(groups: dict[str, list[Run]], config: CompareConfig, notes: list[str]) -> dict[str, dict]:
    """The entropy-reward fit of each label, over its runs' steps that log both metrics."""
    fits = {}
    for label, members in groups.items():
        pairs = [_paired(r, config.entropy_metric, config.reward_metric) for r in members]
        fits[label] = fit = fit_entropy_reward(
            np.concatenate([h for h, _ in pairs]), np.concatenate([r for _, r in pairs])
        )
        if fit["degenerate"] is not None:
            notes.append(
                f"{label}: degenerate: {fit['degenerate']} over the {fit['points']} steps that log both "
                f"`{config.entropy_metric}` and `{config.reward_metric}`: no fit, no R²"
            )
        elif fit["r2"] < 0.5:
            notes.append(f"{label}: the fit explains little (R² {fit['r2']:.2f}); its ceiling means little")
    return fits


def _controls(
    config: CompareConfig, groups: dict[str, list[Run]], curves: dict[str, list[Curve]], baseline: str | None
) -> list[dict]:
    """Each control arm judged on :data:`CONTROL_METRICS`' final values against the baseline, at
    :func:`control_confidence`, from the curves already built or, for a control metric not among the
    report's, its own."""
    if not config.controls:
        return []
    if baseline is None:
        raise ValueError("controls are judged against a baseline: set baseline (or name an arm 'full')")
    for arm in config.controls:
        if arm not in groups or arm == baseline:
            what = "the baseline" if arm == baseline else "not a label of these runs"
            others = sorted(set(groups) - {baseline})
            raise ValueError(f"controls: arm {arm!r} is {what}; a control is one of {others}")
    judged = []
    for arm, expect in config.controls.items():
        logged = set().union(*(r.metrics() for r in groups[arm] + groups[baseline]))
        rows: dict[str, dict | None] = {}
        confidence = control_confidence(expect, len(CONTROL_METRICS))
        for pattern, metric in control_metrics(logged).items():
            if metric is None:  # logged by neither: the control cannot be judged on it
                rows[pattern] = None
                continue
            by_label = curves.get(metric) or _label_curves(metric, groups, config.band)
            effects = arm_effects({metric: by_label}, baseline, config.interval, confidence)
            rows[metric] = next((r for r in effects if r["arm"] == arm and r["measure"] == "final"), None)
        judged.append(judge_control(arm, expect, baseline, rows, confidence))
    return judged


def _baseline(config: CompareConfig, labels: list[str], notes: list[str]) -> str | None:
    """The label the others are compared with: ``config.baseline``, else "full" when present."""
    if config.baseline is not None and config.baseline not in labels:
        raise ValueError(f"baseline {config.baseline!r} is not a label of these runs; they are {labels}")
    baseline = config.baseline or ("full" if "full" in labels else None)
    if baseline is None and len(labels) > 1:
        notes.append("no baseline label (set baseline): no effect sizes or verdicts")
    return baseline
