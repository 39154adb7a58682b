"""Pretraining of the toy base model: its Qwen2 shape, the learning-rate schedule, the weight average.

A plain PyTorch loop, not a TRL trainer: this is the "base model" that exists before our method starts,
and a lean loop keeps a from-scratch build to about 22 minutes on one CPU thread. The build
(:mod:`cft_rl.toy.build`) decides what it trains on and where the result goes.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from cft_rl.toy.corpus import batches_of

if TYPE_CHECKING:
    from cft_rl.toy.build import ToyBuildConfig


def make_model(config: ToyBuildConfig, tokenizer):
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(config.seed)
    model_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(model_config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    return model


def learning_rate(config: ToyBuildConfig, step: int) -> float:
    """The learning rate of (0-based) ``step``: linear warmup, then the config's schedule."""
    warm = min(1.0, (step + 1) / config.warmup_steps)
    if config.lr_schedule == "constant":
        return config.learning_rate * warm
    cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / config.steps))
    return config.learning_rate * warm * cosine


def pretrain_loop(model, tokenizer, corpus, config: ToyBuildConfig, progress: bool, at_steps=None):
    """Train ``config.steps`` steps. ``at_steps`` maps a step count to a function of the model and its
    tokenizer, called once that many steps are done, with the weights a build of that many steps would
    save (the average, under ``ema_decay``): how a sweep measures several lengths of a ``"constant"`` run
    in one, or watches accuracy along a run. The functions must leave the weights alone."""
    at_steps = at_steps or {}
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, betas=(0.9, 0.95), weight_decay=0.01
    )
    params = list(model.parameters())
    trained = [p.detach() for p in params]  # views: the optimizer updates them in place
    average = [w.clone() for w in trained] if config.ema_decay > 0 else None
    model.train()
    batches = batches_of(tokenizer, corpus, config)
    bar = tqdm(range(config.steps), desc="pretrain toy model", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        ids, labels = next(batches)
        # Batches are right-padded, so under causal attention no real token ever sees a pad: no mask is
        # needed, and without one SDPA takes its fused causal path (about 1.5x faster here). Pads carry
        # label -100, so they add nothing to the loss.
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if average is not None:
            torch._foreach_lerp_(average, trained, 1.0 - config.ema_decay)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step + 1 in at_steps:
            with _weights(params, average):
                at_steps[step + 1](model, tokenizer)
            model.train()  # generating puts the model in eval mode (which would turn off any dropout)
    model.eval()
    if average is not None:
        with torch.no_grad():
            torch._foreach_copy_(params, average)
    return model


@contextlib.contextmanager
def _weights(params: list, average: list | None):
    """Within the block, ``params`` hold ``average`` (if given); the trained weights come back after."""
    if average is None:
        yield
        return
    with torch.no_grad():
        trained = [p.detach().clone() for p in params]
        torch._foreach_copy_(params, average)
        try:
            yield
        finally:
            torch._foreach_copy_(params, trained)
