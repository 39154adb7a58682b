"""The SFT warm starts against the base model: does each arm keep the base's exploration?

For the base model and each SFT warm start, draws ``--samples`` completions at T=1 of the first
``--problems`` problems of ``--split`` under each of ``--seeds`` sampling seeds, and scores them as the
eval job does (:func:`cft_rl.eval.scoring.score_groups`: pass@1, pass@k, mean token entropy, distinct
final answers per problem), with distinct completions per problem. Greedy accuracy is read from the
pipeline's eval stages when they are there (it is not recomputed).

    python scripts/bench_warmstarts.py --pipeline outputs/pipeline/toy-experiment
    python scripts/bench_warmstarts.py --base MODEL --data DATA --arms full=DIR critical=DIR ...
        [--split validation] [--problems 100] [--samples 8] [--seeds 0 1 2] [--json PATH] [--no-write]

Writes the ``warmstarts`` section of docs/benchmarks.md: a row per model (mean ± sd over the sampling
seeds), then each arm's difference from the base (mean over seeds, with its min–max). The spread is
over *sampling* seeds only: each arm is one SFT run. ``full_replica`` (the experiment's second SFT seed
of ``full``), when present, measures the training-seed spread: its difference from ``full`` is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

from cft_rl.reports import markdown_table, write_section

# The pipeline's required arms come first, in its order; the others follow by name.
ARM_ORDER = ("full", "critical")
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


# --- what to measure -------------------------------------------------------------------------------


def parse_arms(pairs: list[str]) -> dict[str, Path]:
    arms = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--arms expects name=path, got {pair!r} (e.g. --arms full=outputs/sft/full)")
        if name in arms or name == "base":
            raise SystemExit(f"--arms: the name {name!r} is taken (twice, or 'base'); rename that arm")
        arms[name] = Path(path)
    return arms


def pipeline_arms(root: Path) -> dict[str, Path]:
    """Every SFT warm start of a pipeline folder; each must be finished (its trainer_state.json)."""
    from cft_rl.resume import finished_step

    sft = root / "sft"
    folders = (
        [p for p in sorted(sft.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        if sft.is_dir()
        else []
    )
    if not folders:
        raise SystemExit(f"{root} has no SFT warm starts in {sft}; run the pipeline's sft stages first")
    unfinished = [p.name for p in folders if finished_step(p) is None]
    if unfinished:
        raise SystemExit(
            f"SFT arms not finished in {sft}: {unfinished} (no trainer_state.json); rerun the pipeline, "
            "or name the finished ones with --base/--data/--arms"
        )
    rank = {name: i for i, name in enumerate(ARM_ORDER)}
    folders.sort(key=lambda p: (rank.get(p.name, len(rank)), p.name))
    return {p.name: p for p in folders}


def models_to_measure(args) -> tuple[Path | str, dict[str, dict]]:
    """The dataset, and ``{name: {"path", "eval"}}`` of the base then each arm (eval: a folder or None)."""
    if args.pipeline:
        if args.base or args.data or args.arms:
            raise SystemExit("pass --pipeline, or --base/--data/--arms for another layout, not both")
        root = Path(args.pipeline)
        world = root / "toy" / "world"
        if not (world / "data").is_dir():
            raise SystemExit(
                f"{world} holds no toy world (no data folder): is {root} a toy pipeline's output_dir? "
                "For another layout pass --base MODEL --data DATA --arms name=path ..."
            )
        models = {"base": {"path": world, "eval": root / "eval" / "base"}}
        for name, path in pipeline_arms(root).items():
            models[name] = {"path": path, "eval": root / "eval" / "sft" / name}
        return world / "data", models
    if not (args.base and args.data and args.arms):
        raise SystemExit("pass --pipeline DIR, or all of --base MODEL --data DATA --arms name=path ...")
    models = {"base": {"path": args.base, "eval": None}}
    models |= {name: {"path": path, "eval": None} for name, path in parse_arms(args.arms).items()}
    return args.data, models


def greedy_from_eval(folder: Path | None, benchmark: str | None) -> dict | None:
    """``{"benchmark", "accuracy", "questions", "max_new_tokens"}`` of a finished eval folder's greedy run.

    The eval folder's ``summary.json`` is written when every benchmark is done. ``benchmark`` picks one
    label; by default the only one, or the only toy split.
    """
    path = folder / "summary.json" if folder else None
    if path is None or not path.is_file():
        return None
    found = json.loads(path.read_text())["benchmarks"]
    if benchmark is None:
        labels = list(found) if len(found) == 1 else [b for b in found if b.startswith("toy-")]
        if len(labels) != 1:
            raise SystemExit(f"{path} holds benchmarks {sorted(found)}: pick one with --eval-benchmark")
        benchmark = labels[0]
    if benchmark not in found:
        raise SystemExit(f"{path} has no benchmark {benchmark!r}; it holds {sorted(found)}")
    summary = found[benchmark]
    if "greedy" not in summary:
        return None  # evaluated with greedy off: there is no greedy accuracy to report
    settings = summary.get("settings", {})
    return {
        "benchmark": benchmark,
        "accuracy": summary["greedy"]["accuracy"],
        "questions": summary["num_questions"],
        "max_new_tokens": settings.get("max_new_tokens"),
    }


# --- sampling --------------------------------------------------------------------------------------


def sample_metrics(groups, golds, k: int) -> dict:
    """The table's metrics of one seed's samples (``pass@k`` stored under the key ``pass@k``)."""
    from cft_rl.eval.scoring import score_groups

    metrics, _ = score_groups(groups, golds, ks=(1, k))
    return {
        "pass@1": metrics["pass@1"],
        "pass@k": metrics[f"pass@{k}"],
        "gap": metrics[f"pass@{k}"] - metrics["pass@1"],
        "entropy": metrics["entropy"],
        "distinct_answers": metrics["distinct_answers"],
        # Counted as cft_rl.eval.scoring.summarize counts them: identical texts are one completion.
        "distinct_completions": sum(len({s.text for s in g}) for g in groups) / len(groups),
        "accuracy": metrics["accuracy"],
        "frac_no_answer": metrics["frac_no_answer"],
    }


def measure(path, rows, args) -> dict[int, dict]:
    """``{seed: metrics}`` of one model, sampled as the eval job samples (same float settings on CPU)."""
    import torch

    from cft_rl.cpu import cpu_float_math
    from cft_rl.eval.job import load_model
    from cft_rl.generation import generate

    model, tokenizer = load_model(str(path))
    on_cpu = model.device.type == "cpu"
    out = {}
    with cpu_float_math(args.threads) if on_cpu else contextlib.nullcontext(), torch.inference_mode():
        for seed in args.seeds:
            groups = generate(
                model, tokenizer, rows["prompt"], n=args.samples, temperature=1.0,
                max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=seed,
            )  # fmt: skip
            out[seed] = sample_metrics(groups, rows["answer"], args.samples)
    return out


def measure_all(models: dict[str, dict], rows, args) -> None:
    """Fill each model's ``seeds``; progress and ETA on stderr."""
    start = time.monotonic()
    for done, (name, model) in enumerate(models.items()):
        print(f"== {name} ({model['path']}): {len(args.seeds)} seeds x {len(rows)} problems x "
              f"{args.samples} samples", file=sys.stderr, flush=True)  # fmt: skip
        model["seeds"] = measure(model["path"], rows, args)
        elapsed = time.monotonic() - start
        left = len(models) - done - 1
        print(f"   {name}: pass@1 {mean_of(model, 'pass@1'):.3f}; {elapsed:.0f} s so far, "
              f"ETA {elapsed / (done + 1) * left:.0f} s for {left} more", file=sys.stderr, flush=True)  # fmt: skip


# --- statistics over seeds -------------------------------------------------------------------------


def values(model: dict, metric: str) -> list[float]:
    return [m[metric] for m in model["seeds"].values() if m[metric] is not None]


def mean_of(model: dict, metric: str) -> float | None:
    v = values(model, metric)
    return statistics.fmean(v) if v else None


def spread(v: list[float]) -> dict:
    """Mean, sd (None under two values), min and max of a metric over the sampling seeds."""
    if not v:
        return {"mean": None, "sd": None, "min": None, "max": None}
    sd = statistics.stdev(v) if len(v) > 1 else None
    return {"mean": statistics.fmean(v), "sd": sd, "min": min(v), "max": max(v)}


def difference(arm: dict, ref: dict) -> dict:
    """``{metric: spread of arm − ref}``, paired by sampling seed, and the greedy difference."""
    out = {}
    for metric, _, _ in COLUMNS:
        pairs = [(arm["seeds"][s][metric], ref["seeds"][s][metric]) for s in arm["seeds"]]
        out[metric] = spread([a - b for a, b in pairs if a is not None and b is not None])
    greedy = [m["greedy"]["accuracy"] if m.get("greedy") else None for m in (arm, ref)]
    out["greedy"] = None if None in greedy else greedy[0] - greedy[1]
    return out


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


def tables(models: dict[str, dict], k: int) -> tuple[str, str]:
    """The per-model table (mean ± sd over seeds) and the arms' differences from the base."""
    titles = [title.format(k=k) for _, title, _ in COLUMNS]
    rows, diffs = [], []
    for name, model in models.items():
        greedy = _fmt(model["greedy"]["accuracy"], "pct") + "%" if model.get("greedy") else "–"
        cells = [_mean_sd(spread(values(model, m)), kind) for m, _, kind in COLUMNS]
        rows.append([f"**{name}**" if name == "base" else name, greedy, *cells])
        if name != "base":
            d = model["vs_base"]
            cells = [_mean_range(d[m], kind) for m, _, kind in COLUMNS]
            greedy = _fmt(d["greedy"], "gap", signed=True) + (" pt" if d["greedy"] is not None else "")
            diffs.append([f"{name} − base", greedy, *cells])
    header = ["model", "greedy (eval)", *titles]
    return markdown_table(header, rows), markdown_table(["difference", "greedy (eval)", *titles], diffs)


def replica_line(models: dict[str, dict], k: int) -> str:
    """The training-seed spread: full_replica − full, when the experiment has both."""
    if not all(name in models for name in REPLICA):
        return ""
    d = difference(models[REPLICA[1]], models[REPLICA[0]])
    parts = [f"{title.format(k=k)} {_mean_range(d[m], kind)}" for m, title, kind in COLUMNS]
    greedy = f"greedy {_fmt(d['greedy'], 'gap', True)} pt; " if d["greedy"] is not None else ""
    return (
        "\n\nTraining-seed spread (`full_replica` − `full`: the same SFT settings at another SFT seed; "
        f"mean over sampling seeds, min to max): {greedy}" + "; ".join(parts) + "."
    )


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


def render(models: dict[str, dict], settings: dict) -> str:
    k, seeds = settings["samples"], settings["seeds"]
    per_model, diffs = tables(models, k)
    intro = (
        "## SFT warm starts against the base model\n\n"
        f"Each model samples {k} completions at T=1 of the first {settings['problems']} problems of the "
        f"{settings['split']} split (budget {settings['max_new_tokens']} tokens), under each of the "
        f"sampling seeds {', '.join(map(str, seeds))}; scored as the eval job scores (pass@k unbiased, "
        "token entropy token-weighted, distinct stated final answers and distinct completion texts per "
        f"problem). {greedy_note(models)}Mean ± sd, and min to max, are over the {len(seeds)} "
        "**sampling** seeds only: each warm start is one SFT training run, so they do not include the "
        "training-seed spread. Differences are paired by sampling seed; fractions in percentage points.\n\n"
    )
    return intro + per_model + "\n\nEach arm against the base:\n\n" + diffs + replica_line(models, k)


# --- command line ----------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", help="a toy pipeline's output_dir (toy/world, sft/<arm>, eval/...)")
    parser.add_argument("--base", help="the base model (with --data and --arms, instead of --pipeline)")
    parser.add_argument("--data", help="the dataset (folder, file or Hub id) the problems come from")
    parser.add_argument("--arms", nargs="+", default=[], help="warm starts, name=path ...")
    parser.add_argument("--split", default="validation", help="the split the problems come from")
    parser.add_argument("--problems", type=int, default=100, help="the first this many problems")
    parser.add_argument("--samples", type=int, default=8, help="samples per problem at T=1 (the k)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="budget (the pipeline's eval)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--eval-benchmark", default=None, help="the eval label of greedy accuracy")
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    if args.samples < 2:
        parser.error("--samples must be at least 2: pass@1 against pass@k needs k > 1")
    if args.problems < 1:
        parser.error("--problems must be at least 1")
    if len(set(args.seeds)) < len(args.seeds):
        parser.error(f"--seeds lists a seed twice: {args.seeds}")
    return args


def main(argv=None) -> int:
    from cft_rl.data.datasets import load_math_dataset

    args = parse_args(argv)
    data, models = models_to_measure(args)
    rows = load_math_dataset(data, split=args.split, limit=args.problems)
    if len(rows) == 0:
        raise SystemExit(f"{data} has no {args.split} problems; pick another --split")
    for model in models.values():  # read first: a bad eval folder fails before minutes of sampling
        model["greedy"] = greedy_from_eval(model["eval"], args.eval_benchmark)
    measure_all(models, rows, args)
    for name, model in models.items():
        if name != "base":
            model["vs_base"] = difference(model, models["base"])
    keys = ("split", "samples", "seeds", "max_new_tokens")
    settings = {key: getattr(args, key) for key in keys} | {"problems": len(rows), "data": str(data)}
    body = render(models, settings)
    print(body)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        dump = {"settings": settings, "models": models}
        if all(name in models for name in REPLICA):
            dump["full_replica_vs_full"] = difference(models[REPLICA[1]], models[REPLICA[0]])
        Path(args.json).write_text(json.dumps(dump, indent=2, default=str) + "\n")
    if not args.no_write:
        command = "python " + " ".join(["scripts/bench_warmstarts.py", *sys.argv[1:]])
        print("wrote", write_section("warmstarts", body, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
