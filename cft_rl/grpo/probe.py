"""The fixed probe set of a GRPO run: held-out prompts sampled every N optimizer steps, as ``probe/*``.

A callback of :class:`cft_rl.grpo.trainer.MonitoredGRPOTrainer`. It generates the way TRL's own
transformers path does, inside ``trl.models.unwrap_model_for_generation`` (public: ZeRO-3 parameters
gathered unless ``args.ds3_gather_for_generation`` is off, gradient checkpointing off) and
``trl.distributed.DistributedBackend.summon_full_params`` (TRL's internal helper, FSDP v1 full
parameters; a no-op elsewhere). It reads the trainer's ``model_wrapped``, ``args``, ``monitor``,
``_tokenizer`` (TRL's) and ``_metrics`` (TRL's metric store). These private parts of TRL are listed,
with the rest, in :mod:`cft_rl.grpo.trainer`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback
from trl.distributed import DistributedBackend
from trl.models import unwrap_model_for_generation

from cft_rl.generation import generate
from cft_rl.grpo.metrics import probe_metrics
from cft_rl.verify.verifier import check_batch

if TYPE_CHECKING:
    from cft_rl.grpo.trainer import MonitoredGRPOTrainer


class Probe:
    """A fixed held-out probe: prompts, their gold answers and how to sample them.

    Args:
        prompts: Chat prompts (message lists) or text, in a fixed order.
        answers: Gold final answers, one per prompt.
        every: Probe every this many optimizer steps (and once before training, at step 0).
        batch_size: Prompts per generation call; ``max_new_tokens``: completion budget; ``seed``: the
            sampling seed (the same at every probe, so curves differ only by the policy).
    """

    def __init__(
        self,
        prompts: Sequence,
        answers: Sequence[str],
        every: int,
        batch_size: int = 32,
        max_new_tokens: int = 256,
        seed: int = 0,
    ):
        if len(prompts) != len(answers):
            raise ValueError(f"probe has {len(prompts)} prompts but {len(answers)} answers")
        if not prompts or every < 1:
            raise ValueError("a probe needs at least one prompt and every >= 1")
        self.prompts, self.answers = list(prompts), list(answers)
        self.every, self.batch_size, self.max_new_tokens, self.seed = every, batch_size, max_new_tokens, seed


class ProbeCallback(TrainerCallback):
    """Samples the probe at step 0 and every ``probe.every`` steps; adds ``probe/*`` to that step's log.

    The prompts are cut into fixed batches of ``probe.batch_size`` (:func:`probe_batches`), dealt to the
    processes in contiguous runs, and the samples gathered, so the probe's wall time shrinks with more
    processes. Each batch is sampled under its own seed (:func:`probe_batch_seed`), so a batch's samples,
    and the probe curves, are the same whichever process draws them and however many processes there
    are. Generation runs inside TRL's ``unwrap_model_for_generation`` (ZeRO-3 parameters gathered,
    gradient checkpointing off) and FSDP's full parameters; every process makes the same number of
    ``generate`` calls, since a sharded forward is a collective. Sampling runs under a forked RNG: with
    or without the probe, training draws the same random numbers.
    """

    def __init__(self, trainer: MonitoredGRPOTrainer, probe: Probe):
        self.trainer, self.probe = trainer, probe

    def on_train_begin(self, args, state, control, **kwargs):
        # Not on resume: step `global_step` is already in the log history.
        if state.global_step == 0:
            self.trainer.log_entry(self.run())

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.probe.every == 0:
            for name, value in self.run().items():
                self.trainer._metrics["train"][name].append(value)

    def run(self) -> dict[str, float]:
        """The ``probe/*`` metrics of the current policy (on the main process; {} elsewhere)."""
        trainer, probe, config = self.trainer, self.probe, self.trainer.monitor
        accelerator = trainer.accelerator
        start = time.perf_counter()
        batches = probe_batches(len(probe.prompts), probe.batch_size)
        mine = dealt_batches(len(batches), accelerator.process_index, accelerator.num_processes)
        local = []
        with (
            unwrap_model_for_generation(
                trainer.model_wrapped,
                accelerator,
                gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
            ) as model,
            DistributedBackend(accelerator).summon_full_params(trainer.model_wrapped, recurse=False),
            torch.random.fork_rng(devices=[] if accelerator.device.type == "cpu" else [accelerator.device]),
        ):
            was_training = model.training
            for b in mine:
                # None: a filler call (batch 0 again, dropped) that keeps the collectives matched.
                index = 0 if b is None else b
                local.append((b, self._sample(model, batches[index], index)))
            model.train(was_training)
        local = [(b, pairs) for b, pairs in local if b is not None]
        gathered = gather_object([local])  # one list per process, in process order
        if not accelerator.is_main_process:
            return {}
        ordered = sorted((item for part in gathered for item in part), key=lambda item: item[0])
        pairs = [pair for _, batch_pairs in ordered for pair in batch_pairs]
        metrics = probe_metrics([g for g, _ in pairs], [c for _, c in pairs], config)
        metrics["probe/seconds"] = time.perf_counter() - start
        return metrics

    def _sample(self, model, batch: slice, index: int) -> list[tuple[list, list[bool]]]:
        """(samples, correct flags) of each prompt of one probe batch."""
        probe, config = self.probe, self.trainer.monitor
        n = config.probe_num_samples
        samples = generate(
            model,
            self.trainer._tokenizer,
            probe.prompts[batch],
            n=n,
            temperature=config.probe_temperature,
            max_new_tokens=probe.max_new_tokens,
            batch_size=probe.batch_size,
            seed=probe_batch_seed(probe.seed, index),
        )
        texts = [s.text for group in samples for s in group]
        golds = [gold for gold in probe.answers[batch] for _ in range(n)]
        scores = [v.score == 1.0 for v in check_batch(texts, golds)]
        return [(group, scores[i * n : (i + 1) * n]) for i, group in enumerate(samples)]


def probe_batches(n: int, batch_size: int) -> list[slice]:
    """``range(n)`` in consecutive batches of ``batch_size`` (the last one shorter): the same batches
    whatever the number of processes, so that each batch is padded and sampled alike."""
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def dealt_batches(n: int, index: int, count: int) -> list[int | None]:
    """Process ``index`` of ``count``'s share of ``n`` batches: a contiguous run of batch indices,
    padded with None (a call whose samples are dropped) to the same length on every process."""
    per_process = -(-n // count)
    share = list(range(index * n // count, (index + 1) * n // count))
    return share + [None] * (per_process - len(share))


def probe_batch_seed(seed: int, batch: int) -> int:
    """The sampling seed of probe batch ``batch``: fixed by the probe's seed and the batch alone."""
    return seed * 1_000_003 + batch
