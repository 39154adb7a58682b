"""What every generator here shares: where a completion stops, and plain (unconfigured) decoding.

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
from collections.abc import Iterable

import torch
from transformers import GenerationConfig


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
