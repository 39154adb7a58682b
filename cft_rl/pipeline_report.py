"""The pipeline's accuracy table: every evaluated model, GRPO seeds pooled per arm.

Why mean and spread over seeds, and every seed listed: one GRPO seed can land far from another on a
small model, and a table of single seeds invites picking the flattering one.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from cft_rl.reports import markdown_table


def _group(stage: str) -> tuple[str, str]:
    """``eval/grpo/critical/seed1`` -> (``grpo/critical``, ``seed1``); other models are their own group."""
    name = stage.removeprefix("eval/")
    head, _, tail = name.rpartition("/")
    return (head, tail) if tail.startswith("seed") and head else (name, "")


def accuracy_rows(evals: dict[str, str]) -> tuple[list[str], dict[str, dict[str, list[float]]]]:
    """(benchmarks, {group: {benchmark: [accuracy per seed]}}) of finished eval folders."""
    from cft_rl.eval_job import load_results

    benchmarks: list[str] = []
    groups: dict[str, dict[str, list[float]]] = {}
    for stage, folder in evals.items():
        if not (Path(folder) / "summary.json").is_file():
            continue
        _, results = load_results(folder)
        group = groups.setdefault(_group(stage)[0], {})
        for bench, summary in results.items():
            if bench not in benchmarks:
                benchmarks.append(bench)
            group.setdefault(bench, []).append(summary["accuracy"])
    return benchmarks, groups


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f} (n={len(values)})"


def accuracy_section(evals: dict[str, str]) -> str:
    """Markdown: greedy accuracy (%) per model and benchmark; GRPO arms as mean ± sd over seeds."""
    benchmarks, groups = accuracy_rows(evals)
    if not groups:
        return "## Accuracy\n\nNo evaluation finished.\n"
    rows = [[name, *(_cell(results.get(b, [])) for b in benchmarks)] for name, results in groups.items()]
    seeds = [
        [
            stage.removeprefix("eval/"),
            *(f"{100 * r[b]['accuracy']:.1f}" if b in r else "-" for b in benchmarks),
        ]
        for stage, folder in evals.items()
        if _group(stage)[1] and (Path(folder) / "summary.json").is_file()
        for r in [_results(folder)]
    ]
    parts = [
        "## Accuracy (greedy, %)\n",
        "GRPO rows pool the seeds: mean ± standard deviation over n seeds; every seed is listed below.\n",
        markdown_table(["model", *benchmarks], rows),
    ]
    if seeds:
        parts += ["\n## Accuracy per GRPO seed (greedy, %)\n", markdown_table(["run", *benchmarks], seeds)]
    return "\n".join(parts) + "\n"


def _results(folder: str) -> dict:
    from cft_rl.eval_job import load_results

    return load_results(folder)[1]
