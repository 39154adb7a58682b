"""Is a toy base model on a plateau in its pretraining steps? Each steps build against its seed's build,
problem by problem, on many train problems.

Issue 17's line "±10% pretraining steps move accuracy by at most 5 points" is a question of a few
points: on 200 problems each build's accuracy alone has a binomial standard error of up to 3.5 points
(sqrt(0.25 / 200)), not far from the bound itself. This script measures each build's greedy correctness
on many more train problems (by default all 2,000 of the default world) and reports each steps build's
change against its reference build as the mean of the per-problem differences, with its standard error
and 95% t interval (:func:`cft_rl.compare.effects.mean_interval`; the problems are the same, so the
difference is paired), overall and on the easy and hard problems apart.

    python scripts/bench_toy_steps.py --pair REF OTHER [OTHER ...] [--pair ...] [--problems 2000]
        [--bound 5] [--json PATH] [--no-write] [--section NAME --title TEXT]

REF and each OTHER are toy build folders of one world (``cft-rl toy build`` or ``scripts/bench_toy.py``
builds that differ only in their pretraining steps): the script refuses a pair whose train problems
differ. A build's correctness is kept beside it (``<build>.greedy-<key>-<settings>.json``), so a rerun
measures only new builds. Writes the ``toy-steps`` section of docs/benchmarks.md (or ``--section``).
``scripts/bench_toy.py`` measures its steps builds the same way (its ``--steps-problems``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench_toy_curve import by_difficulty, train_greedy

from cft_rl.compare.effects import mean_interval
from cft_rl.outputs import settings_key
from cft_rl.reports import bench_command, markdown_table, write_section
from cft_rl.toy.build import MANIFEST, ToyBuildConfig, load_toy

SECTION = "toy-steps"


def measure(folder: Path, problems: int, max_new_tokens: int) -> dict:
    """Greedy correctness of ``folder``'s model on its first ``problems`` train problems, with each
    problem's prompt and difficulty (kept beside the build under its key and these settings)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    settings = {"problems": problems, "max_new_tokens": max_new_tokens}
    path = folder.with_name(f"{folder.name}.greedy-{manifest['key']}-{settings_key(settings)}.json")
    if path.is_file():
        return json.loads(path.read_text())
    from cft_rl.cpu import cpu_float_math

    model, tokenizer, data = load_toy(folder)
    config = ToyBuildConfig.from_dict(manifest["config"])
    # One thread: builds are measured beside other jobs (a second thread on a busy core spins), and
    # greedy decoding came out the same, problem for problem, on one thread and on two (the default
    # build, 2,000 problems, 2026-12-07).
    with cpu_float_math(1):
        train = train_greedy(model, tokenizer, data, config, problems, max_new_tokens)
    found = {"build": folder.name, "key": manifest["key"], "steps": config.steps, **train}
    path.write_text(json.dumps(found) + "\n")
    return found


def paired_change(ref: dict, other: dict, bound: float) -> dict:
    """``other``'s accuracy change over ``ref`` on the same problems: overall (mean of the per-problem
    differences, in points, with SE and 95% t interval) and on easy and hard problems apart."""
    if ref["prompts"] != other["prompts"]:
        raise SystemExit(
            f"{other['build']} and {ref['build']} are builds of different worlds (their train problems "
            "differ): pair each steps build with its own seed's build"
        )
    diffs = [100.0 * (int(o) - int(r)) for r, o in zip(ref["correct"], other["correct"], strict=True)]
    change = mean_interval(diffs)
    acc_ref, acc_other = (
        by_difficulty(ref["correct"], ref["hard"]),
        by_difficulty(other["correct"], other["hard"]),
    )
    return {
        "build": other["build"],
        "reference": ref["build"],
        "steps": other["steps"],
        "reference_steps": ref["steps"],
        "problems": len(diffs),
        "accuracy": acc_other,
        "reference_accuracy": acc_ref,
        "change": change,
        "change_easy": _points(acc_other["easy"], acc_ref["easy"]),
        "change_hard": _points(acc_other["hard"], acc_ref["hard"]),
        "within_bound": abs(change["mean"]) <= bound,
    }


def _points(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else 100.0 * (a - b)


def render(rows: list[dict], bound: float) -> str:
    """The table of the section: a row per steps build, then the check over all of them."""
    passed = all(r["within_bound"] for r in rows)
    changes = ", ".join(f"{r['build']} {r['change']['mean']:+.1f} pt" for r in rows)
    check = (
        f"Check (issue 17): every steps build within {bound:g} pt of its seed's build: "
        f"{'**yes**' if passed else '**no**'} ({changes})."
    )
    return f"{table(rows, bound)}\n\n{check}"


def table(rows: list[dict], bound: float) -> str:
    """A row per steps build: its accuracy, its reference's, and the paired change."""

    def pct(x):
        return "–" if x is None else f"{x:.1%}"

    def pt(x):
        return "–" if x is None else f"{x:+.1f} pt"

    return markdown_table(
        ["build", "steps", "against", "problems", "greedy (train)", "easy", "hard", "change [95% CI]",
         "SE", "change: easy", "change: hard", f"within ±{bound:g} pt"],
        [
            [r["build"], r["steps"], f"{r['reference']} ({r['reference_steps']} steps, "
             f"{pct(r['reference_accuracy']['all'])})", r["problems"], pct(r["accuracy"]["all"]),
             pct(r["accuracy"]["easy"]), pct(r["accuracy"]["hard"]),
             f"{r['change']['mean']:+.1f} pt [{r['change']['low']:+.1f}, {r['change']['high']:+.1f}]",
             f"{r['change']['se']:.1f} pt", pt(r["change_easy"]), pt(r["change_hard"]),
             "yes" if r["within_bound"] else "**no**"]
            for r in rows
        ],
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pair", nargs="+", action="append", required=True, metavar="BUILD",
        help="a reference build folder, then its steps builds (repeat for each seed)",
    )  # fmt: skip
    parser.add_argument("--problems", type=int, default=2000, help="train problems to measure on")
    parser.add_argument("--max-new-tokens", type=int, default=224, help="generation budget")
    parser.add_argument("--bound", type=float, default=5.0, help="the largest allowed change, in points")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--section", default=SECTION, help="the docs/benchmarks.md section to write")
    parser.add_argument("--title", default="", help="what the builds are, added to the section's heading")
    args = parser.parse_args()
    if any(len(group) < 2 for group in args.pair):
        parser.error("each --pair needs a reference build and at least one steps build")
    rows = []
    for ref_dir, *others in args.pair:
        ref = measure(Path(ref_dir), args.problems, args.max_new_tokens)
        for other in others:
            found = measure(Path(other), args.problems, args.max_new_tokens)
            rows.append(paired_change(ref, found, args.bound))
            print(table(rows[-1:], args.bound).splitlines()[2], flush=True)
    body = render(rows, args.bound)
    command = bench_command("scripts/bench_toy_steps.py")
    text = (
        "## Toy base model: accuracy against pretraining steps, on many problems"
        f"{f' ({args.title})' if args.title else ''}\n\n"
        f"Greedy accuracy of each build on the first {args.problems} train problems of its world "
        f"(budget {args.max_new_tokens} tokens), and each steps build's change against its seed's build: "
        "the mean of the per-problem differences (the same problems), with its standard error and 95% "
        f"t interval.\n\n{body}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if not args.no_write:
        write_section(args.section, text, command)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
