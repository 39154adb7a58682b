"""Loading what annotates: the model (transformers on this worker's GPU, or vLLM) and its backend.

Kept apart from :mod:`cft_rl.annotate.job` (the job) because these are the heavy, device-facing imports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cft_rl import models
from cft_rl.annotate.engine import VLLMBackend
from cft_rl.annotate.solutions import PoolGenerator
from cft_rl.generation import VLLMGenerator

if TYPE_CHECKING:
    from cft_rl.annotate.job import AnnotateConfig


@dataclass
class Judge:
    """What annotates: the model (None under vLLM), its tokenizer, a generator for the self
    solutions, and the fast engine's backend (None: the engine's own transformers backend)."""

    model: object
    tokenizer: object
    generator: object
    backend: object = None


def load_model(name: str):
    tokenizer = models.load_tokenizer(name)  # first: a wrong name fails before any weights load
    model = models.load_model(name, dtype=torch.float32)
    if torch.cuda.is_available():  # each launcher worker on its own GPU, not all on cuda:0
        model = model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return model.eval(), tokenizer


def load_judge(config: AnnotateConfig) -> Judge:
    if config.backend == "hf":
        model, tokenizer = load_model(config.model)
        # Self solutions in a branch pool, not a padded batch: padding can change the argmax, which
        # would make a solution depend on how rows were sharded (see cft_rl.annotate.solutions).
        return Judge(model, tokenizer, PoolGenerator(model, tokenizer, config.batch_size))
    from vllm import LLM  # optional, GPU-only

    tokenizer = models.load_tokenizer(config.model)
    # Under a launcher each worker sees only its own GPU's share; prefix caching makes the many
    # continuations of one solution reuse its prefix.
    llm = LLM(
        model=config.model,
        enable_prefix_caching=True,
        gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        seed=config.seed,
    )
    return Judge(
        None, tokenizer, VLLMGenerator(llm, tokenizer), VLLMBackend(llm, tokenizer, config.batch_size)
    )
