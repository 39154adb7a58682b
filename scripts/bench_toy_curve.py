"""A toy build's accuracy along its pretraining run, on its easy and its hard problems apart.

Builds one toy exactly as ``cft-rl toy build`` does (the same weights: tests/test_toy_schedule.py checks
that watching a run leaves its model unchanged), and at each ``--every`` step measures greedy accuracy
on the first ``--problems`` train problems: overall, on the easy ones and on the hard ones (those ending
with the multiplication that pretraining mostly leaves out, ``ToyTaskConfig.hard_prob``). Graded
difficulty is meant to put accuracy on a plateau, the easy problems learnt and the hard ones partly; the
two columns show whether a build is there or still climbing. Under a cosine schedule a point along one
run is not a shorter build (its learning rate has not decayed yet): the steps builds of
``scripts/bench_toy.py`` measure those.

    python scripts/bench_toy_curve.py --out DIR --seed S [--set key=json ...] [--every 1000 2000 3000]

The build goes in ``DIR/seed{S}`` (or ``DIR/seed{S}-steps{N}`` under ``--set steps=N``), as
``scripts/bench_toy.py`` names it, with its curve beside it (``DIR/seed{S}.curve.json``): run one process
per seed, then ``bench_toy.py --out DIR`` measures the builds and adds their curves to its section.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

CURVE = ".curve.json"


def greedy_correct(
    model, tokenizer, prompts: list[str], answers: list[str], max_new_tokens: int
) -> list[bool]:
    """Whether ``model``'s greedy completion of each prompt states its answer."""
    from cft_rl.eval.scoring import score_groups
    from cft_rl.generation import generate

    groups = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    return [verdicts[0].score == 1.0 for verdicts in score_groups(groups, answers)[1]]


def greedy_accuracy(model, tokenizer, rows, max_new_tokens: int) -> float:
    """Greedy accuracy of ``model`` on dataset ``rows`` (their ``prompt`` and ``answer`` columns)."""
    correct = greedy_correct(model, tokenizer, rows["prompt"], rows["answer"], max_new_tokens)
    return sum(correct) / len(correct)


def by_difficulty(correct: list[bool], hard: list[bool]) -> dict:
    """Accuracy overall, on the easy and on the hard problems (None for a kind with no problem)."""

    def mean(values):
        return sum(values) / len(values) if values else None

    return {
        "all": mean(correct),
        "easy": mean([c for c, h in zip(correct, hard, strict=True) if not h]),
        "hard": mean([c for c, h in zip(correct, hard, strict=True) if h]),
    }


def train_problems(config, n: int) -> list:
    """The first ``n`` train problems of build ``config`` (``Problem`` objects: they know ``hard``)."""
    from cft_rl.toy.build import world_problems

    return world_problems(config)["train"][:n]


def train_greedy(model, tokenizer, data, config, n: int, max_new_tokens: int) -> dict:
    """Greedy correctness of a build's model on the first ``n`` rows of its train split, with each
    row's prompt and whether its problem is hard (``data`` and ``config``: the build's, from
    :func:`~cft_rl.toy.build.load_toy` and its manifest)."""
    train = data["train"].select(range(min(n, len(data["train"]))))
    return {
        "prompts": list(train["prompt"]),
        "hard": [p.hard for p in train_problems(config, len(train))],
        "correct": greedy_correct(model, tokenizer, train["prompt"], train["answer"], max_new_tokens),
    }


def curve_path(folder: Path) -> Path:
    return folder.with_name(folder.name + CURVE)


def read_curve(folder: Path, key: str) -> list[dict] | None:
    """The curve recorded while ``folder``'s build was made, if it was made with key ``key``."""
    path = curve_path(folder)
    if not path.is_file():
        return None
    found = json.loads(path.read_text())
    return found["points"] if found.get("key") == key else None


def curve_table(results: list[dict]) -> str:
    """A row per recorded point of every build that has a curve, then the saved build's own figures."""
    from cft_rl.reports import markdown_table

    def row(label, step, found: dict) -> list:
        return [
            label,
            step,
            *("–" if found[k] is None else f"{found[k]:.1%}" for k in ("all", "easy", "hard")),
        ]

    rows = []
    for r in results:
        if r.get("curve"):
            rows += [row(r["name"], point["step"], point) for point in r["curve"]]
            rows.append(row(f"**{r['name']} (saved)**", r["steps"], r["train_difficulty"]))
    return markdown_table(["build", "step", "greedy (train)", "easy", "hard"], rows) if rows else ""


def main() -> int:
    from bench_toy import parse_overrides, refuse_other_settings

    from cft_rl.toy.build import ToyBuildConfig, build_toy, is_built
    from cft_rl.toy.task import to_records

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder of the builds (bench_toy.py's --out)")
    parser.add_argument("--seed", type=int, required=True, help="build seed")
    parser.add_argument("--set", nargs="*", default=[], help="ToyBuildConfig overrides, key=json")
    parser.add_argument("--every", type=int, nargs="+", required=True, help="steps at which to measure")
    parser.add_argument("--problems", type=int, default=100, help="train problems to measure on")
    parser.add_argument("--max-new-tokens", type=int, default=224, help="generation budget")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    config = ToyBuildConfig.from_dict({**overrides, "seed": args.seed})
    name = f"seed{args.seed}" + (f"-steps{config.steps}" if "steps" in overrides else "")
    folder = Path(args.out) / name
    refuse_other_settings(folder, config)
    if is_built(folder, config):
        raise SystemExit(f"{folder} is built already; delete it to record its curve from a new run")
    # The problems are regenerated once, not at every measured step.
    problems = train_problems(config, args.problems)
    rows = to_records(problems, "train", config.seed, config.task)
    prompts, answers, hard = (
        [r["prompt"] for r in rows],
        [r["answer"] for r in rows],
        [p.hard for p in problems],
    )
    points, start = [], time.perf_counter()

    def measure(step):
        def at(model, tokenizer):
            correct = greedy_correct(model, tokenizer, prompts, answers, args.max_new_tokens)
            found = by_difficulty(correct, hard)
            points.append({"step": step, **found, "seconds": round(time.perf_counter() - start)})
            print(json.dumps(points[-1]), file=sys.stderr, flush=True)

        return at

    build_toy(folder, config, rebuild=True, at_steps={n: measure(n) for n in args.every if n < config.steps})
    curve_path(folder).write_text(json.dumps({"key": config.key(), "points": points}, indent=2) + "\n")
    print(f"{folder}: built, curve in {curve_path(folder)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
