"""The 14 math benchmarks: where each file lives and how its own schema maps onto our records.

Each benchmark writes its gold answer its own way (GSM8K's ``#### 72``, ASDiv's ``9 (apples)``,
``$...$`` wrappers, OlympiadBench's one-element lists, Minerva's last ``\\boxed{}``, SAT letters).
The normalisation here makes every gold the bare answer a model would put in ``\\boxed{}``, so the
verifier can grade all of them the same way. Reading files and building records is :mod:`cft_rl.data.datasets`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cft_rl.answers import last_boxed_content


class RowError(ValueError):
    """One row cannot become a record. The message is the reason, counted when rows are skipped."""


# --- answer normalisation ------------------------------------------------------------------------

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_MATH_SEGMENT = re.compile(r"\$((?:\\.|[^$\\])+)\$")
_THOUSANDS = re.compile(r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")
_GSM8K_CALC = re.compile(r"<<[^<>]*>>")
# ASDiv appends the unit in parentheses ("9 (apples)"); a letter inside tells a unit from "-(1/3)".
_ASDIV_UNIT = re.compile(r"(.*?\S)\s+\([^()]*[A-Za-z][^()]*\)")


def strip_math_delimiters(text: str) -> str:
    """``$x$``, ``$$x$$``, ``\\(x\\)``, ``\\[x\\]`` -> ``x``, only when they wrap the whole string.

    A list written as separate segments, ``$48$, $384$``, becomes ``48, 384``. Words between segments
    (``$2$ or $-2$``) leave the text alone: without dollars the words would read as variables.
    """
    text = text.strip()
    if text.endswith("$."):  # a full stop after the math is sentence punctuation
        text = text[:-1]
    for left, right in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
            inner = text[len(left) : -len(right)]
            if not inner.endswith("\\") and not _UNESCAPED_DOLLAR.search(inner):
                return inner.strip()
    parts = _MATH_SEGMENT.split(text)  # [outside, math, outside, math, ..., outside]
    is_list = len(parts) > 3 and not parts[0].strip() and not parts[-1].strip()
    if is_list and all(sep.strip() in {",", ";"} for sep in parts[2:-1:2]):
        return "".join(parts).strip()
    return text


def format_number(value: Any) -> str:
    """A numeric gold answer as text: ``145.0`` -> ``"145"``, ``0.5`` -> ``"0.5"`` (shortest repr)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowError(f"answer is not a number ({type(value).__name__})")
    if isinstance(value, float) and not math.isfinite(value):
        raise RowError(f"answer is not a finite number ({value})")
    return str(int(value)) if float(value).is_integer() else repr(value)


def gsm8k_answer(text: str) -> str:
    """GSM8K gold: the text after the last ``#### ``, without thousands separators."""
    if "#### " not in text:
        raise RowError("no '#### ' final-answer line")
    answer = text.rsplit("#### ", 1)[1].strip()
    return answer.replace(",", "") if _THOUSANDS.fullmatch(answer) else answer


def clean_gsm8k_solution(text: str) -> str:
    """Drop GSM8K's ``<<48/2=24>>`` calculator annotations (for SFT targets; ``solution`` keeps them)."""
    return _GSM8K_CALC.sub("", text)


def asdiv_answer(text: str) -> str:
    """``"9 (apples)"`` -> ``"9"``; ratios (``3:4``), fractions and word answers pass through."""
    match = _ASDIV_UNIT.fullmatch(text.strip())
    return match.group(1) if match else text.strip()


# --- benchmark specs -----------------------------------------------------------------------------

# How a record part is read from a raw row: a field name (that field's text) or a function of the row.
Getter = str | Callable[[dict], Any]


def required_field(row: dict, key: str) -> Any:
    """``row[key]``, or a RowError when it is missing or blank."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError(f"missing or empty field {key!r}")
    return value


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark file lives and how its original schema maps onto the record shape.

    ``solution=None``: no worked solutions. ``id=None``: no ids of its own; the row number stands in.
    """

    path: str
    question: Getter
    answer: Getter
    solution: Getter | None = None
    id: Getter | None = None

    def read(self, part: str, row: dict) -> str | None:
        how = getattr(self, part)
        if how is None:
            return None
        if callable(how):
            value = how(row)
        elif part == "solution":  # a missing solution is no reason to drop the problem
            value = row.get(how) or None
        else:
            value = required_field(row, how)
        return None if value is None else str(value).strip()


def _number(key: str) -> Callable[[dict], str]:
    return lambda row: format_number(required_field(row, key))


def _joined(*keys: str, sep: str = " ") -> Callable[[dict], str]:
    return lambda row: sep.join(str(required_field(row, key)).strip() for key in keys)


def _first(row: dict, key: str) -> str:
    values = required_field(row, key)
    if not isinstance(values, list) or not isinstance(values[0], str):
        raise RowError(f"field {key!r} is not a list of text")
    return values[0]


def _svamp_question(row: dict) -> str:
    # 358 of the 1000 bodies stop mid-sentence ("... into 93 groups"); without a full stop they run on
    # into the question. Same fix as the Qwen-Math evaluation harness.
    body = str(required_field(row, "Body")).strip()
    if not body.endswith((".", "?", "!", ",")):
        body += "."
    return f"{body} {str(required_field(row, 'Question')).strip()}"


# Two Gaokao rows have an empty ``answer`` and the gold at the end of the question instead
# ("... saddle point.answers: $\frac{3}{10}$"). Moving it out keeps the row and hides the answer.
_GAOKAO_INLINE_ANSWER = re.compile(r"(?is)^(.*)\s*answers?\s*:\s*(\S[^\n]*?)\s*$")
# One Gaokao answer has scraping debris glued on: "$145$solution:".
_GAOKAO_DEBRIS = re.compile(r"(?i)\s*solution\s*:\s*$")


def _gaokao_split(row: dict) -> tuple[str, str]:
    question, answer = str(required_field(row, "question")).strip(), (row.get("answer") or "").strip()
    if not answer:
        match = _GAOKAO_INLINE_ANSWER.match(question)
        if match is None:
            raise RowError("missing or empty field 'answer'")
        question, answer = match.group(1).strip(), match.group(2)
    return question, _GAOKAO_DEBRIS.sub("", answer)


def _olympiad_question(row: dict) -> str:
    context = (row.get("context") or "").strip()  # shared setup of a problem group; null in this file
    return f"{context}\n{required_field(row, 'question')}" if context else required_field(row, "question")


def _minerva_answer(row: dict) -> str:
    boxed = last_boxed_content(required_field(row, "solution"))
    if boxed is None:
        raise RowError("no complete \\boxed{...} in field 'solution'")
    return boxed


def _bench(
    name: str, question: Getter, answer: Getter, solution: Getter | None = None, id: Getter | None = None
) -> BenchmarkSpec:
    return BenchmarkSpec(f"benchmarks/{name}/test.jsonl", question, answer, solution, id)


def _gsm8k_gold(row: dict) -> str:
    return gsm8k_answer(required_field(row, "answer"))


# GSM8K's solution is its answer field verbatim: the verifier's extractor understands the "#### 72" line.
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "gsm8k_train": BenchmarkSpec("gsm8k/train.jsonl", "question", _gsm8k_gold, "answer"),
    "gsm8k_test": BenchmarkSpec("gsm8k/test.jsonl", "question", _gsm8k_gold, "answer"),
    "math500": BenchmarkSpec("math500/test.jsonl", "problem", "answer", "solution", id="unique_id"),
    "svamp": _bench("svamp", _svamp_question, _number("Answer"), id="ID"),
    "asdiv": _bench(
        "asdiv", _joined("body", "question"), lambda r: asdiv_answer(required_field(r, "answer")), id="idx"
    ),
    "mawps": _bench("mawps", "input", _number("target"), id="idx"),
    "carp_en": _bench("carp_en", "content", "answer", "steps"),
    "minerva_math": _bench("minerva_math", "problem", _minerva_answer, "solution", "idx"),
    "gaokao2023en": _bench("gaokao2023en", lambda r: _gaokao_split(r)[0], lambda r: _gaokao_split(r)[1]),
    # ``unit`` ("km/h", "minute", ... in 8 rows) stays out of the answer, as final_answer never has it.
    "olympiadbench": _bench(
        "olympiadbench",
        _olympiad_question,
        lambda r: _first(r, "final_answer"),
        lambda r: _first(r, "solution") if r.get("solution") else None,
        "id",
    ),
    # question_number repeats across the textbooks; with the textbook it is unique.
    "college_math": _bench(
        "college_math", "question", "answer", id=_joined("data_source", "question_number", sep="/")
    ),
    # AIME answers are integers 0-999, written "025" in seven rows; "25" is what a model writes.
    "aime24": _bench("aime24", "problem", lambda r: str(int(required_field(r, "answer"))), "solution", "id"),
    "amc23": _bench(
        "amc23", lambda r: r.get("question") or required_field(r, "problem"), _number("answer"), id="id"
    ),
    # The choices go into the question: the gold is a letter, meaningless without them.
    "sat_math": _bench("sat_math", _joined("question", "options", sep="\n"), "Answer", id="id"),
}

# The CFT paper's evaluation suite, as far as it is available here. aime24 and amc23 are extras.
PAPER_SUITE = (
    "gsm8k_test",
    "math500",
    "svamp",
    "asdiv",
    "mawps",
    "carp_en",
    "minerva_math",
    "gaokao2023en",
    "olympiadbench",
    "college_math",
    "sat_math",
)
