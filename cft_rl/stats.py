"""Statistics of sampled completions: pass@k, maj@k, confidence intervals, entropy and diversity.

Pure functions on numbers, strings and tensors (no models, no I/O), shared by evaluation
(:mod:`cft_rl.eval.scoring`) and the GRPO monitors (:mod:`cft_rl.grpo.metrics`), so an offline
number and a logged one are computed alike.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# --- k values --------------------------------------------------------------------------------------


def check_ks(name: str, ks: Sequence[int], limit: int | None = None, limit_name: str = "") -> tuple[int, ...]:
    """``ks`` as a tuple: a non-empty list of positive integers, none above ``limit`` (when given).

    ``name`` is the setting as the user writes it (``MonitorConfig.ks``); ``limit_name`` names the limit.
    """
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"{name} must be a non-empty list of positive integers; got {ks}")
    if limit is not None and max(ks) > limit:
        raise ValueError(f"{name} has k={max(ks)}, more than {limit_name} = {limit}")
    return tuple(ks)


def default_ks(n: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to ``n``, plus ``n`` itself: the pass@k ks of ``n`` samples per prompt."""
    ks = [2**i for i in range(n.bit_length()) if 2**i <= n]
    return tuple(ks if ks[-1] == n else [*ks, n])


# --- correctness -----------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): chance that k of n samples, c of them correct, hold one correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # 1 - C(n-c, k) / C(n, k), as a running product: exact for small n, stable for large n.
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% for z=1.96): ``successes`` of ``n`` trials.

    Chosen over the normal approximation because benchmark slices are small and accuracies sit near
    0 or 1, where p +/- z*sqrt(p(1-p)/n) leaves [0, 1] or collapses to a point. (0, 1) when n is 0.
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"Wilson interval needs 0 <= successes <= n; got {successes} of {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_defined(values: Iterable[float | None]) -> float | None:
    """Mean of the defined values (None: a group where the statistic is undefined); None if none."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def majority_score(answers: Sequence[str | None], correct: Sequence[bool]) -> float:
    """1 when the most frequent stated answer is correct, 0 otherwise; ties share the credit.

    Sharing (rather than taking the first) keeps the score independent of sample order.
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winners = [a for a, c in votes.items() if c == top]
    # An answer's credit is the share of its samples graded correct: all or none with a consistent grader.
    credit = [sum(bool(ok) for a, ok in zip(answers, correct, strict=True) if a == w) / top for w in winners]
    return sum(credit) / len(winners)


def sampled_metrics(
    correct: Sequence[Sequence[bool]],
    answers: Sequence[Sequence[str | None]],
    entropies: Sequence[float],
    ks: Sequence[int],
    maj_ks: Sequence[int] = (),
) -> dict[str, float]:
    """Metrics of n samples per question: ``pass@k``, ``maj@k``, ``entropy``, ``distinct_answers``,
    ``answer_entropy``.

    ``correct`` and ``answers`` (normalised, None where none is stated) are nested per question;
    ``entropies`` are the token entropies of every sample, flat. pass@k is the unbiased estimator over
    all n samples. maj@k votes over disjoint chunks of k samples (n // k of them, in sample order) among
    the answers stated, and averages. ``entropy`` is the token-weighted mean over the finite entropies.
    Every k must be at most the smallest n (:func:`check_ks`). An undefined metric is left out.
    """
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"pass@{k}"] = mean_defined([pass_at_k(len(c), sum(map(bool, c)), k) for c in correct])
    for k in maj_ks:
        # Disjoint chunks of k samples, so every sample votes once and the estimate uses all n // k.
        chunks = [
            majority_score(group_answers[i : i + k], group_correct[i : i + k])
            for group_answers, group_correct in zip(answers, correct, strict=True)
            for i in range(0, len(group_answers) - k + 1, k)
        ]
        metrics[f"maj@{k}"] = mean_defined(chunks)
    entropy = mean_defined([e for e in entropies if math.isfinite(e)])
    if entropy is not None:
        metrics["entropy"] = entropy
    metrics["distinct_answers"] = mean_defined([distinct_answers(g) for g in answers])
    spread = mean_defined(answer_entropy(g) for g in answers)
    if spread is not None:
        metrics["answer_entropy"] = spread
    return metrics


# --- entropy ---------------------------------------------------------------------------------------


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the last dimension."""
    import torch  # heavy: EvalConfig and `cft-rl --help` read this module

    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def distinct_answers(answers: Sequence[str | None]) -> int:
    """How many different answers are stated (None: no answer, not counted)."""
    return len({a for a in answers if a is not None})


def answer_entropy(answers: Sequence[str | None]) -> float | None:
    """Shannon entropy (nats) of the final answers stated; None when none is stated.

    0 when every answer agrees, log(m) for m different answers. Unstated answers are left out:
    "no answer" is not an answer the policy is exploring.
    """
    counts = Counter(a for a in answers if a is not None)
    total = sum(counts.values())
    if not total:
        return None
    return -sum(c / total * math.log(c / total) for c in counts.values())


# --- text diversity --------------------------------------------------------------------------------


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct-n (Li et al. 2016): unique word n-grams / all word n-grams, pooled over ``texts``.

    Words are whitespace-split, so the number does not change with the tokenizer. None when the texts
    hold no n-gram at all (all empty, or all shorter than n words).
    """
    grams = [g for text in texts for g in _ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else None


def _clipped_matches(counts: list[Counter]) -> list[int]:
    """For each text i, sum over its n-grams of min(count, highest count in any *other* text).

    BLEU's clipped n-gram precision against all the others as references. Keeping, per n-gram, the top
    two counts and who holds the top one makes this linear in total length instead of quadratic in G.
    """
    top: dict[tuple, tuple[int, int, int]] = {}  # n-gram -> (highest count, its text, second highest)
    for i, text_counts in enumerate(counts):
        for gram, c in text_counts.items():
            first, owner, second = top.get(gram, (0, -1, 0))
            top[gram] = (c, i, first) if c > first else (first, owner, max(second, c))
    matches = []
    for i, text_counts in enumerate(counts):
        total = 0
        for gram, c in text_counts.items():
            first, owner, second = top[gram]
            total += min(c, second if owner == i else first)
        matches.append(total)
    return matches


def self_bleu(texts: Sequence[str], max_n: int = 4, max_words: int | None = None) -> float | None:
    """Self-BLEU (Zhu et al. 2018): mean BLEU of each text against all the others; 1.0 = all identical.

    Sentence BLEU with uniform weights over orders 1..max_n, brevity penalty to the closest reference
    length (shorter on ties), and add-one smoothing of orders >= 2 (Lin & Och 2004) so one missing
    4-gram does not zero a near-copy; order 1 is not smoothed, so texts sharing no word score 0.
    None with fewer than two texts.
    """
    if len(texts) < 2:
        return None
    words = [text.split()[:max_words] for text in texts]
    matched = [_clipped_matches([Counter(_ngrams(w, n)) for w in words]) for n in range(1, max_n + 1)]
    scores = []
    for i, hyp in enumerate(words):
        # Order n has len - n + 1 n-grams; smoothing adds one to both counts from order 2 up.
        precisions = [matched[0][i] / max(1, len(hyp))]
        precisions += [(matched[n - 1][i] + 1) / (max(0, len(hyp) - n + 1) + 1) for n in range(2, max_n + 1)]
        if not hyp or not precisions[0]:
            scores.append(0.0)
            continue
        ref = min((len(w) for j, w in enumerate(words) if j != i), key=lambda r: (abs(r - len(hyp)), r))
        brevity = 1.0 if len(hyp) > ref else math.exp(1 - ref / len(hyp))
        scores.append(brevity * math.exp(sum(map(math.log, precisions)) / max_n))
    return sum(scores) / len(scores)
