"""Reports: the shared ``docs/benchmarks.md`` and (later) run comparisons.

Every benchmark script owns one section of ``docs/benchmarks.md``, fenced by HTML comments, and
rewrites only that section. Scripts can then be rerun one at a time without clobbering each other's
figures, and every section records the command that produced it.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
_HEADER = "# Benchmarks\n\nFigures written by `scripts/bench_*.py`; each section names the command that produced it.\n"


def machine_line() -> str:
    """Where a figure was measured: these machines are noisy, so always say which one."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"


def alternating(names: list[str], rounds: int):
    """``(round, name)`` for every arm in every round, the order reversed on odd rounds: a benchmark's
    arms take turns, so that drift of a shared machine within a round hits each arm alike."""
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            yield round_index, name


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_block(text: str, start: str, end: str, block: str) -> str | None:
    """``text`` with everything from marker ``start`` to marker ``end`` replaced by ``block`` (which
    carries the markers again); None when ``text`` lacks them, for the caller to append or refuse."""
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    return pattern.sub(lambda _: block, text) if pattern.search(text) else None


def bench_command(script: str, argv: list[str] | None = None) -> str:
    """The command line that reruns ``script`` with ``argv`` (default: this process's arguments), quoted
    as a shell needs it: a section's command must still run when an argument holds spaces or quotes."""
    return "python " + shlex.join([script, *(sys.argv[1:] if argv is None else argv)])


def write_section(name: str, body: str, command: str, path: Path = BENCHMARKS_MD) -> Path:
    """Replace (or append) the section ``name`` of the benchmarks file with ``body``."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{body.rstrip()}\n\nCommand: `{command}` ({machine_line()})\n{end}"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else _HEADER
    replaced = replace_block(text, start, end, block)
    path.write_text(replaced if replaced is not None else text.rstrip() + "\n\n" + block + "\n")
    return path
