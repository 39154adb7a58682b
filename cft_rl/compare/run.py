"""``cft-rl compare RUN_DIR...``: the command, from its flags to the report folder.

The data side is :mod:`cft_rl.compare.analysis`, the figures and pages :mod:`cft_rl.compare.report`.
"""

from __future__ import annotations

import argparse
import sys

from cft_rl.compare import analysis
from cft_rl.compare.analysis import CompareConfig, build_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="TRL output_dirs (trainer_state.json inside)")
    p.add_argument(
        "--labels", nargs="+", default=None, help="one label per run (default: dir name minus seed)"
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help="metric names or globs (default: entropy, reward, pass@k, probe/*, entropy by class)",
    )
    p.add_argument("--out", default="outputs/compare", help="report folder")
    p.add_argument(
        "--band", choices=("minmax", "ci", "none"), default="minmax", help="band around the seed mean"
    )
    p.add_argument("--collapse-metric", default="entropy")
    p.add_argument("--collapse-fraction", type=float, default=0.5, help="collapse: below this x the start")
    p.add_argument("--fit", action="store_true", help="fit R = -a exp(H) + b per label")
    p.add_argument("--entropy-metric", default="entropy")
    p.add_argument("--reward-metric", default="reward")


def run_from_args(args: argparse.Namespace) -> int:
    config = CompareConfig(**{k: v for k, v in vars(args).items() if k in CompareConfig.__dataclass_fields__})
    from cft_rl.compare.report import report_markdown, write_report  # matplotlib: not for `cft-rl --help`

    report = build_report(config)
    out = write_report(report, config)
    print(report_markdown(report, config))
    print(f"wrote {out}/report.html, report.md, report.json and figures/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cft-rl compare", description=analysis.__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
