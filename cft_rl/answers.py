"""Finding the final answer in a piece of model output.

Pure string functions, no sympy: they run in the trainer's process on every completion, so they must be
linear-time on anything a policy can emit (a 1 MB ramble, 10,000 unmatched braces, broken unicode).
The symbolic comparison lives in :mod:`cft_rl.verify.verifier` and runs behind a process guard.

Priority, as models are prompted to answer (``\\boxed{}``) and as datasets write gold solutions:
1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces allowed, also ``\\boxed 5``), unless an
   explicit "final answer" sentence follows it (the boxes were intermediate results);
2. the last "The (final) answer is ..." / "Answer: ...";
3. GSM8K's ``#### ...`` line.

Models state multi-part answers in several boxes (``\\boxed{1}, \\boxed{2}``, ``\\boxed{k=45} \\quad
\\text{and} \\quad \\boxed{n=2}``). Boxes joined only by connectors (commas, "and", "or", spacing,
labels like ``y_2 =``) form one answer, their contents joined by commas: a multi-part gold is matched
part for part, and a hedge between two values (``\\boxed{3} or \\boxed{4}``) reads as the set {3, 4},
which never equals a single value. Boxes separated by prose stay apart, so a corrected answer later
in the text ("\\boxed{3}. Wait, that is wrong: \\boxed{4}") wins, as a single box would.

After a prose marker models often write a sentence ("Final Answer: The largest $n$ is 34."). The
answer is then the sentence's final math span or number (with the connected ones before it, as for
boxes), never the whole sentence: parsing a sentence as LaTeX can take sympy seconds.
"""

from __future__ import annotations

import re

# A final answer longer than this is not an answer but a runaway generation. Capping it keeps the
# downstream sympy parse from burning its whole timeout on garbage.
MAX_ANSWER_CHARS = 1000

# Boxes in one run of joined boxes (beyond it the text is a runaway, not an answer), and the most
# characters between two boxes (or two sentence candidates) that can still join them.
MAX_PARTS = 32
MAX_GAP_CHARS = 64

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
# Escaped braces (``\\{``, set notation) are text, not grouping, as in LaTeX.
_BRACE_RE = re.compile(r"(?<!\\)[{}]")
# "The answer is therefore 3": filler words after "is" are not the answer.
_ANSWER_IS_RE = re.compile(
    r"(final\s+)?answer\s*(?:is|:)\s*:?(?:\s*(?:therefore|thus|then|so)\b,?)?", re.IGNORECASE
)
_HASHES_RE = re.compile(r"####")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\n")
_THOUSANDS_RE = re.compile(r"^-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")

# What may stand between two parts of one answer: text-mode wrappers (their content counts), spacing
# commands, math delimiters, punctuation that lists, part labels ("(a)") and variable labels
# ("y_2 =", "x_{1}="). Whatever is left must be connector words.
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mbox)\s*\{([^{}]*)\}")
_GAP_FILLER_RE = re.compile(
    r"\\(?:q?quad|[,;:! ()\[\]])|\\\\?|[\s$,;&+]|\([a-z]\)|\b[A-Za-z](?:_\{?\w+\}?)?\s*="
)
_CONNECTOR_WORDS = frozenset({"and", "or", "for", "part", "parts"})
# A sentence has prose words outside its math; a bare answer ("9 apples", "No solution") has few.
_MATH_SPAN_RE = re.compile(r"\$\$(.+?)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
SENTENCE_MIN_WORDS = 3
_NUMBER_RE = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?:\s*\\?%)?")
# A percent sign or word after a math span belongs inside it: ``$28$ %`` is ``28\%``.
_PERCENT_AFTER_RE = re.compile(r"(?<!\\)(\$|\\\))\s*(?:\\?%|percent(?:age)?\b|pct\b)", re.IGNORECASE)


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


def _boxes(text: str) -> list[tuple[int, int, int, int]]:
    """Every complete outermost box, in order: ``(command start, content start, content end, box end)``.

    One pass over the text and one over its braces, whatever the number of boxes. A box nested in
    another is part of the outer one's content, not a box of its own.
    """
    boxes: list[tuple[int, int, int, int]] = []
    matches: dict[int, int] | None = None
    for m in _BOX_RE.finditer(text):
        if boxes and m.start() < boxes[-1][3]:
            continue  # inside the previous box
        i = m.end()
        if i < len(text) and text[i] == "{":
            if matches is None:
                matches = match_braces(text)
            close = matches.get(i)
            if close is None:
                continue
            boxes.append((m.start(), i + 1, close, close + 1))
        else:
            # ``\boxed 5``: the argument is the next whitespace-delimited token.
            rest = re.match(r"[ \t]+([^\s$]+)", text[i : i + MAX_ANSWER_CHARS])
            if rest is not None:
                boxes.append((m.start(), i + rest.start(1), i + rest.end(1), i + rest.end(1)))
    return boxes


def last_boxed_span(text: str) -> tuple[int, int] | None:
    """``(start, end)`` of the content of the last complete ``\\boxed``/``\\fbox``, or None.

    "Last" means the box that closes last; for nested boxes that is the outermost one.
    """
    boxes = _boxes(text)
    return (boxes[-1][1], boxes[-1][2]) if boxes else None


def last_box_extent(text: str) -> tuple[int, int] | None:
    """``(start, end)`` of the whole last complete box, command and braces included, or None."""
    boxes = _boxes(text)
    return (boxes[-1][0], boxes[-1][3]) if boxes else None


def last_boxed_content(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}``/``\\fbox{...}`` in ``text``, or None."""
    span = last_boxed_span(text)
    return None if span is None else text[span[0] : span[1]].strip()


def is_connector(gap: str) -> bool:
    """Whether ``gap``, the text between two answer parts, only joins them ("and", ", ", ``\\quad``).

    A unit may precede a connector ("\\boxed{1} papers and \\boxed{2} bins"). Prose ("Wait, no:", "so
    the sum is") and sentence ends separate the parts instead.
    """
    if len(gap) > MAX_GAP_CHARS:
        return False
    words = [w.lower() for w in _GAP_FILLER_RE.sub(" ", _TEXT_CMD_RE.sub(r" \1 ", gap)).split()]
    return all(
        w in _CONNECTOR_WORDS or (w.isalpha() and i + 1 < len(words) and words[i + 1] in _CONNECTOR_WORDS)
        for i, w in enumerate(words)
    )


def final_group(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
    """The last run of ``spans`` (ordered, disjoint) whose gaps are connectors, or None beyond
    :data:`MAX_PARTS` (a runaway list is no answer). Looks back only as far as the run goes."""
    if not spans:
        return None
    k = len(spans) - 1
    while k > 0 and is_connector(text[spans[k - 1][1] : spans[k][0]]):
        k -= 1
        if len(spans) - k > MAX_PARTS:
            return None
    return spans[k:]


def _percent_inside(answer: str) -> str:
    """``$28$ %`` -> ``$28\\%$``: math-verify reads a percent sign outside the math as a stray symbol."""
    return _PERCENT_AFTER_RE.sub(r"\\%\1", answer)


def _final_box_group(text: str) -> tuple[str, int] | None:
    """The joined contents of the last run of connected boxes, and where that run ends."""
    boxes = _boxes(text)
    group = final_group(text, [(b[0], b[3]) for b in boxes])
    if group is None:
        return None
    parts = [_percent_inside(text[b[1] : b[2]]).strip() for b in boxes[len(boxes) - len(group) :]]
    return ", ".join(parts), group[-1][1]


def _math_or_numbers(sentence: str) -> list[tuple[int, int, str]]:
    """Math spans and the numbers outside them, in order, as ``(start, end, content)``."""
    items, prose_from = [], 0
    for m in _MATH_SPAN_RE.finditer(sentence):
        items += [
            (prose_from + n.start(), prose_from + n.end(), n.group())
            for n in _NUMBER_RE.finditer(sentence[prose_from : m.start()])
        ]
        items.append((m.start(), m.end(), next(g for g in m.groups() if g is not None)))
        prose_from = m.end()
    items += [
        (prose_from + n.start(), prose_from + n.end(), n.group())
        for n in _NUMBER_RE.finditer(sentence[prose_from:])
    ]
    return items


def final_math(sentence: str) -> str:
    """A sentence's answer: its final math span or number (with the connected ones before it).

    A bare answer ("$\\frac{3}{4}$", "9 apples", "x = 5", "No solution") comes back as it is, and so
    does a sentence without any math or number (a prose answer, matched verbatim later).
    """
    if len(_WORD_RE.findall(_MATH_SPAN_RE.sub(" ", sentence))) < SENTENCE_MIN_WORDS:
        return sentence
    items = _math_or_numbers(sentence)
    group = final_group(sentence, [(a, b) for a, b, _ in items])
    if not group:
        return sentence
    return ", ".join(content.strip() for _, _, content in items[len(items) - len(group) :])


def _strip_math_wrappers(answer: str) -> str:
    """Remove ``$...$``, ``\\(...\\)``, quotes, markdown bold and a final full stop around an answer."""
    answer = answer.strip().rstrip(".").strip()
    for mark in ('\\"', '"', "**"):
        if answer.startswith(mark) and answer.endswith(mark) and len(answer) > 2 * len(mark):
            answer = answer[len(mark) : -len(mark)].strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.endswith(right) and len(answer) >= len(left) + len(right):
            answer = answer[len(left) : len(answer) - len(right)].strip()
    return answer.rstrip(".").strip()


def _after_last(pattern: re.Pattern[str], text: str) -> tuple[re.Match[str], str] | None:
    """The last match of ``pattern`` and the text after it up to the end of its sentence or line."""
    last = None
    for last in pattern.finditer(text):  # noqa: B007 - we want the final match
        pass
    if last is None:
        return None
    tail = text[last.end() : last.end() + MAX_ANSWER_CHARS + 1]
    end = _SENTENCE_END_RE.search(tail)
    return last, tail[: end.start()] if end else tail


def strip_thousands(answer: str) -> str:
    """``1,234,567`` -> ``1234567``. Only exact thousands groups: ``(1,2)`` is a tuple, not a number."""
    return answer.replace(",", "") if _THOUSANDS_RE.match(answer) else answer


def _candidates(text: str) -> list[tuple[str | None, bool]]:
    """``(raw answer, from a box)`` in order of priority: boxes, then "answer is", then ``####``."""
    boxed = _final_box_group(text)
    prose = _after_last(_ANSWER_IS_RE, text)
    hashes = _after_last(_HASHES_RE, text)
    box = (None if boxed is None else boxed[0], True)
    rest = [
        (None if found is None else final_math(_percent_inside(found[1])), False) for found in (prose, hashes)
    ]
    # "Final Answer: The final answer is $10,455$" after the last box: the boxes were steps.
    if boxed is not None and prose is not None and prose[0].group(1) and prose[0].start() >= boxed[1]:
        return [rest[0], box, rest[1]]
    return [box, *rest]


def extract_answer(text: object) -> str | None:
    """The final answer in a model output, or None when it states none.

    Never raises: anything that is not text (``None``, bytes, numbers) is coerced or rejected.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str) or not text:
        return None
    for raw, from_box in _candidates(text):
        # A box inside a prose candidate is one left unclosed (a complete box is a candidate of its
        # own): the answer was cut off, and a cut-off answer is no answer.
        if raw is None or (not from_box and _BOX_RE.search(raw)):
            continue
        answer = strip_thousands(_strip_math_wrappers(raw))
        if answer and len(answer) <= MAX_ANSWER_CHARS:
            return answer
    return None
