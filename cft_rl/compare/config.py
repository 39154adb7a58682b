"""The settings of ``cft-rl compare``: every field is a command-line flag, its help read from the spec below."""

from __future__ import annotations

from dataclasses import dataclass, field

from cft_rl.compare.controls import check_controls
from cft_rl.compare.effects import METHODS


@dataclass
class CompareConfig:
    """Settings of ``cft-rl compare``.

    Parameters:
        runs (`list[str]`):
            Run folders: TRL output_dirs with a ``trainer_state.json`` inside (or in a ``checkpoint-*/``).
        labels (`list[str]`, *optional*, defaults to `None`):
            One label per run. `None`: each folder's name without its seed (``cft-seed1`` -> ``cft``).
        metrics (`list[str]`, *optional*, defaults to `None`):
            fnmatch patterns of the metrics to compare. `None`: ``analysis.DEFAULT_METRICS``, those logged.
            The exploration gap ``probe/pass@k-pass@1`` (k the largest probe pass@k) is derived by
            compare and matched like a logged metric (``probe/pass@*`` matches it).
        out (`str`, *optional*, defaults to `"outputs/compare"`):
            Report folder: figures/, report.html, report.md, report.json and summary.json.
        band (`str`, *optional*, defaults to `"minmax"`):
            "minmax", "ci" (95%, t) or "none" around each label's mean over seeds.
        collapse_metric (`str`, *optional*, defaults to `"entropy"`):
            A run's entropy has collapsed when this metric falls below ``collapse_fraction`` of its first value.
        collapse_fraction (`float`, *optional*, defaults to `0.5`):
            The fraction of ``collapse_metric``'s first logged value that counts as a collapse, in (0, 1).
        fit (`bool`, *optional*, defaults to `False`):
            Fit R = -a exp(H) + b per label on (entropy_metric, reward_metric) pairs of the same step.
        entropy_metric (`str`, *optional*, defaults to `"entropy"`):
            The H of the fit.
        reward_metric (`str`, *optional*, defaults to `"reward"`):
            The R of the fit.
        baseline (`str`, *optional*, defaults to `None`):
            The label every other label is compared with: the difference of the means over seeds of each
            metric's final value and AUC, with a 95% interval and the smallest difference detectable at
            80% power. `None`: "full" when a label has that name; no comparison without a baseline.
        interval (`str`, *optional*, defaults to `"t"`):
            "t" (Welch) or "bootstrap" (percentile, 10,000 resamples).
        smooth (`float`, *optional*, defaults to `0.0`):
            TensorBoard's EMA weight for the plotted curves, in [0, 1) (0: raw). The statistics, effects
            and verdicts always use the raw values.
        controls (`dict[str, str]`, *optional*, defaults to `{}`):
            Arm label -> "differs" (a positive control: must separate from the baseline) or "same" (a
            negative control: must not), as YAML on the command line: ``--controls '{collapse: differs}'``.
            Each is judged PASS or FAIL on the final values of ``controls.CONTROL_METRICS`` (probe
            entropy, distinct answers, the exploration gap): "differs" passes when the 95% interval of
            every one excludes 0, "same" when none does at a Bonferroni-corrected confidence (98.3% for
            three metrics: ``controls.control_confidence``), so either errs in at most 5% of runs.
            Needs a baseline.
    """

    runs: list[str]
    labels: list[str] | None = None
    metrics: list[str] | None = None
    out: str = "outputs/compare"
    band: str = "minmax"
    collapse_metric: str = "entropy"
    collapse_fraction: float = 0.5
    fit: bool = False
    entropy_metric: str = "entropy"
    reward_metric: str = "reward"
    baseline: str | None = None
    interval: str = "t"
    smooth: float = 0.0
    controls: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not 0 < self.collapse_fraction < 1:
            raise ValueError(f"collapse_fraction must lie in (0, 1); got {self.collapse_fraction}")
        if self.interval not in METHODS:
            raise ValueError(f"interval must be one of {METHODS}; got {self.interval!r}")
        if not 0 <= self.smooth < 1:
            raise ValueError(f"smooth is an EMA weight in [0, 1); got {self.smooth}")
        self.controls = check_controls(self.controls or {})
