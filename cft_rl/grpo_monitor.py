"""TRL's ``GRPOTrainer`` with the exploration and entropy monitors, and the fixed probe set, wired in.

The metrics themselves are the pure functions of :mod:`cft_rl.monitors`; this module only collects their
inputs from the trainer, across processes, and hands the results to TRL's own metric store
(``self._metrics[mode]``), so they are averaged over the logging window, logged to every ``report_to``
backend and written to ``trainer_state.json`` exactly like TRL's ``reward`` or ``entropy``.

Where it hooks in (each override calls TRL's method and only *reads* what it returns):

- ``_generate``: keeps this process's completion texts and lengths of the generation batch.
- ``_calculate_rewards``: keeps the reward matrix, which TRL has already gathered across processes
  (rows in TRL's group layout: process 0's rows, then process 1's, ...).
- ``_generate_and_score_completions``: gathers the texts and lengths the same way (``gather_object``
  and ``gather`` concatenate in process order, as TRL's reward gather does), then the main process
  computes the ``explore/*`` and ``completions/*`` metrics of whole groups, even when a group of G
  generations was split across processes.
- ``_get_per_token_logps_and_entropies`` / ``_compute_loss``: keeps the per-token entropies TRL computes
  for its loss anyway (no extra forward pass) and the class of each completion token.
- ``log``: gathers the window's token entropies from every process and adds the ``entropy/*`` metrics
  before TRL averages and logs. Percentiles are of all tokens of the window, never of per-rank pieces.

Only the main process computes and logs metrics (as only it writes logs); every process takes part in
each gather. The probe runs as a callback at optimizer-step boundaries, outside TRL's ``step_time``. It
generates the way TRL's own transformers path does, inside ``trl.models.unwrap_model_for_generation``
(public) and ``trl.distributed.DistributedBackend.summon_full_params`` (TRL's internal helper for FSDP
v1), honouring ``args.ds3_gather_for_generation``.

Also here: :func:`tolerant_reward`, so that one bad completion shows up as a counted failure in the
log instead of a crashed run.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
from collections.abc import Callable, Sequence

import torch
from accelerate.utils import gather_object, pad_across_processes
from transformers import Trainer, TrainerCallback
from trl import GRPOTrainer
from trl.distributed import DistributedBackend
from trl.models import unwrap_model_for_generation

from cft_rl.evaluation import generate
from cft_rl.monitors import (
    ENTROPY_CLASSES,
    MonitorConfig,
    entropy_class,
    entropy_metrics,
    group_metrics,
    length_stats,
    probe_metrics,
)
from cft_rl.rewards import _as_text, check_batch, get_reward_func

logger = logging.getLogger(__name__)


def token_class_table(tokenizer, size: int | None = None) -> torch.Tensor:
    """Index into :data:`ENTROPY_CLASSES` of every token id, from the token's decoded text.

    Built once per trainer (about a second for a 150k vocabulary), so classifying a batch of completion
    tokens is one tensor lookup. ``size``: the model's vocabulary when it has more rows than the
    tokenizer has tokens (padding rows, which a policy can still sample); those count as ``format``.
    """
    index = {name: i for i, name in enumerate(ENTROPY_CLASSES)}
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    classes = [index[entropy_class(tokenizer.convert_tokens_to_string([t]) if t else "")] for t in tokens]
    classes += [index["format"]] * max(0, (size or 0) - len(classes))
    return torch.tensor(classes, dtype=torch.int8)


class MonitoredGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` that also logs ``explore/*``, ``entropy/*``, extra ``completions/*`` and ``probe/*``.

    Takes ``GRPOTrainer``'s arguments plus:

    Args:
        monitor: Settings of the metrics; its ``ks`` are checked against ``num_generations`` here.
        correct_reward: Name of the reward function whose value decides correctness for pass@k (a
            completion is correct when it is at least ``monitor.success_threshold``); None: the weighted
            total reward, as TRL logs it.
        probe: The fixed probe set, or None (no probe).
    """

    def __init__(
        self,
        *args,
        monitor: MonitorConfig | None = None,
        correct_reward: str | None = None,
        probe: Probe | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.monitor = monitor or MonitorConfig()
        self.monitor.resolve_ks(self.num_generations)
        if correct_reward is not None and correct_reward not in self.reward_func_names:
            raise ValueError(
                f"correct_reward={correct_reward!r} is not one of the reward functions {self.reward_func_names}"
            )
        self._correct_column = (
            None if correct_reward is None else self.reward_func_names.index(correct_reward)
        )
        vocab = getattr(self.model.config.get_text_config(), "vocab_size", None)
        self._token_classes = token_class_table(self._tokenizer, vocab).to(self.accelerator.device)
        self._rollout: dict = {}
        self._entropy_chunks: dict[str, list[torch.Tensor]] = {"train": [], "eval": []}
        self._capture_entropy = False
        self._last_entropies = None
        if probe is not None:
            self.add_callback(ProbeCallback(self, probe))

    # --- rollouts: texts, lengths and rewards of one generation batch ------------------------------

    def _generate(self, prompts: list):
        result = super()._generate(prompts)
        completion_ids, tool_mask, completions = result[1], result[2], result[3]
        self._rollout["texts"] = [_as_text(c) or "" for c in completions]
        # As TRL counts lengths: model-generated tokens only when tools inserted some.
        masks = tool_mask if tool_mask is not None else completion_ids
        self._rollout["lengths"] = [int(sum(m)) if tool_mask is not None else len(m) for m in masks]
        return result

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rollout["rewards"] = rewards_per_func  # already gathered by TRL: every process's rows
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        # Every process joins both gathers; only the main process, which logs, computes.
        texts = gather_object(self._rollout.pop("texts"))
        lengths = torch.tensor(self._rollout.pop("lengths"), device=self.accelerator.device)
        lengths = self.accelerator.gather(lengths).tolist()
        rewards_per_func = self._rollout.pop("rewards").float().cpu()
        if self.accelerator.is_main_process:
            for name, value in self._group_metrics(rewards_per_func, texts, lengths, group_size).items():
                self._metrics[mode][name].append(value)
        return output

    def _group_metrics(self, rewards_per_func, texts, lengths, group_size) -> dict[str, float]:
        """``explore/*`` and ``completions/*`` of one gathered generation batch."""
        # The total reward as TRL logs it: weighted sum of the functions that scored the row; NaN
        # (a failed row) when none did.
        weights = self.reward_weights.float().cpu()
        total = (rewards_per_func * weights).nansum(dim=1)
        total[torch.isnan(rewards_per_func).all(dim=1)] = math.nan
        column = total if self._correct_column is None else rewards_per_func[:, self._correct_column]
        correct = [None if math.isnan(v) else v >= self.monitor.success_threshold for v in column.tolist()]
        metrics = group_metrics(total.tolist(), texts, group_size, self.monitor, correct=correct)
        metrics.update(length_stats(lengths, group_size, correct))
        return metrics

    # --- token entropies: kept from TRL's loss pass, summarised at each log --------------------------

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._capture_entropy and entropies is not None:
            self._last_entropies = entropies.detach()
        return logps, entropies, aux_loss

    def _compute_loss(self, model, inputs):
        self._capture_entropy, self._last_entropies = True, None
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._capture_entropy = False
        if self._last_entropies is not None:
            self._record_entropies(inputs, self._last_entropies)
            self._last_entropies = None
        return loss

    def _record_entropies(self, inputs: dict, entropies: torch.Tensor) -> None:
        """Keep (entropy, class) of the tokens TRL's own ``entropy`` averages: generated completion tokens."""
        mask = inputs["completion_mask"].bool()
        if "tool_mask" in inputs:
            mask &= inputs["tool_mask"].bool()
        classes = self._token_classes[inputs["completion_ids"][mask]].float()
        chunk = torch.stack([entropies[mask].float(), classes], dim=1)
        self._entropy_chunks["train" if self.model.training else "eval"].append(chunk)

    def _gathered_entropies(self, mode: str) -> torch.Tensor:
        """(tokens, 2) entropy and class of every process's tokens since the last log; clears the buffer."""
        chunks, self._entropy_chunks[mode] = self._entropy_chunks[mode], []
        local = torch.cat(chunks) if chunks else torch.empty(0, 2, device=self.accelerator.device)
        if self.accelerator.num_processes == 1:
            return local
        # Processes hold different token counts: pad to the longest with NaN rows, gather, drop the pads.
        padded = pad_across_processes(local, dim=0, pad_index=math.nan)
        gathered = self.accelerator.gather(padded)
        return gathered[~torch.isnan(gathered[:, 1])]

    def _entropy_metrics(self, mode: str) -> dict[str, float]:
        """``entropy/*`` of the window's tokens of every process (on the main process; {} elsewhere)."""
        tokens = self._gathered_entropies(mode).cpu()
        if not self.accelerator.is_main_process or not len(tokens):
            return {}
        classes = tokens[:, 1].to(torch.int64).tolist()
        return entropy_metrics(tokens[:, 0].tolist(), classes, self.monitor)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        # Trainer calls `log` on every process at the same points (right after its own loss gather),
        # so the gather inside is matched on every rank.
        for name, value in self._entropy_metrics(mode).items():
            self._metrics[mode][name].append(value)
        super().log(logs, start_time)

    def log_entry(self, logs: dict[str, float]) -> None:
        """Log ``logs`` as an entry of their own, outside TRL's metric window and completions table."""
        Trainer.log(self, logs)


# --- rewards ---------------------------------------------------------------------------------------


def tolerant_reward(func: Callable, name: str | None = None) -> Callable:
    """``func`` as a TRL reward that never stops training on a bad completion.

    A NaN or infinite reward becomes None (TRL: "not scored"). If the batch call raises, each
    completion is scored on its own and those that raise become None. Each call logs the fraction of
    completions that failed as ``rewards/<name>/frac_failed`` (0.0 included, so the curve has no holes).
    ``log_extra`` columns are buffered and passed on only once complete, so a failure never misaligns
    TRL's completions table. A wrong number of rewards is still an error: that is a bug, not a bad row.
    """
    name = name or getattr(func, "__name__", type(func).__name__)

    @functools.wraps(func)
    def reward(prompts=None, completions=None, log_extra=None, log_metric=None, **kwargs) -> list:
        n = len(completions)
        values, extras = _score_all(func, prompts, completions, kwargs, n)
        if len(values) != n:
            raise ValueError(f"reward {name!r} returned {len(values)} rewards for {n} completions")
        failed = [v is None or not _finite(v) for v in values]
        if log_extra is not None:
            for column, column_values in extras.items():
                log_extra(column, column_values)
        if log_metric is not None:
            log_metric(f"rewards/{name}/frac_failed", sum(failed) / max(1, n))
        return [None if bad else float(v) for v, bad in zip(values, failed, strict=True)]

    reward.__name__ = name
    return reward


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _score_all(func, prompts, completions, kwargs, n) -> tuple[list, dict]:
    """``func`` on the whole batch; if it raises, on each row alone (a failed row scores None)."""
    extras: dict[str, list] = {}
    try:
        values = list(func(prompts=prompts, completions=completions, log_extra=_collect(extras), **kwargs))
        return values, extras
    except Exception as exc:  # any error of user code: isolate the rows that cause it
        logger.warning("reward %s failed on a batch (%r); scoring its %d rows one by one", func, exc, n)
    values, rows = [], []
    for i in range(n):
        row_extras: dict[str, list] = {}
        row_kwargs = {k: v[i : i + 1] if _per_row(v, n) else v for k, v in kwargs.items()}
        try:
            out = func(
                prompts=None if prompts is None else prompts[i : i + 1],
                completions=completions[i : i + 1],
                log_extra=_collect(row_extras),
                **row_kwargs,
            )
            values.append(list(out)[0])
        except Exception:
            values.append(None)
            row_extras = {}
        rows.append(row_extras)
    columns = {column for row in rows for column in row}
    extras = {c: [row[c][0] if row.get(c) else None for row in rows] for c in sorted(columns)}
    return values, extras


def _collect(store: dict[str, list]) -> Callable[[str, list], None]:
    return lambda column, values: store.setdefault(column, []).extend(values)


def _per_row(value, n: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == n


def build_reward_funcs(names: Sequence[str]) -> list[Callable]:
    """The rewards of ``reward_funcs``, each made failure-tolerant; an unknown name names the field."""
    funcs = []
    for name in names:
        try:
            func = get_reward_func(name)
        except ValueError as exc:
            raise ValueError(f"reward_funcs: {exc}") from None
        if inspect.iscoroutinefunction(func):
            funcs.append(func)  # TRL awaits these; they keep TRL's own None handling
        else:
            funcs.append(tolerant_reward(func, name.replace(":", ".").rpartition(".")[2]))
    return funcs


# --- the fixed probe set ---------------------------------------------------------------------------


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
