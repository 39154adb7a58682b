"""Exploration and entropy monitors for GRPO: pure functions from gathered rollouts to logged metrics.

TRL logs the mean token entropy and ``frac_reward_zero_std``; these say little about *how* a policy
explores. This module adds, per logging step, what each prompt's group of G generations looks like
(pass@k, identical-reward groups, distinct answers, n-gram diversity, self-BLEU, lengths), how token
entropy is distributed (percentiles, "forking" tokens, entropy by token class), and the metrics of a
fixed probe set sampled every N steps.

No trainer code here. Every function takes *already gathered*, flat lists in TRL's GRPO layout (rows
``i*G .. (i+1)*G - 1`` are group ``i``) and is deterministic, so a group split across processes and
gathered gives exactly what a 1-process run gives, and entropy percentiles are global, not per rank.
Group statistics are means over groups; a group where a statistic is undefined (e.g. self-BLEU of a
single completion) is left out of that mean, and a metric defined for no group is left out of the dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cft_rl.answers import extract_answer
from cft_rl.stats import (
    answer_entropy,
    check_ks,
    default_ks,
    distinct_answers,
    distinct_n,
    mean_defined,
    pass_at_k,
    sampled_metrics,
    self_bleu,
)
from cft_rl.token_classes import ENTROPY_CLASS_OF, ENTROPY_CLASSES
from cft_rl.verify.verifier import normalize_answer

if TYPE_CHECKING:
    from cft_rl.generation import Sample


@dataclass
class MonitorConfig:
    """Settings of the GRPO monitors.

    Parameters:
        ks: k values of ``explore/pass@k``. None: 1, 2, 4, ... up to the group size G, plus G itself.
            Every k must be at most G (checked by :meth:`resolve_ks` against the actual G).
        success_threshold: Without explicit correctness flags, a completion counts as correct for
            pass@k when its reward is at least this (1.0: math_reward's "correct", with or without a
            format bonus on top). Pass the accuracy reward's column as ``correct`` when weights differ.
        zero_std_atol: Rewards of a group are "all equal" when max - min <= atol * max(1, |reward|).
            Compared in float64 on the values themselves, not on a float32 standard deviation.
        distinct_max_n: ``explore/distinct_1`` .. ``distinct_{n}`` are logged (n-grams of words).
        self_bleu_max_n: Highest n-gram order of self-BLEU (4: standard BLEU-4).
        self_bleu_max_words: Completions are cut to their first this many words for self-BLEU only,
            bounding its cost (linear in words; None: no cut).
        forking_threshold: A token is a high-entropy "forking" token when its entropy (nats) exceeds
            this. arXiv 2506.01939 defines forking tokens as the top 20% by entropy; for Qwen3-8B on
            math its 80th percentile is 0.672 nats, the default here. A *fixed* threshold is used
            because a quantile one makes the fraction 20% by construction, so it could never move;
            ``entropy/p80`` is logged with the default percentiles to re-calibrate for another model.
        entropy_percentiles: Percentiles of token entropy logged as ``entropy/p{q}`` (linear
            interpolation between order statistics, numpy's default).
        probe_steps: Run the fixed probe set every this many optimizer steps (0: never). Wiring only.
        probe_num_samples: Completions sampled per probe prompt (at ``probe_temperature``).
        probe_temperature: Sampling temperature of the probe (1.0: the policy's own distribution).
        probe_ks: k values of ``probe/pass@k``; each at most ``probe_num_samples``.
        probe_maj_ks: k values of ``probe/maj@k``; each at most ``probe_num_samples``.
    """

    ks: tuple[int, ...] | None = None
    success_threshold: float = 1.0
    zero_std_atol: float = 1e-6
    distinct_max_n: int = 4
    self_bleu_max_n: int = 4
    self_bleu_max_words: int | None = 512
    forking_threshold: float = 0.672
    entropy_percentiles: tuple[float, ...] = (10, 50, 80, 90)
    probe_steps: int = 0
    probe_num_samples: int = 8
    probe_temperature: float = 1.0
    probe_ks: tuple[int, ...] = (1, 8)
    probe_maj_ks: tuple[int, ...] = (8,)

    def __post_init__(self):
        for name in ("distinct_max_n", "self_bleu_max_n", "self_bleu_max_words", "probe_num_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"MonitorConfig.{name} must be at least 1; got {getattr(self, name)}")
        for name in ("forking_threshold", "zero_std_atol", "probe_steps", "probe_temperature"):
            if getattr(self, name) < 0:
                raise ValueError(f"MonitorConfig.{name} must be >= 0; got {getattr(self, name)}")
        if any(not 0 <= q <= 100 for q in self.entropy_percentiles):
            raise ValueError(
                f"MonitorConfig.entropy_percentiles must lie in [0, 100]; got {self.entropy_percentiles}"
            )
        if self.ks is not None:
            check_ks("MonitorConfig.ks", self.ks)
        for name in ("probe_ks", "probe_maj_ks"):
            check_ks(
                f"MonitorConfig.{name}", getattr(self, name), self.probe_num_samples, "probe_num_samples"
            )

    def resolve_ks(self, group_size: int) -> tuple[int, ...]:
        """The pass@k ks for groups of ``group_size`` (GRPO's num_generations); a k > G is an error."""
        if self.ks is not None:
            return check_ks("MonitorConfig.ks", self.ks, group_size, "the group size (num_generations)")
        return default_ks(group_size)


# --- helpers ---------------------------------------------------------------------------------------


def _groups(values: Sequence, group_size: int) -> list[Sequence]:
    """Rows ``i*G .. (i+1)*G - 1`` as group ``i``; a ragged tail means the caller gathered wrongly."""
    if group_size < 1 or len(values) % group_size:
        raise ValueError(f"{len(values)} rows do not split into groups of group_size={group_size}")
    return [values[i : i + group_size] for i in range(0, len(values), group_size)]


def _put(metrics: dict[str, float], name: str, value: float | None) -> None:
    # An undefined metric is left out rather than logged as NaN, which would poison TRL's window mean.
    if value is not None:
        metrics[name] = float(value)


def _valid(reward: float | None) -> bool:
    """A reward is usable unless the reward function failed: None (skipped) or NaN/inf (TRL's marker)."""
    return reward is not None and math.isfinite(reward)


# Cosmetics that do not change an answer's value, as :func:`cft_rl.verify.verifier._same_text` ignores them.
# --- rewards: identical groups and pass@k ----------------------------------------------------------


def frac_zero_std(rewards: Sequence[float | None], group_size: int, atol: float = 1e-6) -> float:
    """Fraction of groups whose usable rewards are all equal (no GRPO learning signal).

    TRL's ``frac_reward_zero_std`` takes a float32 std and tests it with ``isclose(std, 0)``, whose
    tolerance (1e-8) is below float32 rounding noise: eight rewards of 1.2 have std ~1.3e-7 and read as
    "not equal". Comparing max and min of the values cannot suffer that. A group with at most one
    usable reward counts as equal: its advantages are all zero, so it teaches nothing either.
    """
    flags = []
    for group in _groups(rewards, group_size):
        values = [float(r) for r in group if _valid(r)]
        scale = max([1.0, *(abs(v) for v in values)])
        flags.append(len(values) < 2 or max(values) - min(values) <= atol * scale)
    return sum(flags) / len(flags) if flags else 0.0


def _pass_at_ks(correct: Sequence[bool | None], group_size: int, ks: Sequence[int]) -> dict[str, float]:
    """Unbiased pass@k per group, over its usable rows; a group with fewer than k of them is left out."""
    per_k: dict[int, list[float]] = {k: [] for k in ks}
    for group in _groups(correct, group_size):
        flags = [bool(c) for c in group if c is not None]
        for k in ks:
            if k <= len(flags):
                per_k[k].append(pass_at_k(len(flags), sum(flags), k))
    metrics: dict[str, float] = {}
    for k in ks:
        _put(metrics, f"explore/pass@{k}", mean_defined(per_k[k]))
    return metrics


# --- per-step group metrics ------------------------------------------------------------------------


def group_metrics(
    rewards: Sequence[float | None],
    completions: Sequence[str],
    group_size: int,
    config: MonitorConfig | None = None,
    *,
    answers: Sequence[str | None] | None = None,
    correct: Sequence[bool | None] | None = None,
) -> dict[str, float]:
    """``explore/*`` metrics of one gathered generation batch (G = ``group_size`` rows per prompt).

    ``rewards``: the total reward per completion; None or NaN where the reward function failed. Those
    rows are counted in ``explore/frac_reward_failed`` and left out of the reward statistics (zero std,
    pass@k), but not of the text ones: what the policy wrote does not depend on the grader failing.
    ``answers``: final answers (default: :func:`cft_rl.answers.extract_answer` of each completion).
    ``correct``: per-row correctness for pass@k (default: usable reward >= ``success_threshold``).
    """
    config = config or MonitorConfig()
    ks = config.resolve_ks(group_size)
    texts = [c or "" for c in completions]
    if answers is None:
        answers = [extract_answer(t) for t in texts]
    if correct is None:
        correct = [r >= config.success_threshold if _valid(r) else None for r in rewards]
    if not len(rewards) == len(texts) == len(answers) == len(correct):
        raise ValueError("rewards, completions, answers and correct must have one entry per completion")
    if not texts:
        return {}
    answers = [normalize_answer(a) for a in answers]
    n_rows = len(texts)
    metrics = {
        "explore/frac_reward_failed": sum(not _valid(r) for r in rewards) / n_rows,
        "explore/frac_zero_std": frac_zero_std(rewards, group_size, config.zero_std_atol),
        **_pass_at_ks(correct, group_size, ks),
        "explore/frac_no_answer": sum(a is None for a in answers) / n_rows,
        "completions/frac_empty": sum(not t.strip() for t in texts) / n_rows,
    }
    answer_groups = _groups(answers, group_size)
    _put(metrics, "explore/distinct_answers", mean_defined([distinct_answers(g) for g in answer_groups]))
    _put(metrics, "explore/answer_entropy", mean_defined(answer_entropy(g) for g in answer_groups))
    text_groups = _groups(texts, group_size)
    for n in range(1, config.distinct_max_n + 1):
        _put(metrics, f"explore/distinct_{n}", mean_defined(distinct_n(g, n) for g in text_groups))
    bleu = (self_bleu(g, config.self_bleu_max_n, config.self_bleu_max_words) for g in text_groups)
    _put(metrics, "explore/self_bleu", mean_defined(bleu))
    return metrics


def length_stats(
    lengths: Sequence[int], group_size: int, correct: Sequence[bool | None] | None = None
) -> dict[str, float]:
    """Length statistics TRL does not log (it has mean/min/max and the clipped ratio), in tokens.

    ``completions/group_length_std`` is the mean over groups of the (population) std of lengths
    within a group: how much the policy varies its length on one prompt, apart from prompt difficulty.
    With ``correct``, mean lengths of correct and incorrect completions (the usual length-hacking check).
    """
    if not lengths:
        return {}
    values = np.asarray(lengths, dtype=np.float64)
    metrics = {
        "completions/length_std": float(values.std()),
        "completions/length_p50": float(np.percentile(values, 50)),
        "completions/length_p90": float(np.percentile(values, 90)),
        "completions/group_length_std": float(np.mean([np.std(g) for g in _groups(values, group_size)])),
    }
    if correct is not None:
        for name, flag in (("correct", True), ("incorrect", False)):
            picked = [n for n, c in zip(lengths, correct, strict=True) if c is not None and bool(c) is flag]
            _put(metrics, f"completions/mean_length_{name}", mean_defined(picked))
    return metrics


# --- token entropy ---------------------------------------------------------------------------------


def entropy_metrics(
    entropies: Sequence[float],
    classes: Sequence[str | int] | None = None,
    config: MonitorConfig | None = None,
) -> dict[str, float]:
    """``entropy/*`` metrics of the flat, gathered per-token entropies (nats) of completion tokens.

    ``classes``: each token's :data:`ENTROPY_CLASSES` name or index, or its :func:`cft_rl.token_classes.token_class` name
    (padding already removed). Gather before calling: a percentile of per-rank percentiles is not the
    percentile of the batch. Non-finite entropies are dropped.
    """
    config = config or MonitorConfig()
    if classes is not None and len(classes) != len(entropies):
        raise ValueError(f"{len(entropies)} entropies but {len(classes)} token classes")
    values = np.asarray(entropies, dtype=np.float64)
    keep = np.isfinite(values)
    if not keep.any():
        return {}
    metrics = {f"entropy/p{q:g}": float(np.percentile(values[keep], q)) for q in config.entropy_percentiles}
    metrics["entropy/forking_frac"] = float(np.mean(values[keep] > config.forking_threshold))
    if classes is not None:
        names = np.asarray(
            [ENTROPY_CLASSES[c] if isinstance(c, int) else ENTROPY_CLASS_OF.get(c, c) for c in classes]
        )
        unknown = sorted(set(names.tolist()) - set(ENTROPY_CLASSES))
        if unknown:
            raise ValueError(f"unknown token class(es) {unknown}; expected one of {ENTROPY_CLASSES}")
        for name in ENTROPY_CLASSES:
            picked = values[keep & (names == name)]
            _put(metrics, f"entropy/{name}", float(picked.mean()) if picked.size else None)
    return metrics


# --- the fixed probe set ---------------------------------------------------------------------------


def probe_metrics(
    samples: Sequence[Sequence[Sample]],
    correct: Sequence[Sequence[bool]],
    config: MonitorConfig | None = None,
    answers: Sequence[Sequence[str | None]] | None = None,
) -> dict[str, float]:
    """``probe/*`` metrics of n samples per fixed probe prompt (:func:`cft_rl.generation.generate`).

    The metrics of :func:`cft_rl.stats.sampled_metrics`, as ``probe/*``: ``probe/entropy`` is the
    token-weighted mean entropy, as TRL's ``entropy``.
    """
    config = config or MonitorConfig()
    if [len(g) for g in samples] != [len(c) for c in correct]:
        raise ValueError("probe samples and correctness flags must have the same shape (prompts x samples)")
    if not samples:
        return {}
    if answers is None:
        answers = [[extract_answer(s.text) for s in group] for group in samples]
    answers = [[normalize_answer(a) for a in group] for group in answers]
    n_min = min(len(group) for group in samples)
    check_ks("MonitorConfig.probe_ks", config.probe_ks, n_min, "the samples per probe prompt")
    check_ks("MonitorConfig.probe_maj_ks", config.probe_maj_ks, n_min, "the samples per probe prompt")
    tokens = [e for group in samples for s in group for e in s.entropies]
    metrics = sampled_metrics(correct, answers, tokens, config.probe_ks, config.probe_maj_ks)
    return {f"probe/{name}": value for name, value in metrics.items()}
