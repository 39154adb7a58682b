"""Scoring what a model wrote on a benchmark: accuracy with its interval, pass@k, maj@k, diversity, entropy.

The same prompt template (:func:`cft_rl.data.prompts.build_prompt`, rendered by the tokenizer's chat
template) and the same verifier (:mod:`cft_rl.verify.verifier`) as training, so an evaluation number
means what the reward meant. The samples come from :mod:`cft_rl.generation`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from cft_rl.generation import Sample
from cft_rl.stats import check_ks, pass_at_k, sampled_metrics, wilson_interval
from cft_rl.verify.verifier import check_batch, normalize_answer


def summarize(groups: Sequence[Sequence[Sample]], golds: Sequence[str], ks: Sequence[int] = ()) -> dict:
    """Accuracy (mean over all samples), pass@k, distinct completions and mean token entropy."""
    flat = [s for g in groups for s in g]
    repeated_golds = [gold for gold, group in zip(golds, groups, strict=True) for _ in group]
    scores = [v.score or 0.0 for v in check_batch([s.text for s in flat], repeated_golds)]
    n = len(groups[0]) if groups else 0
    correct = [sum(scores[i * n : (i + 1) * n]) for i in range(len(groups))]
    metrics = {"accuracy": sum(scores) / max(1, len(scores))}
    for k in ks:
        metrics[f"pass@{k}"] = sum(pass_at_k(n, int(c), k) for c in correct) / max(1, len(groups))
    metrics["distinct_completions"] = sum(len(Counter(s.text for s in g)) for g in groups) / max(
        1, len(groups)
    )
    ents = [e for s in flat for e in s.entropies]
    metrics["entropy"] = sum(ents) / max(1, len(ents))
    metrics["mean_length"] = sum(s.num_tokens for s in flat) / max(1, len(flat))
    return metrics


def score_groups(
    groups: Sequence[Sequence[Sample]],
    golds: Sequence[str],
    ks: Sequence[int] = (1,),
    maj_ks: Sequence[int] = (),
) -> tuple[dict, list[list]]:
    """Metrics of n samples per question, and each sample's verdict (nested like ``groups``).

    accuracy is the mean over all samples, with a 95% Wilson interval that counts *questions* as the
    trials (a sampled question's accuracy is a fraction; a [0, 1] variable's variance is at most
    mu(1 - mu), so this interval is conservative). pass@k, maj@k (disjoint chunks, ties split the
    credit), entropy, distinct answers and answer entropy are :func:`cft_rl.stats.sampled_metrics`
    (as the GRPO probe logs them), on the verifier's extracted answers.
    """
    if not groups:
        return {"num_questions": 0}, []
    flat = [s.text for g in groups for s in g]
    repeated = [gold for gold, g in zip(golds, groups, strict=True) for _ in g]
    verdicts_flat = check_batch(flat, repeated)
    verdicts, start = [], 0
    for g in groups:
        verdicts.append(verdicts_flat[start : start + len(g)])
        start += len(g)
    correct = [[v.score == 1.0 for v in vs] for vs in verdicts]
    per_question = [sum(c) / len(c) for c in correct]
    n = min(len(g) for g in groups)
    ks = check_ks("ks", ks, n, "the samples per question")
    maj_ks = check_ks("maj_ks", maj_ks, n, "the samples per question") if maj_ks else ()
    answers = [[normalize_answer(v.extracted) for v in vs] for vs in verdicts]
    entropies = [e for g in groups for s in g for e in s.entropies]
    metrics = sampled_metrics(correct, answers, entropies, ks, maj_ks)
    for name in ("entropy", "answer_entropy"):  # undefined (no tokens, no answer stated): null, not absent
        metrics.setdefault(name, None)
    low, high = wilson_interval(sum(per_question), len(groups))
    metrics |= {
        "accuracy": sum(map(sum, correct)) / len(flat),
        "accuracy_ci95": [low, high],
        "num_questions": len(groups),
        "samples_per_question": n,
        "mean_length": sum(s.num_tokens for g in groups for s in g) / len(flat),
        "frac_no_answer": sum(v.extracted is None for vs in verdicts for v in vs) / len(flat),
    }
    return metrics, verdicts
