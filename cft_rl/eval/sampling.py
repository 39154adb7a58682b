"""Sampling from a model and scoring what it wrote: accuracy, pass@k, diversity and entropy.

The same prompt template (:func:`cft_rl.data.prompts.build_prompt`, rendered by the tokenizer's chat template)
and the same verifier (:mod:`cft_rl.verify.verifier`) as training, so an evaluation number means what the
reward meant.

Generation sits behind a one-method backend (``generate(prompts, n, temperature, max_new_tokens, seed,
progress) -> per-prompt lists of Sample``), in the style of the annotation backends: :class:`HFGenerator`
(batched transformers generation) and :class:`VLLMGenerator` (a serving engine, imported lazily). The
evaluation job (:mod:`cft_rl.eval.job`) only ever talks to that method.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor

from cft_rl.generation import first_stop, plain_generate, stop_token_ids, vllm_generation_config
from cft_rl.stats import check_ks, pass_at_k, sampled_metrics, token_entropy, wilson_interval
from cft_rl.verify.verifier import check_batch, normalize_answer


@dataclass
class Sample:
    """One completion: its text, and the entropy (nats) of the sampling distribution at each token."""

    text: str
    num_tokens: int
    entropies: list[float] = field(default_factory=list)


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

    Decoding takes nothing from ``model.generation_config`` but its stop tokens
    (:func:`cft_rl.generation.plain_generate`): greedy is the argmax, a sample is drawn from the whole
    ``softmax(logits / temperature)``. A completion ends at the first of the stop tokens.

    Entropies are those of the distribution actually sampled from (``logits / temperature``; the raw
    logits when greedy), the quantity TRL logs as ``entropy``.
    """
    texts = render_prompts(tokenizer, prompts)
    if not texts:
        return []
    model.eval()
    stops = stop_token_ids(model, tokenizer)
    torch.manual_seed(seed)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out: list[list[Sample]] = []
    try:
        for start in tqdm(range(0, len(texts), batch_size), desc="generate", disable=not progress):
            enc = tokenizer(
                texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(model.device)
            recorder = _EntropyRecorder(temperature)
            sampling = dict(temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else {}
            gen = plain_generate(
                model,
                stops,
                tokenizer.pad_token_id,
                **enc,
                do_sample=temperature > 0,
                **sampling,
                num_return_sequences=n,
                max_new_tokens=max_new_tokens,
                logits_processor=[recorder],
            )
            completions = gen[:, enc["input_ids"].shape[1] :]
            out += _unbatch(tokenizer, completions, recorder.entropies(), n, stops)
    finally:
        tokenizer.padding_side = side
    return out


class _EntropyRecorder(LogitsProcessor):
    """Records each step's token entropy and passes the scores on unchanged.

    Custom processors run before generate's temperature and top-k/p warpers, so the scores seen here are
    the raw logits; dividing by the temperature gives the distribution actually sampled from (top_k=0,
    top_p=1 leave it whole). Recording (rows,) per step instead of ``output_logits`` keeps memory flat:
    the logits of a long batch of a 150k-vocabulary model would take gigabytes.
    """

    def __init__(self, temperature: float):
        self.scale = temperature if temperature > 0 else 1.0
        self._steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._steps.append(token_entropy(scores / self.scale))  # stays on device: no sync per step
        return scores

    def entropies(self) -> torch.Tensor:
        """(rows, steps) entropies of the generation just run."""
        return torch.stack(self._steps, dim=1).cpu() if self._steps else torch.zeros(0, 0)


def _unbatch(
    tokenizer, completions: torch.Tensor, entropies: torch.Tensor, n: int, stops
) -> list[list[Sample]]:
    samples = []
    for row, ent in zip(completions.tolist(), entropies, strict=True):
        stop = first_stop(row, stops)  # generate pads after it: the completion ends at its first stop
        length = len(row) if stop is None else stop + 1
        samples.append(
            Sample(tokenizer.decode(row[:length], skip_special_tokens=True), length, ent[:length].tolist())
        )
    return [samples[i : i + n] for i in range(0, len(samples), n)]


class HFGenerator:
    """The evaluation backend on a Hugging Face causal LM: :func:`generate`, ``batch_size`` prompts a call."""

    def __init__(self, model, tokenizer, batch_size: int = 32):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def generate(
        self,
        prompts: Sequence,
        n: int = 1,
        temperature: float = 0.0,
        max_new_tokens: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> list[list[Sample]]:
        return generate(
            self.model,
            self.tokenizer,
            prompts,
            n=n,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            batch_size=self.batch_size,
            seed=seed,
            progress=progress,
        )


class VLLMGenerator:
    """The same method on vLLM (imported lazily: an optional, GPU-side dependency).

    Prompts are rendered and tokenised exactly as :func:`generate` does and passed as token ids, so both
    backends see the same model input. Token entropy: vLLM returns only the top ``logprobs`` entries of
    the *raw* distribution per step, so the entropy here is that of those entries plus one bucket for the
    remaining mass: a lower bound of the full entropy, and of the raw (T=1) distribution whatever T is.
    """

    def __init__(self, llm, tokenizer, logprobs: int = 20):
        self.llm, self.tokenizer, self.logprobs = llm, tokenizer, logprobs
        self.stops = stop_token_ids(vllm_generation_config(llm), tokenizer)

    def generate(
        self,
        prompts: Sequence,
        n: int = 1,
        temperature: float = 0.0,
        max_new_tokens: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> list[list[Sample]]:
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(
            n=n,
            temperature=temperature,  # 0: greedy; vLLM's top-k/top-p defaults keep the whole distribution
            max_tokens=max_new_tokens,
            seed=seed,
            logprobs=self.logprobs,
            stop_token_ids=self.stops,
        )
        ids = [
            TokensPrompt(prompt_token_ids=self.tokenizer(text, add_special_tokens=False)["input_ids"])
            for text in render_prompts(self.tokenizer, prompts)
        ]
        results = self.llm.generate(ids, params, use_tqdm=progress)
        return [[self._sample(o) for o in result.outputs] for result in results]

    def _sample(self, output) -> Sample:
        tokens = list(output.token_ids)
        entropies = [_topk_entropy([lp.logprob for lp in step.values()]) for step in output.logprobs or []]
        return Sample(self.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), entropies)


def _topk_entropy(logprobs: Sequence[float]) -> float:
    """Entropy (nats) of the given top entries plus one bucket holding the probability they leave out."""
    probs = [math.exp(lp) for lp in logprobs if lp > -math.inf]
    rest = max(0.0, 1.0 - sum(probs))
    return -sum(p * math.log(p) for p in [*probs, rest] if p > 0)


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
