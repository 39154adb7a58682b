"""A dataset into selective-SFT rows: tokenised as annotated, weighed by a strategy, counted, dropped.

:func:`prepare_dataset` runs a strategy of :mod:`cft_rl.sft.selection` over a dataset: it tokenises each
row the way the annotator did, weighs its tokens, and drops the rows that select no token. Such a row
carries no loss; it is counted and reported (by id) instead of silently taking a batch slot, because it
usually means the annotation or the answer delimiter found nothing in it. :func:`truncate_prepared` cuts
a dataset that was prepared beforehand, all its columns alike.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cft_rl.data.prompts import encode_example
from cft_rl.sft import SelectionError
from cft_rl.sft.entropy import shared_entropies
from cft_rl.sft.selection import (
    RowSelection,
    check_strategy,
    needs_annotation,
    require_spans_column,
    select_weights,
)

logger = logging.getLogger(__name__)


# --- dataset-level accounting ----------------------------------------------------------------------


@dataclass
class SelectionCounter:
    """Tokens and rows seen by a selection pass, and the rows that selected no token (dropped)."""

    strategy: str
    rows: int = 0
    completion_tokens: int = 0
    selected_tokens: int = 0
    empty_rows: list[str] = field(default_factory=list)

    def add(self, row_id: str, weights: Sequence[float]) -> bool:
        """Count one row; True when it selects a token (keep it), False when it must be dropped."""
        self.rows += 1
        self.completion_tokens += len(weights)
        selected = sum(1 for w in weights if w > 0)
        self.selected_tokens += selected
        if selected == 0:
            self.empty_rows.append(row_id)
        return selected > 0

    def summary(self) -> dict:
        fraction = self.selected_tokens / self.completion_tokens if self.completion_tokens else math.nan
        return {
            "strategy": self.strategy,
            "rows": self.rows,
            "rows_kept": self.rows - len(self.empty_rows),
            "rows_dropped_no_selected_token": len(self.empty_rows),
            "dropped_row_ids": self.empty_rows[:20],
            "completion_tokens": self.completion_tokens,
            "selected_tokens": self.selected_tokens,
            "selected_fraction": fraction,
        }


# --- a whole dataset: tokenise, weigh, count, drop -------------------------------------------------


def prepare_dataset(dataset, tokenizer, args, scoring_model=None, device=None):
    """``(prepared dataset, selection summary)``: rows tokenised, weighted by ``args.strategy``.

    ``args`` is a :class:`cft_rl.sft.trainer.SelectiveSFTConfig` (its selection fields, ``max_length`` and
    ``truncation_mode``). Rows are tokenised as the annotator tokenised them
    (:func:`cft_rl.annotate.rule.encode_example`), so an annotated position is a trained position.

    ``scoring_model`` (the base model, or a function that loads it) is needed for ``entropy`` only:
    it scores on ``device`` (default: where the model is), on the main process only, and the scores
    are sent to the other processes (:func:`shared_entropies`). Rows longer than ``args.max_length``
    are truncated per ``args.truncation_mode``; rows left with no selected token are dropped and
    listed in the summary.
    """
    import datasets

    strategy = check_strategy(args.strategy)  # a schedule must be split into stages by the caller
    columns = dataset.column_names
    for needed in ("prompt", args.solution_field):
        if needed not in columns:
            raise SelectionError(f"the SFT dataset needs a {needed!r} column; it has {sorted(columns)}")
    if needs_annotation(strategy, args.selection_fraction):
        require_spans_column(columns, args.spans_field, strategy)
    encoded = [_encode_row(tokenizer, row, i, args) for i, row in enumerate(dataset)]
    summary = {}
    if strategy == "entropy":
        start = time.perf_counter()

        scores = shared_entropies(scoring_model, encoded, args.entropy_batch_size, device)
        for row, entropies in zip(encoded, scores, strict=True):
            row["selection"].entropies = entropies
        summary["entropy_scoring_seconds"] = round(time.perf_counter() - start, 3)
    counter, rows, truncated = SelectionCounter(strategy), [], 0
    for row in encoded:
        weights = select_weights(
            strategy, row["selection"], args.answer_delimiter, args.selection_seed, args.selection_fraction
        )
        prepared = _prepared_row(row["prompt_ids"], row["completion_ids"], weights, args)
        truncated += len(prepared["input_ids"]) < len(row["prompt_ids"]) + len(row["completion_ids"])
        if counter.add(row["selection"].row_id, _completion_weights(prepared)):
            rows.append(prepared)
    summary = {**counter.summary(), "rows_truncated": truncated, **summary}
    if counter.empty_rows:
        logger.warning(
            "strategy %r selects no token in %d of %d rows; they are dropped from training (first ids: %s)",
            strategy,
            len(counter.empty_rows),
            counter.rows,
            counter.empty_rows[:5],
        )
    if not rows:
        raise SelectionError(f"strategy {strategy!r} selects no token in any of the {counter.rows} rows")
    return datasets.Dataset.from_list(rows), summary


def _encode_row(tokenizer, row: dict, index: int, args) -> dict:
    row_id = str(row.get("id", index))
    text = row[args.solution_field]
    if not isinstance(text, str) or not text:
        raise SelectionError(f"row {row_id}: empty or missing {args.solution_field!r}")
    prompt_ids, completion_ids, offsets = encode_example(tokenizer, row["prompt"], text)
    spans = row.get(args.spans_field)
    return {
        "prompt_ids": prompt_ids,
        "completion_ids": completion_ids,
        "selection": RowSelection(row_id=row_id, text=text, offsets=offsets, spans=spans),
    }


def _prepared_row(prompt_ids, completion_ids, weights, args) -> dict:
    """One training row, cut to ``max_length`` the way TRL would cut it (all columns alike)."""
    n = len(prompt_ids)
    row = {
        "input_ids": prompt_ids + completion_ids,
        "labels": [-100] * n + [t if w > 0 else -100 for t, w in zip(completion_ids, weights, strict=True)],
        "completion_mask": [0] * n + [1] * len(completion_ids),
        "loss_weights": [0.0] * n + list(weights),
    }
    if args.max_length is not None and len(row["input_ids"]) > args.max_length:
        keep = _kept(args)
        row = {key: values[keep] for key, values in row.items()}
    return row


def _kept(args) -> slice:
    """The positions a row longer than ``args.max_length`` keeps, per ``args.truncation_mode``."""
    if args.truncation_mode == "keep_start":
        return slice(None, args.max_length)
    if args.truncation_mode == "keep_end":
        return slice(-args.max_length, None)
    raise SelectionError(f"truncation_mode must be 'keep_start' or 'keep_end'; got {args.truncation_mode!r}")


PREPARED_COLUMNS = ("input_ids", "labels", "completion_mask", "loss_weights")


def truncate_prepared(dataset, args):
    """An already prepared dataset (``loss_weights`` given) cut to ``args.max_length``, all columns alike.

    TRL's own truncation cuts ``input_ids`` and ``labels`` only: left to it, a longer row's weights and
    completion mask would run past the kept tokens and, cut at the start, weigh the wrong ones.
    """
    columns = [c for c in PREPARED_COLUMNS if c in dataset.column_names]
    for needed in ("input_ids", "completion_mask"):
        if needed not in columns:
            raise SelectionError(
                f"a dataset with loss_weights is taken as prepared and needs {needed!r}; it has "
                f"{sorted(dataset.column_names)}"
            )

    def cut(row, index):
        lengths = {c: len(row[c]) for c in columns}
        if len(set(lengths.values())) > 1:
            raise SelectionError(
                f"row {row.get('id', index)}: prepared columns differ in length {lengths}; they must "
                "hold one entry per token"
            )
        if args.max_length is None or lengths["input_ids"] <= args.max_length:
            return {}
        keep = _kept(args)
        return {c: row[c][keep] for c in columns}

    return dataset.map(cut, with_indices=True, desc="Truncating the prepared rows")


def _completion_weights(row: dict) -> list[float]:
    # Position 0 is never predicted (the loss is on next tokens), so its weight cannot count.
    return [w for w, c in zip(row["loss_weights"][1:], row["completion_mask"][1:], strict=True) if c]
