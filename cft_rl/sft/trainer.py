"""Token-selective SFT on TRL: CFT, SFTKey, numeric-only, DFT and the controls, with LoRA.

The warm-start stage. Each strategy of :mod:`cft_rl.sft.selection` picks the completion tokens that carry
the SFT loss; everything else is TRL's ``SFTTrainer``, hooked at its narrowest points:

- **data**: rows are tokenised exactly as the annotator tokenised them
  (:func:`cft_rl.data.prompts.encode_example`: chat-rendered prompt, then ``solution + eos``), so an
  annotated position is a trained position. Each prepared row holds ``input_ids``, ``labels`` (the
  token id where selected, -100 elsewhere), ``completion_mask`` and ``loss_weights``. Rows that select
  no token are dropped and reported (``selection.json``, the log), never trained as zero.
- **collator**: TRL's own, re-typed to :class:`SelectiveDataCollator`, which pads the two extra columns.
- **loss**: :meth:`SelectiveSFTTrainer.compute_loss` runs TRL's ``compute_loss`` with the labels
  widened to the whole completion (its fused log-prob head then scores every completion token, and
  its metrics ``entropy``/``mean_token_accuracy`` cover the completion), keeps the per-token
  log-probabilities, and returns the selective loss of :mod:`cft_rl.sft.loss` in place of TRL's.

Normalisation. ``labels`` hold the *selected* tokens, so ``Trainer`` counts ``num_items_in_batch``
over the selected tokens of the whole gradient-accumulation window and, with
``average_tokens_across_devices`` (the default), of every device. The loss is the sum over this
micro-batch's selected tokens divided by that count, times the number of processes (DDP averages
gradients): the paper's Eq. 8 mean over selected tokens, identical for any split of the batch across
steps and devices. The trainer counts it for any model, also one whose forward takes no loss kwargs
(for which ``Trainer`` would otherwise count nothing and average per-micro-batch means). With ``strategy="full"`` the selected tokens are TRL's completion labels and the
loss is TRL's, term for term.

Metrics, logged next to TRL's: ``selected/fraction``, ``selected/nll``, ``selected/entropy`` and
``completion/nll`` (the NLL of every completion token, evaluated, not trained).

Checkpoints: ``output_dir`` holds the full model, or with ``use_peft`` the LoRA adapter
(``adapter_config.json``); :func:`cft_rl.models.load_model` loads either for the GRPO stage.

The private parts of TRL this relies on are listed, with the rest, in :mod:`cft_rl.grpo.trainer`.

Not supported (each refused with an error): packing, label smoothing, ``compute_loss_func``, MoE router
auxiliary losses, context/sequence parallelism.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field

import torch
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
from trl.trainer.utils import pad

from cft_rl.models import load_model, load_tokenizer
from cft_rl.sft import SelectionError
from cft_rl.sft.loss import selection_metrics, selection_sums, selective_loss
from cft_rl.sft.prepare import prepare_dataset, truncate_prepared
from cft_rl.sft.selection import STRATEGIES, check_strategy

logger = logging.getLogger(__name__)

SCHEDULES = ("sftkey",)
CARRIED_COLUMNS = ("loss_weights", "completion_mask")


@dataclass
class SelectiveSFTConfig(SFTConfig):
    """TRL's ``SFTConfig`` plus the token selection. Every other setting means what it means in TRL.

    Parameters:
        strategy: Which completion tokens carry the loss: ``full``, ``critical``, ``numeric``,
            ``answer``, ``random``, ``entropy`` (see :mod:`cft_rl.sft.selection`), or the schedule ``sftkey``:
            stage 1 ``full`` for the configured length, then stage 2 ``answer``.
        solution_field: Column of the completion text (the annotator's ``solution``). Prompts are the
            ``prompt`` column's chat messages.
        spans_field: Column of ``[start, end)`` character spans of the critical tokens in the solution,
            as ``cft-rl annotate`` writes them.
        answer_delimiter: For ``answer``: None selects the last ``\\boxed{}`` content; a string (e.g.
            ``"####"``) selects the rest of the line after its last occurrence.
        selection_seed: Seed of the ``random`` control (the draw is seeded per row id).
        selection_fraction: For ``random``/``entropy``: None matches each row's critical-token count
            (needs annotations); a number in [0, 1] selects that fraction of each row's text tokens.
        entropy_batch_size: Rows per forward pass when scoring entropies for ``entropy``.
        sftkey_stage2_epochs: Length of the SFTKey answer stage, in epochs.
        sftkey_stage2_max_steps: If > 0, length of the answer stage in steps (overrides the epochs).
        sftkey_stage2_learning_rate: Learning rate of the answer stage; None: ``learning_rate``.

    DFT (arXiv 2508.05629) is TRL's ``loss_type="dft"``; here it combines with any strategy. LoRA is
    TRL's ``peft_config`` (``use_peft`` and ``lora_*`` of TRL's ``ModelConfig`` on the command line).
    """

    strategy: str = field(default="full", metadata={"help": f"One of {', '.join(STRATEGIES + SCHEDULES)}."})
    solution_field: str = field(default="solution", metadata={"help": "Column of the completion text."})
    spans_field: str = field(default="critical_spans", metadata={"help": "Column of critical char spans."})
    answer_delimiter: str | None = field(
        default=None, metadata={"help": "answer strategy: None for the last \\boxed{}, else e.g. '####'."}
    )
    selection_seed: int = field(default=0, metadata={"help": "Seed of the random control."})
    selection_fraction: float | None = field(
        default=None, metadata={"help": "random/entropy: fraction of text tokens; None matches critical."}
    )
    entropy_batch_size: int = field(default=16, metadata={"help": "Rows per entropy-scoring forward."})
    sftkey_stage2_epochs: float = field(default=1.0, metadata={"help": "SFTKey answer stage, epochs."})
    sftkey_stage2_max_steps: int = field(default=-1, metadata={"help": "SFTKey answer stage, steps (>0)."})
    sftkey_stage2_learning_rate: float | None = field(
        default=None, metadata={"help": "SFTKey answer stage learning rate; None: learning_rate."}
    )

    def __post_init__(self):
        check_strategy(self.strategy, STRATEGIES + SCHEDULES)
        if self.selection_fraction is not None and not 0 <= self.selection_fraction <= 1:
            raise SelectionError(f"selection_fraction must be in [0, 1]; got {self.selection_fraction}")
        if self.packing:
            raise SelectionError(
                "packing is not supported: it would drop the per-token weights; set packing=False"
            )
        if self.entropy_batch_size < 1:
            raise SelectionError(f"entropy_batch_size must be at least 1; got {self.entropy_batch_size}")
        super().__post_init__()


# --- collator and trainer --------------------------------------------------------------------------


@dataclass
class SelectiveDataCollator(DataCollatorForLanguageModeling):
    """TRL's language-modeling collator that also pads ``loss_weights`` and ``completion_mask``."""

    def torch_call(self, examples: list[dict]) -> dict:
        batch = super().torch_call(examples)
        for key, dtype in (("loss_weights", torch.float32), ("completion_mask", torch.bool)):
            rows = [torch.tensor(example[key], dtype=dtype) for example in examples]
            if self.padding_free:  # one flat row, as TRL flattens input_ids and labels
                rows = [torch.cat(rows)]
            batch[key] = pad(
                rows, padding_value=0, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of
            )
        return batch


class _FirstOutput:
    """Calls the model and keeps its first output (TRL's fused forward, with per-token log-probs)."""

    def __init__(self, model):
        self.model, self.output = model, None

    def __call__(self, *args, **kwargs):
        output = self.model(*args, **kwargs)
        if self.output is None:
            self.output = output
        return output


class SelectiveSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose loss is on the tokens ``args.strategy`` selects.

    Takes the arguments of ``SFTTrainer``. Datasets in the annotator's shape (``prompt``, the solution
    column, the spans column) are prepared here; datasets with a ``loss_weights`` column are taken as
    already prepared (and cut to ``max_length`` with all their columns, which TRL would not do).
    ``selection`` holds the preparation summary of each dataset.
    """

    def __init__(self, model, args: SelectiveSFTConfig, train_dataset=None, eval_dataset=None, **kwargs):
        for name in ("compute_loss_func", "formatting_func"):
            if kwargs.get(name) is not None:
                raise SelectionError(
                    f"{name} is not supported by selective SFT: the loss and the rows are ours"
                )
        if args.label_smoothing_factor:
            raise SelectionError(
                "label smoothing is not supported by selective SFT; set label_smoothing_factor=0"
            )
        if args.strategy in SCHEDULES:
            raise SelectionError(
                f"{args.strategy!r} is a two-stage schedule, not one trainer's strategy: run it with "
                "cft_rl.sft.run.train_sft or `cft-rl sft`"
            )
        tokenizer = kwargs.get("processing_class") or _load_tokenizer(model)
        kwargs["processing_class"] = tokenizer
        self.selection = {}
        train_dataset = self._prepared(train_dataset, "train", tokenizer, args, model)
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._prepared(d, k, tokenizer, args, model) for k, d in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = self._prepared(eval_dataset, "eval", tokenizer, args, model)
        super().__init__(model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)
        if self.aux_loss_enabled:
            raise SelectionError("MoE router auxiliary losses are not supported; set router_aux_loss_coef=0")
        parallel = self.accelerator.parallelism_config
        if parallel is not None and (parallel.cp_enabled or parallel.sp_enabled):
            # These shard the sequence and pass pre-shifted labels, which the weights would have to follow.
            raise SelectionError("context and sequence parallelism are not supported by selective SFT")
        if kwargs.get("data_collator") is None:
            # TRL built its collator from the config (pad token, padding-free...); keep every setting.
            self.data_collator = SelectiveDataCollator(**dataclasses.asdict(self.data_collator))
        # The selective loss is ours: it divides by `num_items_in_batch` whatever the model's forward
        # accepts. Trainer counts it over the accumulation window only for a model that "accepts loss
        # kwargs"; for one that does not (`accepts_loss_kwargs = False`, no **kwargs) it would pass None
        # and divide each micro-batch's own mean by the accumulation steps: a mean of means.
        self.model_accepts_loss_kwargs = True

    def _prepared(self, dataset, name, tokenizer, args, model):
        if dataset is None:
            return dataset
        if "loss_weights" in dataset.column_names:
            return truncate_prepared(dataset, args)  # TRL would cut input_ids and labels only
        scoring = None
        if args.strategy == "entropy":
            scoring = model if not isinstance(model, str) else lambda: _scoring_model(model, args)
        dataset, self.selection[name] = prepare_dataset(dataset, tokenizer, args, scoring, args.device)
        logger.info("selection on %s: %s", name, json.dumps(self.selection[name]))
        return dataset

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        # Without this, `remove_unused_columns` would strip the weights before the collator sees them.
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *CARRIED_COLUMNS]))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        weights = inputs.pop("loss_weights")[:, 1:]  # aligned with the next-token log-probs
        completion = inputs.pop("completion_mask")
        # Score every completion token: TRL's forward then computes log-probs, entropy and accuracy for
        # the whole completion. Its own loss (normalised over these labels) is discarded.
        inputs["labels"] = inputs["input_ids"].masked_fill(~completion, -100)
        recorder = _FirstOutput(model)
        result = super().compute_loss(
            recorder, inputs, return_outputs=return_outputs, num_items_in_batch=None
        )
        outputs = recorder.output
        loss = selective_loss(
            outputs.log_probs, weights, num_items_in_batch, dft=self.args.loss_type == "dft"
        )
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # `num_items_in_batch` counts every rank's tokens and DDP averages gradients across ranks.
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        self._record_selection(outputs, weights)
        return (loss, result[1]) if return_outputs else loss

    def _record_selection(self, outputs, weights) -> None:
        mode = "train" if self.model.training else "eval"
        sums = selection_sums(outputs.log_probs, outputs.entropy, weights, outputs.label_mask)
        sums = self.accelerator.reduce(sums, reduction="sum")  # sums, then ratios: a token-weighted mean
        for key, value in selection_metrics(sums).items():
            self._metrics[mode][key].append(value)


def _load_tokenizer(model):
    return load_tokenizer(model if isinstance(model, str) else model.config.name_or_path)


def _scoring_model(name: str, args: SelectiveSFTConfig):
    """The base model of ``entropy``, loaded straight to the trainer's device (main process only)."""
    model = load_model(name, **(args.model_init_kwargs or {}))
    return model if getattr(model, "hf_device_map", None) else model.to(args.device)
