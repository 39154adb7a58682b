"""Render annotated rows so people can *see* which tokens are critical.

An annotation row carries its solution text plus ``critical_spans``: sorted, non-overlapping character
offsets into that text. Both renderers work from those offsets alone, never from token ids, so they need
no tokenizer and show exactly the characters the annotator marked. ``highlight_segments`` is the one pure
core both renderers share; it validates the spans loudly because a silently mis-sliced highlight would
show the wrong tokens as critical, which is worse than no picture at all.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ANSI_CRITICAL = "\x1b[1;41m"  # bold on a red background: visible on both dark and light terminals
ANSI_RESET = "\x1b[0m"
PLAIN_OPEN, PLAIN_CLOSE = "[[", "]]"  # for logs, pipes and tests, where escape codes are noise


def _validated_pieces(text: str, spans: Iterable[Sequence[int]]) -> list[tuple[int, int, bool]]:
    """Split ``[0, len(text))`` into ``(start, end, is_critical)`` pieces, in order.

    Every non-empty span becomes its own critical piece, even when it touches the previous one, so the
    renderers can draw one highlight per span (adjacent critical tokens stay distinguishable). Empty
    spans and empty gaps produce no piece: they cover no characters and would render as nothing anyway.
    """
    pieces: list[tuple[int, int, bool]] = []
    cursor = 0  # end of the previous span: the next one must not start before it
    emitted = 0  # end of the last piece; lags ``cursor`` after an empty span so gaps are not split
    for span in spans:
        if len(span) != 2:
            raise ValueError(f"span {list(span)!r} is not a [start, end] pair (text length {len(text)})")
        start, end = int(span[0]), int(span[1])
        if not 0 <= start <= end <= len(text):
            raise ValueError(f"span {[start, end]} is out of range for text of length {len(text)}")
        if start < cursor:
            raise ValueError(
                f"span {[start, end]} overlaps or precedes the previous span ending at {cursor} "
                f"(spans must be sorted and non-overlapping; text length {len(text)})"
            )
        cursor = end
        if end == start:
            continue
        if start > emitted:
            pieces.append((emitted, start, False))
        pieces.append((start, end, True))
        emitted = end
    if emitted < len(text):
        pieces.append((emitted, len(text), False))
    return pieces


def highlight_segments(text: str, spans: Iterable[Sequence[int]]) -> list[tuple[str, bool]]:
    """``text`` split into ``(segment, is_critical)`` pieces whose concatenation is exactly ``text``.

    Raises ValueError (naming the span and the text length) for a span outside the text, a reversed
    span, or spans that are unsorted or overlap.
    """
    return [(text[s:e], critical) for s, e, critical in _validated_pieces(text, spans)]


def _counts(row: Mapping[str, Any]) -> tuple[int, int]:
    """(num_critical, num_tokens), falling back to the per-token lists when the totals are absent."""
    critical = row.get("critical") or []
    num_tokens = row.get("num_tokens")
    num_critical = row.get("num_critical")
    if num_tokens is None:
        num_tokens = len(row.get("tokens") or critical)
    if num_critical is None:
        num_critical = sum(bool(c) for c in critical)
    return int(num_critical), int(num_tokens)


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0  # a row with no tokens is 0% critical, not a crash


def _header(row: Mapping[str, Any]) -> str:
    n_crit, n_tok = _counts(row)
    return (
        f"{row.get('id', '?')}  gold={row.get('answer', '')}  "
        f"critical {n_crit}/{n_tok} ({_percent(n_crit, n_tok):.1f}%)"
    )


def render_terminal(row: Mapping[str, Any], color: bool = True) -> str:
    """Header line, then the solution with critical spans in bold red (or ``[[...]]`` without color)."""
    open_, close = (ANSI_CRITICAL, ANSI_RESET) if color else (PLAIN_OPEN, PLAIN_CLOSE)
    body = "".join(
        f"{open_}{seg}{close}" if critical else seg
        for seg, critical in highlight_segments(row["solution"], row.get("critical_spans") or [])
    )
    return f"{_header(row)}\n{body}"


def _describe_answer(answer: str | None) -> str:
    return "(no answer)" if answer is None else repr(answer)


def _span_title(row: Mapping[str, Any], start: int, end: int) -> str:
    """Tooltip for one highlight: what the alternatives to its first token led to.

    That is the evidence behind the label (every alternative missed the gold answer), so it is what a
    reader hovering over a critical token wants to check. Rows without per-token data just say "critical".
    """
    char_spans = row.get("token_char_spans") or []
    alternatives = row.get("alternative_answers") or []
    for i, (t_start, t_end) in enumerate(char_spans):
        # The first token overlapping the span; a zero-width token at ``start`` also counts.
        if t_start < end and (t_end > start or t_start == start):
            if i >= len(alternatives) or not alternatives[i]:
                break
            listed = ", ".join(_describe_answer(a) for a in alternatives[i])
            return f"critical; gold {row.get('answer', '')!r}; alternatives led to: {listed}"
    return "critical"


def _solution_html(row: Mapping[str, Any]) -> str:
    text = row["solution"]
    parts = []
    for s, e, critical in _validated_pieces(text, row.get("critical_spans") or []):
        segment = html.escape(text[s:e])
        if critical:
            title = html.escape(_span_title(row, s, e), quote=True)
            parts.append(f'<mark class="critical" title="{title}">{segment}</mark>')
        else:
            parts.append(segment)
    return "".join(parts)


def _card_html(row: Mapping[str, Any]) -> str:
    n_crit, n_tok = _counts(row)
    esc = html.escape
    return (
        '<section class="card">\n'
        f"<h2>{esc(str(row.get('id', '?')))}</h2>\n"
        f'<p class="meta">gold: <code>{esc(str(row.get("answer", "")))}</code> &middot; '
        f"critical {n_crit}/{n_tok} ({_percent(n_crit, n_tok):.1f}%)</p>\n"
        f'<div class="question">{esc(str(row.get("question", "")))}</div>\n'
        f'<div class="solution">{_solution_html(row)}</div>\n'
        "</section>"
    )


def _summary_html(rows: Sequence[Mapping[str, Any]]) -> str:
    counts = [_counts(r) for r in rows]
    n_crit = sum(c for c, _ in counts)
    n_tok = sum(t for _, t in counts)
    return (
        '<table class="summary">\n'
        "<tr><th>rows</th><th>tokens</th><th>critical tokens</th><th>critical fraction</th></tr>\n"
        f"<tr><td>{len(rows)}</td><td>{n_tok}</td><td>{n_crit}</td>"
        f"<td>{_percent(n_crit, n_tok):.1f}%</td></tr>\n"
        "</table>"
    )


# Inline CSS only: the page must open from a file anywhere (offline machines, attachments) unchanged.
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; }
table.summary { border-collapse: collapse; margin-bottom: 1.5em; }
table.summary th, table.summary td { border: 1px solid #999; padding: 0.3em 0.8em; text-align: right; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 0.8em 1.2em; margin-bottom: 1.2em; }
.card h2 { font-size: 1.05em; margin: 0 0 0.3em; }
.meta { color: #555; margin: 0 0 0.6em; }
.question { white-space: pre-wrap; font-style: italic; margin-bottom: 0.6em; }
.solution { white-space: pre-wrap; font-family: ui-monospace, monospace; line-height: 1.5; }
mark.critical { background: #f4a4a4; font-weight: bold; border-radius: 2px;
                box-shadow: inset -1px 0 0 #b00; cursor: help; }
.empty { color: #777; }
"""


def render_html(rows: Iterable[Mapping[str, Any]], title: str = "Critical tokens") -> str:
    """One self-contained HTML page: a summary table, then a card per row with highlighted solution."""
    rows = list(rows)  # also accepts a datasets.Dataset or a generator; we iterate twice
    cards = "\n".join(_card_html(r) for r in rows) if rows else '<p class="empty">No rows.</p>'
    esc_title = html.escape(title)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc_title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{esc_title}</h1>\n{_summary_html(rows)}\n{cards}\n</body>\n</html>\n"
    )


def write_html(rows: Iterable[Mapping[str, Any]], path: str | Path, title: str = "Critical tokens") -> Path:
    """Write ``render_html(rows)`` to ``path`` as utf-8 (creating parent folders) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(rows, title=title), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """``cft-rl render DIR``: show an annotation's critical tokens in the terminal and as HTML."""
    import argparse
    import json
    import sys

    import datasets  # heavy: only when rendering

    p = argparse.ArgumentParser(prog="cft-rl render", description=main.__doc__.splitlines()[0])
    p.add_argument("dir", help="an annotate --out folder (or its dataset/ folder)")
    p.add_argument("--limit", type=int, default=5, help="rows to print")
    p.add_argument("--html", default=None, help="write a self-contained HTML page of all rows here")
    p.add_argument("--no-color", action="store_true")
    args = p.parse_args(argv)
    path = Path(args.dir)
    path = path / "dataset" if (path / "dataset").is_dir() else path
    if not path.is_dir():
        raise ValueError(
            f"{args.dir} holds no annotation dataset; run `cft-rl annotate --out {args.dir}` first"
        )
    rows = datasets.load_from_disk(str(path))
    if not len(rows):
        summary = path.parent / "summary.json"
        why = ""
        if summary.is_file():
            from cft_rl.annotate.job import describe  # the summary line, needed only here

            why = f" ({describe(json.loads(summary.read_text()))})"
        print(f"{path} holds no annotated rows{why}")
    for row in rows.select(range(min(args.limit, len(rows)))):
        print(render_terminal(row, color=not args.no_color and sys.stdout.isatty()), end="\n\n")
    if args.html:
        print(f"wrote {write_html(rows, args.html)}")
    return 0
