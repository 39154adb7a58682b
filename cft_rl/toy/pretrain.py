"""Pretraining of the toy base model: its Qwen2 shape, the learning-rate schedule, the weight average.

A plain PyTorch loop, not a TRL trainer: this is the "base model" that exists before our method starts,
and a lean loop keeps a from-scratch build to about 22 minutes on one CPU thread. The build
(:mod:`cft_rl.toy.build`) decides what it trains on and where the result goes.

Longer builds (a sweep's 5,000-step runs take over an hour) keep a checkpoint: every
``CHECKPOINT_EVERY`` steps the trained weights, the optimizer, the weight average and the step go to one
file, written atomically, and a rerun picks up from it. The data order is not saved but replayed: the
batch stream is a pure function of the settings, so drawing the first ``step`` batches again puts it
where it was. A resumed build saves exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from cft_rl.toy.corpus import batches_of

if TYPE_CHECKING:
    from cft_rl.toy.config import ToyBuildConfig

logger = logging.getLogger(__name__)

CHECKPOINT_EVERY = 100  # steps; a checkpoint of the default model is a few MB and takes milliseconds


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


def pretrain_loop(
    model, tokenizer, corpus, config: ToyBuildConfig, progress: bool, at_steps=None, checkpoint=None
):
    """Train ``config.steps`` steps. ``at_steps`` maps a step count to a function of the model and its
    tokenizer, called once that many steps are done, with the weights a build of that many steps would
    save (the average, under ``ema_decay``): how a sweep measures several lengths of a ``"constant"`` run
    in one, or watches accuracy along a run. The functions must leave the weights alone.

    ``checkpoint`` (a file path) makes the run resumable: it is written every ``CHECKPOINT_EVERY`` steps
    and, if it holds this config's run, the loop starts from it (``at_steps`` entries it has passed are
    not called again). The caller removes it once the build is saved."""
    at_steps = at_steps or {}
    checkpoint = None if checkpoint is None else Path(checkpoint)
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, betas=(0.9, 0.95), weight_decay=0.01
    )
    params = list(model.parameters())
    trained = [p.detach() for p in params]  # views: the optimizer updates them in place
    average = [w.clone() for w in trained] if config.ema_decay > 0 else None
    start = _resume(checkpoint, model, optimizer, average, config)
    model.train()
    batches = batches_of(tokenizer, corpus, config)
    for _ in range(start):  # replay the data order up to where the checkpoint left off
        next(batches)
    bar = tqdm(range(start, config.steps), desc="pretrain toy model", disable=not progress,
               initial=start, total=config.steps)  # fmt: skip
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
        if checkpoint is not None and (step + 1) % CHECKPOINT_EVERY == 0 and step + 1 < config.steps:
            _save_checkpoint(checkpoint, step + 1, model, optimizer, average, config)
    model.eval()
    if average is not None:
        with torch.no_grad():
            torch._foreach_copy_(params, average)
    return model


def checkpoint_path(out, config: ToyBuildConfig) -> Path:
    """Where the pretraining of ``config`` into ``out`` keeps its checkpoint: beside ``out``, named by the
    settings' key, so a rerun with the same settings resumes and one with other settings starts afresh
    (leaving the other run's checkpoint where it is)."""
    return Path(out).with_name(f".{Path(out).name}.{config.key()}.pretrain.pt")


def _save_checkpoint(path: Path, step: int, model, optimizer, average, config: ToyBuildConfig) -> None:
    state = {
        "key": config.key(),
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "average": average,
        "rng": torch.get_rng_state(),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous checkpoint whole


def _resume(path: Path | None, model, optimizer, average, config: ToyBuildConfig) -> int:
    """Load ``path`` into the run if it is this config's checkpoint; returns the step to start from."""
    if path is None or not path.is_file():
        return 0
    state = torch.load(path, weights_only=True)
    if state["key"] != config.key():
        # The file name carries the key, so this only happens if someone copied a checkpoint by hand.
        raise ValueError(
            f"{path} is a checkpoint of build {state['key']}, not of {config.key()}; "
            "delete it or build into another folder"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if average is not None:
        torch._foreach_copy_(average, state["average"])
    torch.set_rng_state(state["rng"])
    logger.info("resuming the toy pretraining from step %d of %d (%s)", state["step"], config.steps, path)
    return state["step"]


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
