"""Which completion tokens carry the SFT loss: the selection strategies and their pass over a dataset.

Every mask-type strategy is defined over **character spans of the completion text** and mapped to
tokens through the tokenizer's offset mapping (``offsets[t] = (char_start, char_end)`` of completion
token ``t``, as :func:`cft_rl.data.prompts.encode_example` returns them). An annotation made with one
tokenizer therefore transfers to any other. A token is selected when its characters overlap a
selected span; tokens that cover no text (the final eos) are never selected by a span.

Strategies (``STRATEGIES``), each giving a weight in {0, 1} per completion token:

- ``full``: every completion token, the final eos included. Plain SFT, the baseline.
- ``critical``: the annotated critical tokens (CFT): the row's ``critical_spans`` from ``cft-rl annotate``.
- ``numeric``: tokens of numbers (``\\d+(.\\d+)?`` in the text): the paper's ablation.
- ``answer``: the final answer: the content of the last ``\\boxed{}``, or, with a delimiter, the
  rest of the line after its last occurrence (``"####"`` for GSM8K). SFTKey's stage 2.
- ``random``: ``k`` text tokens drawn at random, seeded per row id (so the draw does not depend on
  row order or sharding). Control for *which* tokens against *how many*.
- ``entropy``: the ``k`` text tokens with the highest entropy under the base model (the paper's baseline).

For ``random`` and ``entropy``, ``k`` is the row's own critical-token count (the same number of tokens
as ``critical`` in each example: the controls differ from CFT only in position), or, when a
``fraction`` is given, ``round(fraction * text tokens)``. Candidates are the text tokens, the ones a
critical span can select, so no control can pick the eos that CFT never trains.

The strategies are pure functions of a row's text, offsets and spans. :func:`prepare_dataset` runs
them over a dataset: it tokenises each row the way the annotator did, weighs its tokens, and drops the
rows that select no token. Such a row carries no loss; it is counted and reported (by id) instead of
silently taking a batch slot, because it usually means the annotation or the answer delimiter found
nothing in it.
"""

from __future__ import annotations

import bisect
import logging
import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets

from cft_rl.answers import last_boxed_span
from cft_rl.data.prompts import encode_example
from cft_rl.sft import SelectionError
from cft_rl.sft.entropy import shared_entropies

STRATEGIES = ("full", "critical", "numeric", "answer", "random", "entropy")
# Strategies whose token count follows the critical annotation unless a fraction is given.
COUNT_MATCHED = ("random", "entropy")

_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")

Span = tuple[int, int]

logger = logging.getLogger(__name__)


def check_strategy(name: str, valid: Sequence[str] = STRATEGIES) -> str:
    """``name`` if it is one of ``valid``; otherwise an error that lists the valid names."""
    if name not in valid:
        raise SelectionError(f"unknown strategy {name!r}; valid strategies: {', '.join(valid)}")
    return name


def needs_annotation(strategy: str, fraction: float | None) -> bool:
    """Whether ``strategy`` reads the critical spans (``critical``, or a count-matched control)."""
    return strategy == "critical" or (strategy in COUNT_MATCHED and fraction is None)


def require_spans_column(columns: Sequence[str], spans_field: str, strategy: str) -> None:
    """Raise, saying to run the annotator, when ``strategy`` needs spans the dataset lacks."""
    if spans_field not in columns:
        raise SelectionError(
            f"strategy {strategy!r} needs the {spans_field!r} column of critical-token annotations, and the "
            f"dataset has only {sorted(columns)}. Run `cft-rl annotate --model BASE --dataset DATA "
            f"--out DIR` first and train on DIR/dataset"
            + ("" if strategy == "critical" else ", or set selection_fraction to choose a fixed fraction")
            + "."
        )


# --- spans -----------------------------------------------------------------------------------------


def validate_spans(spans, text: str, row_id: str) -> list[Span]:
    """The spans as ``(start, end)`` int pairs, each inside ``text``; else an error naming the row."""
    if spans is None:
        raise SelectionError(f"row {row_id}: no critical spans (None); annotate this row or drop it")
    checked = []
    for span in spans:
        if len(span) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in span):
            raise SelectionError(f"row {row_id}: span {span!r} is not a [start, end) pair of integers")
        start, end = span
        if not 0 <= start <= end <= len(text):
            raise SelectionError(
                f"row {row_id}: span [{start}, {end}) lies outside its text (length {len(text)}); "
                "the annotation belongs to another text: re-run `cft-rl annotate` on this dataset"
            )
        checked.append((start, end))
    return checked


def numeric_spans(text: str) -> list[Span]:
    """Character spans of the numbers in ``text`` (digits, with an optional decimal part)."""
    return [m.span() for m in _NUMBER_RE.finditer(text)]


def answer_spans(text: str, delimiter: str | None = None) -> list[Span]:
    """The final-answer span: the last ``\\boxed{}`` content, or the line after the last ``delimiter``.

    Empty when the text states no answer that way (the row then selects nothing and is reported).
    """
    if delimiter is None:
        span = last_boxed_span(text)
        return [] if span is None or span[0] == span[1] else [span]
    at = text.rfind(delimiter)
    if at < 0:
        return []
    start = at + len(delimiter)
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    # Strip the spaces around the answer so that only its own characters select tokens.
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return [(start, end)] if start < end else []


def tokens_in_spans(offsets: Sequence[Span], spans: Sequence[Span]) -> list[bool]:
    """Per token: does its character span overlap any of ``spans``? Empty tokens never do."""
    merged = _union(spans)
    starts = [start for start, _ in merged]
    flags = []
    for start, end in offsets:
        # The last span starting before the token ends is the only one that can reach into it: the
        # spans are disjoint, so every earlier one ends before that one starts.
        i = bisect.bisect_left(starts, end) - 1
        flags.append(end > start and i >= 0 and merged[i][1] > start)
    return flags


def _union(spans: Sequence[Span]) -> list[Span]:
    """Sorted, disjoint spans covering the same characters as ``spans`` (empty ones dropped)."""
    merged: list[Span] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


# --- count-matched controls ------------------------------------------------------------------------


def text_tokens(offsets: Sequence[Span]) -> list[int]:
    """Positions of the tokens that cover text: the candidates of ``random`` and ``entropy``."""
    return [t for t, (start, end) in enumerate(offsets) if end > start]


def control_count(num_candidates: int, critical_count: int | None, fraction: float | None) -> int:
    """How many tokens a count-matched control selects in one row."""
    if fraction is not None:
        return min(num_candidates, round(fraction * num_candidates))
    return min(num_candidates, critical_count or 0)


def random_positions(candidates: Sequence[int], k: int, seed: int, row_id: str) -> list[int]:
    """``k`` of ``candidates`` drawn uniformly, from a generator seeded by ``(seed, row_id)``."""
    # A string seed is hashed with SHA-512 by `random`: stable across runs, processes and Python hashing.
    return sorted(random.Random(f"{seed}:{row_id}").sample(list(candidates), k))


def top_entropy_positions(candidates: Sequence[int], entropies: Sequence[float], k: int) -> list[int]:
    """The ``k`` candidates of highest entropy; ties go to the earlier position."""
    ranked = sorted(candidates, key=lambda t: (-entropies[t], t))
    return sorted(ranked[:k])


# --- one row ---------------------------------------------------------------------------------------


@dataclass
class RowSelection:
    """What one row needs for selection. ``spans``: the critical spans (None when not annotated);
    ``entropies``: per completion token, from the scoring model (``entropy`` only)."""

    row_id: str
    text: str
    offsets: Sequence[Span]
    spans: Sequence | None = None
    entropies: Sequence[float] | None = None


def select_weights(
    strategy: str,
    row: RowSelection,
    answer_delimiter: str | None = None,
    seed: int = 0,
    fraction: float | None = None,
) -> list[float]:
    """Per completion token, the strategy's weight (1.0 selected, 0.0 not)."""
    check_strategy(strategy)
    n = len(row.offsets)
    if strategy == "full":
        return [1.0] * n
    if strategy in ("critical", "numeric", "answer"):
        spans = {
            "critical": lambda: validate_spans(row.spans, row.text, row.row_id),
            "numeric": lambda: numeric_spans(row.text),
            "answer": lambda: answer_spans(row.text, answer_delimiter),
        }[strategy]()
        return [float(f) for f in tokens_in_spans(row.offsets, spans)]
    candidates = text_tokens(row.offsets)
    critical = None
    if fraction is None:
        critical = sum(tokens_in_spans(row.offsets, validate_spans(row.spans, row.text, row.row_id)))
    k = control_count(len(candidates), critical, fraction)
    if strategy == "random":
        chosen = random_positions(candidates, k, seed, row.row_id)
    else:
        if row.entropies is None or len(row.entropies) != n:
            raise SelectionError(
                f"row {row.row_id}: strategy 'entropy' needs one entropy per completion token"
            )
        chosen = top_entropy_positions(candidates, row.entropies, k)
    weights = [0.0] * n
    for t in chosen:
        weights[t] = 1.0
    return weights


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
    (:func:`cft_rl.data.prompts.encode_example`), so an annotated position is a trained position.

    ``scoring_model`` (the base model, or a function that loads it) is needed for ``entropy`` only:
    it scores on ``device`` (default: where the model is), on the main process only, and the scores
    are sent to the other processes (:func:`shared_entropies`). Rows longer than ``args.max_length``
    are truncated per ``args.truncation_mode``; rows left with no selected token are dropped and
    listed in the summary.
    """
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
