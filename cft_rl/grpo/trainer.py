"""TRL's ``GRPOTrainer`` with the exploration and entropy monitors, and the fixed probe set, wired in.

The metrics themselves are the pure functions of :mod:`cft_rl.grpo.metrics`; this module only collects their
inputs from the trainer, across processes, and hands the results to TRL's own metric store
(``self._metrics[mode]``), so they are averaged over the logging window, logged to every ``report_to``
backend and written to ``trainer_state.json`` exactly like TRL's ``reward`` or ``entropy``.

Only the main process computes and logs metrics (as only it writes logs); every process takes part in
each gather. The probe (:mod:`cft_rl.grpo.probe`) runs as a callback at optimizer-step boundaries,
outside TRL's ``step_time``.

The private surface on TRL
--------------------------
Every underscore method or attribute of TRL's or transformers' classes, and every TRL internal, that
``cft_rl`` overrides, calls or reads, package-wide, in one list: each with its signature as we rely on it
(``...``: further parameters that we pass through or leave alone) and why. ``tests/test_trl_hooks.py``
reads this list and checks every entry against the installed TRL and transformers, so an upgrade that
renames or reshapes one fails there, loudly, instead of silently producing wrong metrics. Overrides call
TRL's method and only *read* what it returns.

Here, in :class:`MonitoredGRPOTrainer`:

- ``trl.GRPOTrainer._calculate_rewards(self, inputs, prompts, completions, completion_ids_list)``:
  override. Keeps this process's completion texts and token counts, and the reward matrix, which TRL
  returns already gathered across processes (rows in TRL's group layout: process 0's rows, then
  process 1's, ...).
- ``trl.GRPOTrainer._generate_and_score_completions(self, inputs)``: override. After TRL's, gathers the
  texts and lengths the same way (``gather_object`` and ``gather`` concatenate in process order, as
  TRL's reward gather does; lengths count model tokens only, from the returned batch's ``tool_mask``,
  as TRL counts them), then the main process computes the ``explore/*`` and ``completions/*`` metrics
  of whole groups, even when a group of G generations was split across processes.
- ``trl.GRPOTrainer._get_per_token_logps_and_entropies(self, model, input_ids, attention_mask,
  logits_to_keep, ...)``: override, passing everything through. Keeps the entropies of its
  ``(logps, entropies, aux_loss)`` result, which TRL computes for its loss anyway (no extra forward).
- ``trl.GRPOTrainer._compute_loss(self, model, inputs)``: override. Marks its pass as the one whose
  entropies count, and classes the tokens TRL's own ``entropy`` averages: ``inputs["completion_ids"]``
  under ``completion_mask`` (and ``tool_mask``).
- ``trl.GRPOTrainer._metrics``: TRL's metric store, ``{"train"|"eval": {name: [values]}}``, averaged
  over the logging window when TRL logs. The monitors append to it here and in ``log``, which first
  gathers the window's token entropies from every process (percentiles are of all the window's tokens,
  never of per-rank pieces); the probe appends from its callback.
- ``trl.GRPOTrainer._tokenizer``: the text tokenizer of ``processing_class``. Builds the token-class
  table; the probe samples with it.

Elsewhere:

- ``trl.models.unwrap_model_for_generation(model, accelerator, gather_deepspeed3_params=True,
  generation_kwargs=None, gradient_checkpointing_kwargs=None)`` (:mod:`cft_rl.grpo.probe`): documented
  by TRL but not exported at its top level; the probe generates inside it, with TRL's settings by keyword.
- ``trl.distributed.DistributedBackend(accelerator)`` and
  ``trl.distributed.DistributedBackend.summon_full_params(self, module, **kwargs)``
  (:mod:`cft_rl.grpo.probe`): TRL's internal helper, FSDP v1 full parameters around the probe's
  ``generate`` (a no-op elsewhere), as TRL's own transformers generation path does.
- ``trl.SFTTrainer._set_signature_columns_if_needed(self)`` (:mod:`cft_rl.sft.trainer`): override.
  Adds ``loss_weights`` and ``completion_mask`` to ``transformers.Trainer._signature_columns``, else
  ``remove_unused_columns`` strips them before the collator sees them.
- ``trl.SFTTrainer._metrics`` (:mod:`cft_rl.sft.trainer`): the same store as GRPO's; ``selected/*`` and
  ``completion/nll`` go there.
- ``trl.trainer.sft_trainer.DataCollatorForLanguageModeling.torch_call(self, examples)``
  (:mod:`cft_rl.sft.trainer`): TRL's collator (not exported at the top level), subclassed to pad two
  more columns, and rebuilt from ``dataclasses.asdict`` of the one TRL built, so it keeps its settings.
- ``trl.trainer.utils.pad(tensors, padding_value=0, padding_side="right", pad_to_multiple_of=None)``
  (:mod:`cft_rl.sft.trainer`): pads those columns exactly as TRL pads ``input_ids``.
- ``trl.trainer.utils.FusedCausalLMOutput.log_probs``, ``trl.trainer.utils.FusedCausalLMOutput.entropy``
  and ``trl.trainer.utils.FusedCausalLMOutput.label_mask`` (:mod:`cft_rl.sft.trainer`): what TRL's fused
  forward (``fused_lm_head=True``) returns inside ``SFTTrainer.compute_loss``; the selective loss and
  its metrics read them from the first output of the model call.
- ``transformers.PreTrainedConfig._attn_implementation`` (:mod:`cft_rl.annotate.branches`): swapped to
  the branch attention around a decode and always restored, as the attention modules read it per call.

Rewards come wrapped by :func:`cft_rl.verify.rewards.tolerant_reward`, so that one bad completion shows
up as a counted failure in the log instead of a crashed run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from accelerate.utils import gather_object, pad_across_processes
from transformers import Trainer
from trl import GRPOTrainer

from cft_rl.grpo.metrics import MonitorConfig, entropy_metrics, group_metrics, length_stats
from cft_rl.grpo.probe import Probe, ProbeCallback
from cft_rl.token_classes import token_class_table
from cft_rl.verify.verifier import _as_text

logger = logging.getLogger(__name__)


def model_token_counts(
    lengths: Sequence[int], tool_mask: torch.Tensor | None, truncated_masked: bool = False
) -> list[int]:
    """Each completion's length as TRL counts it: only model-generated tokens when a tool mask marks
    others (tool results, or a ``rollout_func``'s ``env_mask``).

    ``lengths``: the completions' token counts; ``tool_mask``: TRL's padded mask, 0 on tokens the model
    did not generate. ``truncated_masked``: TRL's ``mask_truncated_completions``, which zeroes a truncated
    row's whole tool mask; such a row counts all its tokens, as TRL no longer holds which were the model's.
    """
    if tool_mask is None:
        return list(lengths)
    counts = [int(tool_mask[i, :n].sum()) for i, n in enumerate(lengths)]
    if truncated_masked:
        counts = [count or n for count, n in zip(counts, lengths, strict=True)]
    return counts


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

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rollout = {
            "texts": [_as_text(c) or "" for c in completions],  # this process's rows
            "lengths": [len(ids) for ids in completion_ids_list],
            "rewards": rewards_per_func,  # already gathered by TRL: every process's rows
        }
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        # Every process joins both gathers; only the main process, which logs, computes.
        texts = gather_object(self._rollout.pop("texts"))
        lengths = self._rollout.pop("lengths")
        lengths = model_token_counts(lengths, output.get("tool_mask"), self.mask_truncated_completions)
        lengths = torch.tensor(lengths, device=self.accelerator.device)
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
