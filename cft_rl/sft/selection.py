"""Which completion tokens carry the SFT loss: the selection strategies, one row at a time.

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

The strategies are pure functions of a row's text, offsets and spans;
:func:`cft_rl.sft.prepare.prepare_dataset` runs them over a dataset.
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cft_rl.answers import last_boxed_span
from cft_rl.sft import SelectionError

STRATEGIES = ("full", "critical", "numeric", "answer", "random", "entropy")
# Strategies whose token count follows the critical annotation unless a fraction is given.
COUNT_MATCHED = ("random", "entropy")

_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")

Span = tuple[int, int]


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
