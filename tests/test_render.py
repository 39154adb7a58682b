"""cft_rl.annotate.render: highlight splitting, terminal text and the HTML page, on hand-made rows (no model)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from cft_rl.annotate.render import (
    ANSI_CRITICAL,
    ANSI_RESET,
    highlight_segments,
    render_html,
    render_terminal,
    write_html,
)


def make_row(**overrides):
    # "Sum: 3 + 4 = 7." tokenised as ["Sum", ":", " 3", " +", " 4", " =", " 7", "."]; " 3" and " 7" critical.
    solution = "Sum: 3 + 4 = 7."
    token_char_spans = [[0, 3], [3, 4], [4, 6], [6, 8], [8, 10], [10, 12], [12, 14], [14, 15]]
    critical = [False, False, True, False, False, False, True, False]
    row = {
        "id": "ex-1",
        "question": "What is 3 + 4?",
        "answer": "7",
        "solution": solution,
        "critical_spans": [[4, 6], [12, 14]],
        "tokens": [solution[s:e] for s, e in token_char_spans],
        "critical": critical,
        "token_char_spans": token_char_spans,
        "alternative_answers": [[None] if c else ["7"] for c in critical],
        "num_tokens": 8,
        "num_critical": 2,
    }
    row.update(overrides)
    return row


@pytest.mark.parametrize(
    ("text", "spans", "expected"),
    [
        ("abcdef", [], [("abcdef", False)]),
        ("abcdef", [[0, 2]], [("ab", True), ("cdef", False)]),
        ("abcdef", [[4, 6]], [("abcd", False), ("ef", True)]),
        ("abcdef", [[0, 6]], [("abcdef", True)]),
        # Adjacent spans stay separate pieces, so each gets its own highlight.
        ("abcdef", [[0, 2], [2, 3], [5, 6]], [("ab", True), ("c", True), ("de", False), ("f", True)]),
        # An empty span covers nothing and produces no piece.
        ("abcdef", [[1, 1], [3, 4]], [("abc", False), ("d", True), ("ef", False)]),
        ("abcdef", [[2, 2]], [("abcdef", False)]),
        ("", [], []),
        ("é∑ 🙂 x", [[0, 1], [4, 5]], [("é", True), ("∑ 🙂", False), (" ", True), ("x", False)]),
    ],
)
def test_highlight_segments_hand_cases(text, spans, expected):
    segments = highlight_segments(text, spans)
    assert segments == expected
    assert "".join(seg for seg, _ in segments) == text


@pytest.mark.parametrize(
    ("spans", "bad"),
    [
        ([[-1, 2]], "[-1, 2]"),
        ([[3, 7]], "[3, 7]"),  # past the end of a 6-char text
        ([[4, 2]], "[4, 2]"),  # reversed
        ([[0, 3], [2, 4]], "[2, 4]"),  # overlapping
        ([[3, 4], [0, 1]], "[0, 1]"),  # unsorted
        ([[1, 2, 3]], "[1, 2, 3]"),  # not a pair
        ([[3, 3], [1, 2]], "[1, 2]"),  # unsorted behind an empty span
    ],
)
def test_highlight_segments_rejects_bad_spans(spans, bad):
    with pytest.raises(ValueError) as excinfo:
        highlight_segments("abcdef", spans)
    message = str(excinfo.value)
    assert bad in message
    assert "6" in message  # the text length is named too


def test_render_terminal_plain_exact():
    assert render_terminal(make_row(), color=False) == (
        "ex-1  gold=7  critical 2/8 (25.0%)\nSum:[[ 3]] + 4 =[[ 7]]."
    )


def test_render_terminal_color_and_missing_totals():
    row = make_row()
    del row["num_tokens"], row["num_critical"]  # falls back to the per-token lists
    out = render_terminal(row)
    assert out.startswith("ex-1  gold=7  critical 2/8 (25.0%)\n")
    assert out.count(ANSI_CRITICAL) == 2 and out.count(ANSI_RESET) == 2
    assert f"{ANSI_CRITICAL} 3{ANSI_RESET}" in out


def test_render_terminal_zero_tokens():
    row = make_row(solution="", critical_spans=[], tokens=[], critical=[], num_tokens=0, num_critical=0)
    assert render_terminal(row, color=False) == "ex-1  gold=7  critical 0/0 (0.0%)\n"


class _SolutionText(HTMLParser):
    """Collects the (unescaped) text inside each ``div.solution`` and the mark titles."""

    def __init__(self):
        super().__init__()
        self.solutions: list[str] = []
        self.titles: list[str] = []
        self._depth = 0  # >0 while inside a solution div

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "solution":
            self.solutions.append("")
            self._depth = 1
        elif self._depth and tag == "div":
            self._depth += 1
        if tag == "mark":
            self.titles.append(attrs.get("title", ""))

    def handle_endtag(self, tag):
        if self._depth and tag == "div":
            self._depth -= 1

    def handle_data(self, data):
        if self._depth:
            self.solutions[-1] += data


def parse(page: str) -> _SolutionText:
    parser = _SolutionText()
    parser.feed(page)
    parser.close()
    return parser


def test_render_html_escapes_and_marks():
    nasty = "<script>alert(1)</script> & x < 2"
    row = make_row(
        id="<b>id&1</b>",
        question="Is a<b & c>d?",
        solution=nasty,
        critical_spans=[[0, 8], [8, 17], [26, 27]],  # start, adjacent, the '&'
        token_char_spans=[[0, 8], [8, 17], [17, 26], [26, 27], [27, len(nasty)]],
        alternative_answers=[["<i>", None], ["2"], ["7"], ["a&b"], ["7"]],
        num_tokens=5,
        num_critical=3,
    )
    page = render_html([row, make_row()])
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script>" not in page and "<b>" not in page and "<i>" not in page
    assert "&lt;script&gt;" in page and "&amp;" in page
    assert page.count("<mark") == 3 + 2
    parsed = parse(page)
    assert parsed.solutions == [nasty, make_row()["solution"]]  # escaping round-trips exactly
    assert "'<i>', (no answer)" in parsed.titles[0]
    assert "'a&b'" in parsed.titles[2]
    # Summary table: 2 rows, 13 tokens, 5 critical.
    assert re.search(r"<td>2</td><td>13</td><td>5</td><td>38\.5%</td>", page)


def test_render_html_empty_and_unicode(tmp_path):
    page = render_html([])
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert "<td>0</td><td>0</td><td>0</td><td>0.0%</td>" in page
    assert "<mark" not in page

    row = make_row(
        solution="π≈3.14 🙂",
        critical_spans=[[0, 1], [7, 8]],  # first char, the emoji at the end
        token_char_spans=None,
        alternative_answers=None,
    )
    path = write_html([row], tmp_path / "sub" / "page.html")
    text = path.read_text(encoding="utf-8")
    assert parse(text).solutions == ["π≈3.14 🙂"]
    assert text.count('<mark class="critical" title="critical">') == 2


def test_render_html_rejects_bad_spans():
    with pytest.raises(ValueError, match=r"\[0, 99\]"):
        render_html([make_row(critical_spans=[[0, 99]])])
