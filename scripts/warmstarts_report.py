"""The figures and the report of scripts/bench_warmstarts.py: pure functions of what it measured.

``models``: ``{name: {"path", "eval", "seeds": {sampling seed: metrics}, "greedy": dict | None}}``, the
base then each SFT run, named ``<arm>`` (an arm of one SFT run) or ``<arm>/seed<s>`` (one run per GRPO
seed). An arm's *replicates* are what its mean ± sd is over: its one run's sampling seeds, or its runs
(each its mean over the sampling seeds), so that the spread of an arm of several SFT runs is the
training seed's, which one run cannot show.
"""

from __future__ import annotations

import statistics

from cft_rl.reports import markdown_table

REPLICA = ("full", "full_replica")  # the experiment's negative control: full at another SFT seed
# (metric, column title, kind): "pct" fractions, "gap" differences of fractions, "num" plain numbers.
COLUMNS = (
    ("pass@1", "pass@1", "pct"),
    ("pass@k", "pass@{k}", "pct"),
    ("gap", "pass@{k} − pass@1", "gap"),
    ("entropy", "token entropy (nats)", "num"),
    ("distinct_answers", "distinct answers /{k}", "num"),
    ("distinct_completions", "distinct completions /{k}", "num"),
)


# --- statistics over seeds -------------------------------------------------------------------------


def values(model: dict, metric: str) -> list[float]:
    return [m[metric] for m in model["seeds"].values() if m[metric] is not None]


def mean_of(model: dict, metric: str) -> float | None:
    v = values(model, metric)
    return statistics.fmean(v) if v else None


def spread(v: list[float]) -> dict:
    """Mean, sd (None under two values), min and max of a metric's replicates (or differences)."""
    if not v:
        return {"mean": None, "sd": None, "min": None, "max": None}
    sd = statistics.stdev(v) if len(v) > 1 else None
    return {"mean": statistics.fmean(v), "sd": sd, "min": min(v), "max": max(v)}


def arms_of(models: dict[str, dict]) -> dict[str, list[str]]:
    """``{arm: its runs' names}``: the base, then each arm (``full``, or ``full/seed0``, ``full/seed1``...)."""
    arms: dict[str, list[str]] = {}
    for name in models:
        arms.setdefault(name.split("/")[0], []).append(name)
    return arms


def replicates(runs: list[dict], metric: str) -> list[float]:
    """What a model's spread is over: one run's sampling seeds, or each run's mean over them."""
    if len(runs) == 1:
        return values(runs[0], metric)
    return [m for m in (mean_of(run, metric) for run in runs) if m is not None]


def greedy_spread(runs: list[dict]) -> dict | None:
    """The spread of the runs' greedy accuracy; None unless every run has one."""
    found = [run["greedy"]["accuracy"] for run in runs if run.get("greedy")]
    return spread(found) if found and len(found) == len(runs) else None


def pairs(models: dict[str, dict], runs: list[str], refs: list[str]) -> list[tuple[dict, dict]]:
    """Each run with its reference: the one reference (the base), or the one of the same seed."""
    if len(refs) == 1:
        return [(models[run], models[refs[0]]) for run in runs]
    by_seed = {ref.rpartition("/")[2]: models[ref] for ref in refs}  # full/seed1 -> seed1
    seed = {run: run.rpartition("/")[2] for run in runs}
    return [(models[run], by_seed[seed[run]]) for run in runs if seed[run] in by_seed]


def difference(paired: list[tuple[dict, dict]]) -> dict:
    """``{metric: spread of run − reference}``, and the greedy difference's. Each pair's difference is
    paired by sampling seed; one pair: spread over the sampling seeds, several: over the pairs' means."""
    out = {}
    for metric, _, _ in COLUMNS:
        each = []
        for arm, ref in paired:
            d = [(arm["seeds"][s][metric], ref["seeds"][s][metric]) for s in arm["seeds"]]
            each.append([a - b for a, b in d if a is not None and b is not None])
        out[metric] = spread(each[0] if len(each) == 1 else [statistics.fmean(d) for d in each if d])
    greedy = [
        a["greedy"]["accuracy"] - b["greedy"]["accuracy"]
        for a, b in paired
        if a.get("greedy") and b.get("greedy")
    ]
    out["greedy"] = spread(greedy) if greedy and len(greedy) == len(paired) else None
    return out


def stats(runs: list[dict]) -> dict:
    """Each metric's spread over the replicates of ``runs`` (:func:`replicates`), and greedy's."""
    return {"greedy": greedy_spread(runs)} | {m: spread(replicates(runs, m)) for m, _, _ in COLUMNS}


def summarize(models: dict[str, dict]) -> dict[str, dict]:
    """Per arm (the base too): its runs, their :func:`stats`, and (arms) the difference from the base."""
    summary = {}
    for arm, runs in arms_of(models).items():
        summary[arm] = {"runs": runs, **stats([models[run] for run in runs])}
        if arm != "base":
            summary[arm]["vs_base"] = difference(pairs(models, runs, ["base"]))
    return summary


# --- the report ------------------------------------------------------------------------------------


def _fmt(v: float | None, kind: str, signed: bool = False) -> str:
    """A number of ``kind`` (:data:`COLUMNS`): fractions as percentages, in points when signed."""
    if v is None:
        return "–"
    sign = "+" if signed else ""
    return f"{100 * v:{sign}.1f}" if kind in ("pct", "gap") else f"{v:{sign}.2f}"


def _unit(kind: str, difference: bool) -> str:
    return "" if kind == "num" else " pt" if difference or kind == "gap" else "%"


def _mean_sd(s: dict, kind: str) -> str:
    """``mean ± sd`` over the seeds (the sd of a percentage in the same unit: ``41.2 ± 1.3%``)."""
    if s["mean"] is None:
        return "–"
    sd = "" if s["sd"] is None else f" ± {_fmt(s['sd'], kind)}"
    return _fmt(s["mean"], kind, signed=kind == "gap") + sd + _unit(kind, difference=False)


def _mean_range(s: dict, kind: str) -> str:
    """``mean unit (min to max)`` of a difference over the seeds: ``+1.2 pt (-0.5 to +2.0)``."""
    if s["mean"] is None:
        return "–"
    span = f" ({_fmt(s['min'], kind, True)} to {_fmt(s['max'], kind, True)})" if s["sd"] is not None else ""
    return _fmt(s["mean"], kind, signed=True) + _unit(kind, difference=True) + span


def _row(name: str, s: dict) -> list[str]:
    """A model's row of :func:`stats` ``s``: greedy accuracy and each metric, mean ± sd."""
    greedy = _mean_sd(s["greedy"], "pct") if s["greedy"] else "–"
    return [
        f"**{name}**" if name == "base" else name,
        greedy,
        *(_mean_sd(s[m], kind) for m, _, kind in COLUMNS),
    ]


def tables(models: dict[str, dict], summary: dict[str, dict], k: int) -> tuple[str, str, str]:
    """The per-arm table (mean ± sd over its replicates), the arms' differences from the base, and the
    table of each SFT run of the arms that have several ("" if none has)."""
    header = ["model", "greedy (eval)", *(title.format(k=k) for _, title, _ in COLUMNS)]
    rows, diffs, runs = [], [], []
    for arm, s in summary.items():
        rows.append(_row(arm, s))
        if arm != "base":
            d = s["vs_base"]
            greedy = _mean_range(d["greedy"], "gap") if d["greedy"] else "–"
            diffs.append([f"{arm} − base", greedy, *(_mean_range(d[m], kind) for m, _, kind in COLUMNS)])
        if len(s["runs"]) > 1:
            runs += [_row(name, stats([models[name]])) for name in s["runs"]]
    per_run = markdown_table(header, runs) if runs else ""
    return markdown_table(header, rows), markdown_table(["difference", *header[1:]], diffs), per_run


def replica_difference(models: dict[str, dict], summary: dict[str, dict]) -> tuple[dict, int] | None:
    """full_replica − full and the number of run pairs it is over, when the experiment has both."""
    if not all(name in summary for name in REPLICA):
        return None
    paired = pairs(models, summary[REPLICA[1]]["runs"], summary[REPLICA[0]]["runs"])
    return difference(paired), len(paired)


def replica_line(models: dict[str, dict], summary: dict[str, dict], k: int) -> str:
    """The training-seed spread: full_replica − full, when the experiment has both."""
    found = replica_difference(models, summary)
    if found is None:
        return ""
    d, n = found
    parts = [f"{title.format(k=k)} {_mean_range(d[m], kind)}" for m, title, kind in COLUMNS]
    greedy = f"greedy {_mean_range(d['greedy'], 'gap')}; " if d["greedy"] else ""
    if n == 1:
        over = "another SFT seed; mean over sampling seeds"
    else:
        over = f"other SFT seeds; paired by GRPO seed, mean over the {n} pairs"
    head = (
        f"\n\nTraining-seed spread (`full_replica` − `full`: the same SFT settings at {over}, min to max): "
    )
    return head + greedy + "; ".join(parts) + "."


def greedy_note(models: dict[str, dict]) -> str:
    found = {name: m["greedy"] for name, m in models.items() if m.get("greedy")}
    if not found:
        return "No finished eval stage was found, so there is no greedy accuracy. "
    kinds = {(g["benchmark"], g["questions"], g["max_new_tokens"]) for g in found.values()}
    if len(kinds) > 1:  # say so rather than compare accuracies measured differently
        each = "; ".join(f"{n}: {g['benchmark']}, {g['questions']} problems" for n, g in found.items())
        return f"Greedy accuracy is the eval stages', **measured with different settings** ({each}). "
    (benchmark, questions, budget), missing = kinds.pop(), [n for n in models if n not in found]
    return (
        f"Greedy accuracy is the pipeline's eval stages' ({benchmark}, {questions} problems, budget "
        f"{budget} tokens), not remeasured here"
        + (f"; no finished eval of {', '.join(missing)}. " if missing else ". ")
    )


def spread_note(summary: dict[str, dict], seeds: list[int]) -> str:
    """What the mean ± sd and min to max are over: the sampling seeds, or each arm's SFT runs."""
    counts = sorted({len(s["runs"]) for arm, s in summary.items() if arm != "base"})
    if counts == [1]:
        return (
            f"Mean ± sd, and min to max, are over the {len(seeds)} **sampling** seeds only: each warm start "
            "is one SFT training run, so they do not include the training-seed spread. Differences are "
            "paired by sampling seed; fractions in percentage points."
        )
    return (
        f"Each arm is {'/'.join(map(str, counts))} SFT runs, one per GRPO seed of the pipeline "
        "(`sft.seed_per_grpo_seed`): its mean ± sd, and min to max, are over those **SFT runs**, each "
        f"run's figure its mean over the sampling seed(s) {', '.join(map(str, seeds))}, so they include "
        "the training-seed spread (the base's are over the sampling seeds). Differences from the base are "
        "paired by sampling seed within each run; fractions in percentage points. Each run's row follows."
    )


def render(models: dict[str, dict], summary: dict[str, dict], settings: dict) -> str:
    k, seeds = settings["samples"], settings["seeds"]
    per_arm, diffs, per_run = tables(models, summary, k)
    intro = (
        "## SFT warm starts against the base model\n\n"
        f"Each model samples {k} completions at T=1 of the first {settings['problems']} problems of the "
        f"{settings['split']} split (budget {settings['max_new_tokens']} tokens), under each of the "
        f"sampling seeds {', '.join(map(str, seeds))}; scored as the eval job scores (pass@k unbiased, "
        "token entropy token-weighted, distinct stated final answers and distinct completion texts per "
        f"problem). {greedy_note(models)}{spread_note(summary, seeds)}\n\n"
    )
    body = intro + per_arm + "\n\nEach arm against the base:\n\n" + diffs + replica_line(models, summary, k)
    return body + (f"\n\nEach SFT run (mean ± sd over the sampling seeds):\n\n{per_run}" if per_run else "")
