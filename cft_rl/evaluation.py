"""Sampling from a model and scoring what it wrote: accuracy, pass@k, diversity and entropy.

The same prompt template (:func:`cft_rl.data.build_prompt`, rendered by the tokenizer's chat template)
and the same verifier (:mod:`cft_rl.rewards`) as training, so an evaluation number means what the
reward meant.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from cft_rl.rewards import check_batch


@dataclass
class Sample:
    """One completion: its text, and the entropy (nats) of the sampling distribution at each token."""

    text: str
    num_tokens: int
    entropies: list[float] = field(default_factory=list)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): chance that k of n samples, c of them correct, hold one correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # 1 - C(n-c, k) / C(n, k), as a running product: exact for small n, stable for large n.
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the last dimension."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def render_prompts(tokenizer, prompts: Sequence) -> list[str]:
    """Chat prompts (message lists) through the chat template with the generation prompt; text passes."""
    return [
        p
        if isinstance(p, str)
        else tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence,
    n: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> list[list[Sample]]:
    """``n`` completions per prompt (greedy when ``temperature`` is 0), batched with left padding.

    Entropies are those of the distribution actually sampled from (``logits / temperature``; the raw
    logits when greedy), the quantity TRL logs as ``entropy``.
    """
    texts = render_prompts(tokenizer, prompts)
    model.eval()
    torch.manual_seed(seed)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out: list[list[Sample]] = []
    try:
        for start in tqdm(range(0, len(texts), batch_size), desc="generate", disable=not progress):
            enc = tokenizer(
                texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(model.device)
            gen = model.generate(
                **enc,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_k=0 if temperature > 0 else None,
                top_p=1.0 if temperature > 0 else None,
                num_return_sequences=n,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                return_dict_in_generate=True,
                output_logits=True,
            )
            out += _unbatch(tokenizer, gen, enc["input_ids"].shape[1], n, temperature)
    finally:
        tokenizer.padding_side = side
    return out


def _unbatch(tokenizer, gen, prompt_len: int, n: int, temperature: float) -> list[list[Sample]]:
    completions = gen.sequences[:, prompt_len:]
    logits = torch.stack(gen.logits, dim=1)  # (batch * n, steps, vocab)
    entropies = token_entropy(logits / (temperature if temperature > 0 else 1.0))
    samples = []
    for row, ent in zip(completions.tolist(), entropies, strict=True):
        length = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        samples.append(
            Sample(tokenizer.decode(row[:length], skip_special_tokens=True), length, ent[:length].tolist())
        )
    return [samples[i : i + n] for i in range(0, len(samples), n)]


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
