"""Token classes: which kind of text a token is, read from its decoded text.

One definition, used to report *where* criticality sits (the annotation summary, by :func:`token_class`)
and to split GRPO's token entropy by class (:func:`entropy_class`, and :func:`token_class_table` for a
whole vocabulary). The CFT paper finds critical tokens in numbers and operators.
"""

from __future__ import annotations

import re

import torch

_OPERATOR_TEXTS = {"x", "×", "÷", "·", "≤", "≥", "≠", "±"}
_OPERATOR_CHARS = set("+-*/=^()<>%!")
_FORMAT_MARKERS = ("\\", "{", "}", "$")
_SPECIAL_RE = re.compile(r"<\|?/?[\w\-]+\|?>")  # <|im_end|>, </s>, <eos>: the decoded special tokens

# Classes for entropy: digits and operators are pooled as "numeric". Classes may be given as these names
# or as their index (cheap to gather as ints).
ENTROPY_CLASSES = ("numeric", "word", "format")
ENTROPY_CLASS_OF = {"digit": "numeric", "operator": "numeric", "word": "word", "format": "format"}


def token_class(token: str) -> str:
    """``"digit"``, ``"operator"``, ``"format"`` or ``"word"``: which kind of text a token is."""
    text = token.strip()
    if not text or _SPECIAL_RE.fullmatch(text) or any(m in text for m in _FORMAT_MARKERS):
        return "format"
    if text.isascii() and text.isdigit():
        return "digit"
    if text in _OPERATOR_TEXTS or all(c in _OPERATOR_CHARS for c in text):
        return "operator"
    return "word"


def entropy_class(token: str) -> str:
    """``"numeric"`` (digits, operators), ``"word"`` or ``"format"`` (LaTeX, special tokens, blanks)."""
    return ENTROPY_CLASS_OF[token_class(token)]


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
