"""The generators: batched HF sampling with token entropies, and vLLM, behind one method.

Generation sits behind a one-method backend (``generate(prompts, n, temperature, max_new_tokens, seed,
progress) -> per-prompt lists of Sample``), in the style of the annotation backends: :class:`HFGenerator`
(batched transformers generation, :func:`generate`) and :class:`VLLMGenerator` (a serving engine,
imported lazily). Evaluation (:mod:`cft_rl.eval.job`), the annotation judge and the GRPO probe only
ever talk to that method or to :func:`generate`. What every generator here shares:

- **Stop tokens.** A model can end a turn on more than its tokenizer's ``eos_token``: Llama-3 instruct
  ends one with ``<|eot_id|>``, and its ``generation_config.eos_token_id`` is a list. TRL's GRPO
  rollouts stop on all of them (the tokenizer's eos, then the config's), so evaluation, both
  annotation engines and the probe do too, all through :func:`stop_token_ids`.
- **Plain decoding.** ``model.generate`` fills every setting it is not given from the checkpoint's
  ``generation_config`` (a repetition penalty, a temperature, top-k/top-p, suppressed tokens, ...).
  :func:`plain_generate` decodes with exactly the settings it is passed, so a greedy continuation is
  the raw argmax that the fast annotation engine takes, and a sample at temperature T is drawn from
  ``softmax(logits / T)``, the distribution whose entropy evaluation records.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, LogitsProcessor

from cft_rl.stats import token_entropy


def stop_token_ids(source, tokenizer) -> list[int]:
    """The token ids that end a completion: the tokenizer's eos first, then those the model's generation
    config lists (an int or a list), without repeats.

    ``source``: a model (its ``generation_config`` is read), a ``GenerationConfig``, a mapping with an
    ``eos_token_id`` entry (vLLM's view of the generation config), or None (the tokenizer's eos only).
    """
    config = getattr(source, "generation_config", source)
    listed = config.get("eos_token_id") if isinstance(config, dict) else getattr(config, "eos_token_id", None)
    ids = [tokenizer.eos_token_id, *_as_list(listed)]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return value.flatten().tolist()
    return list(value) if isinstance(value, Iterable) else [value]


def first_stop(tokens: list[int], stops: Iterable[int]) -> int | None:
    """Index of the first stop token in ``tokens``, or None when there is none."""
    stops = set(stops)
    return next((i for i, token in enumerate(tokens) if token in stops), None)


@torch.no_grad()
def plain_generate(model, stops: list[int], pad_token_id: int, **settings):
    """``model.generate(**settings)`` that stops on ``stops`` and takes nothing from the model's
    ``generation_config``: greedy unless ``do_sample=True`` is passed, no penalties, no warpers.

    transformers fills every setting left None from ``model.generation_config``, and several settings
    are off only when None (``suppress_tokens``, ``bad_words_ids``, ...), so no config passed in can
    switch them off: for the call, the model's config is swapped for a blank one (as TRL's
    ``unwrap_model_for_generation`` overrides it; on a PEFT wrapper, the base model's, which PEFT
    copies from at each call).
    """
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_kwargs = {
        k: settings.pop(k) for k in ("input_ids", "attention_mask", "logits_processor") if k in settings
    }
    config = GenerationConfig(eos_token_id=list(stops), pad_token_id=pad_token_id, **settings)
    with _blank_generation_config(target):
        return model.generate(**model_kwargs, generation_config=config)


@contextlib.contextmanager
def _blank_generation_config(model):
    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


def vllm_generation_config(llm) -> GenerationConfig | None:
    """The generation config of the checkpoint a vLLM ``LLM`` serves (None when it has none), for
    :func:`stop_token_ids`: vLLM's own view of it is internal and changes between versions."""
    try:
        return GenerationConfig.from_pretrained(llm.llm_engine.model_config.model)
    except (AttributeError, OSError):  # no engine (a stand-in) or no generation_config.json
        return None


# --- the generators ------------------------------------------------------------------------------


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
