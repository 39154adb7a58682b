"""Finding the final answer in a piece of model output.

Pure string functions, no sympy: they run in the trainer's process on every completion, so they must be
linear-time on anything a policy can emit (a 1 MB ramble, 10,000 unmatched braces, broken unicode).
The symbolic comparison lives in :mod:`cft_rl.verify.verifier` and runs behind a process guard.

Priority, as models are prompted to answer (``\\boxed{}``) and as datasets write gold solutions:
1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces allowed, also ``\\boxed 5``);
2. the last "The (final) answer is ...";
3. GSM8K's ``#### ...`` line.
"""

from __future__ import annotations

import re

# A final answer longer than this is not an answer but a runaway generation. Capping it keeps the
# downstream sympy parse from burning its whole timeout on garbage.
MAX_ANSWER_CHARS = 1000

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
# Escaped braces (``\\{``, set notation) are text, not grouping, as in LaTeX.
_BRACE_RE = re.compile(r"(?<!\\)[{}]")
# "The answer is therefore 3": filler words after "is" are not the answer.
_ANSWER_IS_RE = re.compile(
    r"(?:final\s+)?answer\s*(?:is|:)\s*:?(?:\s*(?:therefore|thus|then|so)\b,?)?", re.IGNORECASE
)
_HASHES_RE = re.compile(r"####")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\n")
_THOUSANDS_RE = re.compile(r"^-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")


def match_braces(text: str) -> dict[int, int]:
    """Map each ``{`` index to its matching ``}`` index, in one pass over the braces only.

    Unmatched braces are left out. Precomputing the matches keeps the search for the last balanced
    ``\\boxed{`` linear even when the text holds thousands of unbalanced ones.
    """
    matches: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE_RE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            matches[stack.pop()] = m.start()
    return matches


def last_boxed_span(text: str) -> tuple[int, int] | None:
    """``(start, end)`` of the content of the last complete ``\\boxed``/``\\fbox``, or None.

    "Last" means the box that closes last; for nested boxes that is the outermost one.
    """
    best: tuple[int, int] | None = None
    matches: dict[int, int] | None = None
    for m in _BOX_RE.finditer(text):
        i = m.end()
        if i < len(text) and text[i] == "{":
            if matches is None:
                matches = match_braces(text)
            close = matches.get(i)
            if close is None:
                continue
            span = (i + 1, close)
        else:
            # ``\boxed 5``: the argument is the next whitespace-delimited token.
            rest = re.match(r"[ \t]+([^\s$]+)", text[i : i + MAX_ANSWER_CHARS])
            if rest is None:
                continue
            span = (i + rest.start(1), i + rest.end(1))
        if best is None or span[1] > best[1] or (span[1] == best[1] and span[0] < best[0]):
            best = span
    return best


def last_boxed_content(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}``/``\\fbox{...}`` in ``text``, or None."""
    span = last_boxed_span(text)
    return None if span is None else text[span[0] : span[1]].strip()


def _strip_math_wrappers(answer: str) -> str:
    """Remove ``$...$``, ``\\(...\\)`` and a trailing full stop around an extracted answer."""
    answer = answer.strip().rstrip(".").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.endswith(right) and len(answer) >= len(left) + len(right):
            answer = answer[len(left) : len(answer) - len(right)].strip()
    return answer.rstrip(".").strip()


def _after_last(pattern: re.Pattern[str], text: str) -> str | None:
    """Text after the last match of ``pattern`` up to the end of its sentence or line."""
    last = None
    for last in pattern.finditer(text):  # noqa: B007 - we want the final match
        pass
    if last is None:
        return None
    tail = text[last.end() : last.end() + MAX_ANSWER_CHARS + 1]
    end = _SENTENCE_END_RE.search(tail)
    return tail[: end.start()] if end else tail


def strip_thousands(answer: str) -> str:
    """``1,234,567`` -> ``1234567``. Only exact thousands groups: ``(1,2)`` is a tuple, not a number."""
    return answer.replace(",", "") if _THOUSANDS_RE.match(answer) else answer


def extract_answer(text: object) -> str | None:
    """The final answer in a model output, or None when it states none.

    Never raises: anything that is not text (``None``, bytes, numbers) is coerced or rejected.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str) or not text:
        return None
    candidates = (last_boxed_content(text), _after_last(_ANSWER_IS_RE, text), _after_last(_HASHES_RE, text))
    for rank, raw in enumerate(candidates):
        # A box inside a fallback candidate is one left unclosed (a complete box wins first): the
        # answer was cut off, and a cut-off answer is no answer.
        if raw is None or (rank > 0 and _BOX_RE.search(raw)):
            continue
        answer = strip_thousands(_strip_math_wrappers(raw))
        if answer and len(answer) <= MAX_ANSWER_CHARS:
            return answer
    return None
