"""The demo's figures: wall time per stage and what the toy experiment showed, from a finished pipeline.

    make demo && python scripts/bench_demo.py --pipeline outputs/pipeline/toy
    make experiment && python scripts/bench_demo.py --pipeline outputs/pipeline/toy --section experiment
    python scripts/bench_demo.py --pipeline DIR --section experiment-arms --ran "cft-rl pipeline ..."

(the last for the experiment with more arms, run on a copy of its output_dir; ``--ran`` names the
pipeline command that made the run, for the section's command line.)

Reads the stage manifests (each records its own seconds and finish time) and the report, so the
figures are those of the run itself rather than of a second run. Only the stages of the last run count:
``compare`` and what it read from, so another recipe's stages left in the folder (the experiment's extra
arms, after the demo ran there) are not counted. The wall time is the time during which
at least one stage was running (the union of the stages' start-to-finish spans): with ``lanes`` several
stages run at once, so it is less than the sum of their seconds, and a pause between two runs (the demo,
then the experiment's remaining stages) does not count. Such a pause (no stage running for over a
minute) is reported, and the time is then not called a from-scratch time: run the pipeline in a fresh
output_dir for one.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

from cft_rl.reports import bench_command, markdown_table, write_section


def load_manifests(root: Path) -> list[dict]:
    """The manifests of the stages the last pipeline run compared: ``compare`` and what it read from,
    transitively (each manifest names its inputs). A folder can hold other stages, left by a run of
    another recipe in the same output_dir (the demo after the experiment leaves the experiment's extra
    arms); counting them would report another run's times and arms."""
    paths = [p for p in sorted(root.glob("**/manifest.json")) if ".superseded" not in p.parts]
    by_stage = {m["stage"]: m for m in (json.loads(p.read_text()) for p in paths) if "stage" in m}
    if "compare" not in by_stage:
        raise SystemExit(f"no compare stage in {root}; run the pipeline to its end first")
    manifests = [by_stage[s] for s in sorted(run_stages(by_stage, "compare"))]
    unfinished = [m["stage"] for m in manifests if m.get("status") != "done"]
    if unfinished:
        raise SystemExit(f"stages not finished: {unfinished}; rerun the pipeline first")
    return manifests


def run_stages(by_stage: dict[str, dict], last: str) -> set[str]:
    """``last`` and every stage it reads from, transitively (a manifest's ``inputs`` name its stages)."""
    seen: set[str] = set()
    todo = [last]
    while todo:
        stage = todo.pop()
        if stage in seen:
            continue
        seen.add(stage)
        inputs = list(by_stage[stage].get("inputs", {}))
        missing = [s for s in inputs if s not in by_stage]
        if missing:
            raise SystemExit(f"{stage} read from {missing}, whose manifests are gone; rerun the pipeline")
        todo.extend(inputs)
    return seen


PAUSE_S = 60.0  # no stage running for longer than this: the stages came from more than one run


def merged_spans(spans: list[tuple[float, str]]) -> list[tuple[datetime, datetime]]:
    """The union of the stages' spans as disjoint intervals, in order; each span is given as
    ``(seconds, finished)`` (a manifest's own figure and its ``%Y-%m-%dT%H:%M:%S`` finish), so that the
    span is the one timed."""
    ends = [(seconds, datetime.fromisoformat(finished)) for seconds, finished in spans]
    parsed = sorted((end - timedelta(seconds=seconds), end) for seconds, end in ends)
    merged: list[tuple[datetime, datetime]] = []
    for start, finish in parsed:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], finish))
        else:
            merged.append((start, finish))
    return merged


def busy_seconds(spans: list[tuple[float, str]]) -> float:
    """Seconds during which at least one stage ran."""
    return sum((finish - start).total_seconds() for start, finish in merged_spans(spans))


def pauses(spans: list[tuple[float, str]], longer_than: float = PAUSE_S) -> list[float]:
    """The idle gaps (seconds) between stages longer than ``longer_than``: a pipeline run starts each
    stage as the last one it waits for ends, so such a gap means the stages came from several runs."""
    merged = merged_spans(spans)
    gaps = [(b[0] - a[1]).total_seconds() for a, b in zip(merged, merged[1:], strict=False)]
    return [g for g in gaps if g > longer_than]


def stage_spans(manifests: list[dict]) -> list[tuple[float, str]]:
    return [(m["seconds"], m["finished"]) for m in manifests]


def time_table(manifests: list[dict]) -> tuple[str, float]:
    by_kind: dict[str, list[float]] = defaultdict(list)
    threads: dict[str, set[int]] = defaultdict(set)  # the counts `threads:` gave the stages (if set)
    for m in manifests:
        by_kind[m["kind"]].append(m["seconds"])
        if m.get("threads"):
            threads[m["kind"]].add(m["threads"]["threads"])
    order = ["toy", "annotate", "sft", "grpo", "eval", "compare"]
    rows = [
        [k, len(by_kind[k]), f"{sum(by_kind[k]):.0f}", "/".join(map(str, sorted(threads[k]))) or "-"]
        for k in order
        if k in by_kind
    ]
    total = sum(sum(v) for v in by_kind.values())
    rows.append(["total", len(manifests), f"{total:.0f} ({total / 60:.1f} min)", ""])
    wall = busy_seconds(stage_spans(manifests))
    rows.append(["**wall time**", "", f"**{wall:.0f}** ({wall / 60:.1f} min)", ""])
    return markdown_table(["stage kind", "stages", "seconds", "torch threads"], rows), wall


def wall_sentence(manifests: list[dict], wall: float, budget: int) -> str:
    """What the wall time is: a from-scratch time only when no pause splits the stages into runs."""
    gaps = pauses(stage_spans(manifests))
    how = (
        "the time during which at least one stage ran, from the stage manifests' seconds and finish times. "
        "The table's seconds are each stage's own, summed; with lanes, stages overlap."
    )
    if not gaps:
        return f"From scratch on this machine: **{wall / 60:.1f} min** wall time (budget: {budget} min on 2 cores, setup excluded): {how}"
    return (
        f"**Not a from-scratch time:** these stages ran in {len(gaps) + 1} pipeline runs (pauses of "
        f"{', '.join(f'{g / 60:.1f}' for g in gaps)} min between them, left out), so the {wall / 60:.1f} min "
        f"below is not comparable with the budget of {budget} min: {how} Run the recipe in a fresh "
        "output_dir for a from-scratch time."
    )


def reward_table(manifests: list[dict]) -> str:
    rows = []
    by_arm: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for m in manifests:
        out = m.get("outputs") or {}
        if m["kind"] == "grpo" and "reward_first" in out:
            arm = m["stage"].split("/")[1]
            by_arm[arm].append((out["reward_first"], out["reward_last"]))
            rows.append([m["stage"], out["steps"], f"{out['reward_first']:.3f}", f"{out['reward_last']:.3f}"])
    for arm, pairs in by_arm.items():
        first = statistics.mean(p[0] for p in pairs)
        last = statistics.mean(p[1] for p in pairs)
        rows.append([f"**{arm}** (mean of {len(pairs)} seeds)", "", f"{first:.3f}", f"{last:.3f}"])
    return markdown_table(["GRPO run", "steps", "mean reward, first 20 steps", "last 20 steps"], rows)


def probe_table(manifests: list[dict]) -> str:
    """Per arm, mean over seeds of the fixed probe at its first and last logging: the comparable curve."""
    by_arm: dict[str, list[list[dict]]] = defaultdict(list)
    for m in manifests:
        if m["kind"] != "grpo":
            continue
        state = Path(m["settings"]["output_dir"]) / "trainer_state.json"
        if state.is_file():
            history = json.loads(state.read_text())["log_history"]
            by_arm[m["stage"].split("/")[1]].append([e for e in history if "probe/pass@1" in e])
    rows = []
    for arm, runs in by_arm.items():
        runs = [r for r in runs if r]
        if not runs:
            continue
        cells = []
        for name in ("probe/pass@1", "probe/entropy"):
            first = statistics.mean(r[0][name] for r in runs)
            last = statistics.mean(r[-1][name] for r in runs)
            cells.append(f"{first:.3f} -> {last:.3f}")
        rows.append([arm, len(runs), runs[0][-1]["step"], *cells])
    return markdown_table(["arm", "seeds", "last step", "`probe/pass@1`", "`probe/entropy`"], rows)


def annotation_table(manifests: list[dict]) -> str:
    """The annotate stage's summary: solutions annotated, critical fraction overall and by token class."""
    summary = next((m["outputs"]["summary"] for m in manifests if m["kind"] == "annotate"), None)
    if not summary:
        return "(no annotate stage)"
    rows = [
        ["all", summary["total_tokens"], summary["critical_tokens"], f"{summary['critical_fraction']:.1%}"]
    ]
    for name, c in sorted(summary["by_class"].items()):
        rows.append([name, c["tokens"], c["critical"], f"{c['fraction']:.1%}"])
    head = (
        f"Critical tokens of the base model's own correct greedy solutions: {summary['annotated']} of "
        f"{summary['total_rows']} train problems solved and annotated.\n\n"
    )
    return head + markdown_table(["token class", "tokens", "critical", "critical fraction"], rows)


HEADLINES = ("## Verdict", "## Controls", "## RL learning")
TITLES = {
    "demo": "## The demo: `make demo` (recipes/toy/pipeline.yaml)",
    "experiment": "## The powered experiment: `make experiment` (recipes/toy/experiment.yaml)",
    # The experiment with arms its 90-minute budget leaves out (numeric, sftkey), added to a copy of
    # its output_dir: the pipeline reuses the stages it has and runs only the new arms'.
    "experiment-arms": "## The powered experiment with more arms (recipes/toy/experiment.yaml, more `sft.arms`)",
}
BUDGETS = {"demo": 20, "experiment": 90, "experiment-arms": 90}


def report_sections(report: str, headings: tuple[str, ...]) -> str:
    """The report's sections whose heading starts with one of ``headings``, verbatim, one level down."""
    parts = ["\n## " + p for p in report.split("\n## ")[1:]]
    keep = [p.strip() for p in parts if p.strip().startswith(headings)]
    return "\n\n".join("#" + p for p in keep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="outputs/pipeline/toy", help="a finished pipeline's output_dir")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/benchmarks.md")
    parser.add_argument("--section", choices=list(TITLES), default="demo", help="which recipe ran")
    parser.add_argument(
        "--ran", default=None, help="the command that made the pipeline (default: make <section>)"
    )
    args = parser.parse_args(argv)
    root = Path(args.pipeline)
    manifests = load_manifests(root)
    times, total = time_table(manifests)
    report = (root / "compare" / "report.md").read_text()
    accuracy = report.split("## Accuracy (greedy, %)", 1)[1].split("\n## ", 1)[0].strip()
    body = (
        f"{TITLES[args.section]}\n\n"
        f"{wall_sentence(manifests, total, BUDGETS[args.section])}\n\n"
        f"{report_sections(report, HEADLINES)}\n\n{annotation_table(manifests)}\n\n"
        f"{times}\n\nGRPO training reward (windows of up to 20 steps; with fewer steps they overlap):\n\n"
        f"{reward_table(manifests)}\n\nThe fixed probe (held-out prompts, T=1), first and last probe, mean over seeds:\n\n"
        f"{probe_table(manifests)}\n\nGreedy accuracy on the toy test split (%):\n\n{accuracy}\n\n"
        f"The curves and the rest: `{root}/compare/report.html`."
    )
    print(body)
    if not args.no_write:
        ran = args.ran or f"make {args.section}"
        # ``--ran`` is already shell text; the rest is quoted, so a folder with spaces reruns as itself.
        rerun = bench_command("scripts/bench_demo.py", ["--pipeline", str(root), "--section", args.section])
        command = f"{ran} && {rerun}"
        write_section(args.section, body, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
