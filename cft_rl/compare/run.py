"""``cft-rl compare RUN_DIR...``: the command, from its flags to the report folder.

The data side is :mod:`cft_rl.compare.analysis`, the figures and pages :mod:`cft_rl.compare.report`.
"""

from __future__ import annotations

import sys

from cft_rl.compare import analysis
from cft_rl.compare.analysis import CompareConfig, build_report
from cft_rl.config_types import config_from_flags, config_parser, parse_flags


def main(argv: list[str] | None = None) -> int:
    """``cft-rl compare RUN_DIR... [--flag value]``: every ``CompareConfig`` field is a flag."""
    from cft_rl.compare.report import report_markdown, write_report  # matplotlib: not for `cft-rl --help`

    parser = config_parser(CompareConfig, "cft-rl compare", analysis.__doc__.splitlines()[0], {"runs": "*"})
    config = config_from_flags(CompareConfig, parse_flags(parser, CompareConfig, argv))
    report = build_report(config)
    out = write_report(report, config)
    print(report_markdown(report, config))
    print(f"wrote {out}/report.html, report.md, report.json and figures/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
