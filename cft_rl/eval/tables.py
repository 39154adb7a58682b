"""Tables of evaluation results: one job's benchmarks, the CFT paper's layout, and the pipeline's
accuracy table across models.

Why the pipeline's table shows mean and spread over seeds, and every seed too: one GRPO seed can land
far from another on a small model, and a table of single seeds invites picking the flattering one.
A run named ``.../seed<s>`` is one seed of its group: each GRPO run, and each SFT run when the recipe
trains one per GRPO seed (``sft.seed_per_grpo_seed``: ``eval/sft/full/seed1`` is a seed of ``sft/full``).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from cft_rl.data.benchmarks import PAPER_SUITE
from cft_rl.reports import markdown_table

# Short column headings for the paper-style table (arXiv 2510.10974: a row per model, a column per
# benchmark, then the average), in PAPER_SUITE order.
PAPER_HEADINGS = {
    "gsm8k_test": "GSM8K",
    "math500": "MATH500",
    "svamp": "SVAMP",
    "asdiv": "ASDiv",
    "mawps": "MAWPS",
    "carp_en": "CARP-EN",
    "minerva_math": "Minerva",
    "gaokao2023en": "GaoKao",
    "olympiadbench": "Olympiad",
    "college_math": "College",
    "sat_math": "SAT",
}


def results_table(results: dict[str, dict]) -> str:
    """One row per benchmark: questions, accuracy with its interval, and the sampled metrics."""
    extra = sorted(
        {k for s in results.values() for k, v in s.get("sampled", {}).items() if "@" in k},
        key=lambda k: (k.split("@")[0] != "pass", int(k.split("@")[1])),  # pass@k first, then maj@k
    )
    diversity = ["distinct_answers", "answer_entropy", "entropy"]
    rows = []
    for label, s in results.items():
        low, high = s["accuracy_ci95"]
        sampled = s.get("sampled", {})
        cells = [f"{100 * sampled[k]:.1f}" if k in sampled else "-" for k in extra]
        cells += [f"{sampled[k]:.2f}" if sampled.get(k) is not None else "-" for k in diversity]
        rows.append(
            [
                label,
                s["num_questions"],
                f"{100 * s['accuracy']:.1f}",
                f"{100 * low:.1f}-{100 * high:.1f}",
                *cells,
            ]
        )
    header = ["benchmark", "questions", "accuracy %", "95% CI"] + [f"{k} %" for k in extra]
    return markdown_table(header + (diversity if extra else []), [r if extra else r[:4] for r in rows])


def paper_table(models: dict[str, dict[str, dict]]) -> str:
    """The CFT paper's main-table layout: a row per model, the eleven benchmarks' accuracy (%), Avg.

    ``models``: {model label: {benchmark: summary}}. A benchmark a model lacks shows "-", and its
    average, over the benchmarks it has, is starred.
    """
    rows = []
    for name, results in models.items():
        accs = [results[b]["accuracy"] if b in results else None for b in PAPER_SUITE]
        have = [a for a in accs if a is not None]
        avg = f"{100 * sum(have) / len(have):.1f}" if have else "-"
        cells = [f"{100 * a:.1f}" if a is not None else "-" for a in accs]
        rows.append([name, *cells, avg + ("*" if have and len(have) < len(accs) else "")])
    return markdown_table(["Model", *(PAPER_HEADINGS[b] for b in PAPER_SUITE), "Avg."], rows)


def load_results(folder: str | Path) -> tuple[str, dict[str, dict]]:
    """``(model, {benchmark: summary})`` of a finished eval folder (its summary.json)."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} holds no summary.json: run `cft-rl eval MODEL --out {folder}` first"
        )
    data = json.loads(path.read_text())
    return data["model"], data["benchmarks"]


# --- the pipeline's table across models ------------------------------------------------------------


def _group(stage: str) -> tuple[str, str]:
    """``eval/grpo/critical/seed1`` -> (``grpo/critical``, ``seed1``); other models are their own group."""
    name = stage.removeprefix("eval/")
    head, _, tail = name.rpartition("/")
    return (head, tail) if tail.startswith("seed") and head else (name, "")


def accuracy_rows(evals: dict[str, str]) -> tuple[list[str], dict[str, dict[str, list[float]]]]:
    """(benchmarks, {group: {benchmark: [accuracy per seed]}}) of finished eval folders."""
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
    """Markdown: greedy accuracy (%) per model and benchmark; models of several seeds as mean ± sd."""
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
        "Rows of several seeds (GRPO runs, and SFT runs trained per GRPO seed) pool them: mean ± "
        "standard deviation over n seeds; every seed is listed below.\n",
        markdown_table(["model", *benchmarks], rows),
    ]
    if seeds:
        parts += ["\n## Accuracy per seed (greedy, %)\n", markdown_table(["run", *benchmarks], seeds)]
    return "\n".join(parts) + "\n"


def _results(folder: str) -> dict:
    return load_results(folder)[1]
