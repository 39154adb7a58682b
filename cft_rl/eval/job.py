"""``cft-rl eval``: a checkpoint on math benchmarks, one JSON summary and one parquet file per benchmark.

For each benchmark the job generates greedily (accuracy, with a 95% Wilson interval) and, with
``num_samples`` > 0, n samples per question at ``temperature`` (pass@k by the unbiased estimator, maj@k,
distinct answers and answer entropy per question, mean token entropy). Prompts are the training
template (:func:`cft_rl.data.prompts.build_prompt`) and grading is the training verifier
(:func:`cft_rl.verify.verifier.check_batch`), so an evaluation number means what the reward meant.

Outputs in ``out``: ``<benchmark>.parquet`` (one row per completion: prompt, completion, extracted
answer, verdict), ``<benchmark>.json`` (the summary; written last, so it marks the benchmark as done),
``summary.json`` (all of them) and, for ``--suite paper``, ``paper_table.md``. Files are written to a
temporary name and renamed, so a killed job leaves no half-file, and a rerun skips every benchmark
whose summary exists with the same settings: a long job resumes where it stopped. A benchmark's
results made with other settings are never overwritten: they move to ``.superseded/`` first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cft_rl import models
from cft_rl.data.benchmarks import BENCHMARKS, PAPER_SUITE
from cft_rl.eval.tables import load_results, paper_table, results_table
from cft_rl.outputs import settings_key, supersede, write_atomic, write_json
from cft_rl.stats import check_ks, default_ks

# torch, transformers and datasets are imported inside the functions that need them: the pipeline
# imports this module to check a recipe's eval section, which must not wait for torch.

logger = logging.getLogger(__name__)

SUITES = {"paper": PAPER_SUITE, "all": tuple(b for b in BENCHMARKS if b != "gsm8k_train")}


@dataclass
class EvalConfig:
    """Settings of one evaluation job.

    Parameters:
        model: checkpoint folder (full weights or a LoRA adapter) or Hub id.
        benchmarks: benchmark names (:data:`cft_rl.data.datasets.BENCHMARKS`), a toy build folder (its test
            split), or any dataset :func:`cft_rl.data.datasets.load_math_dataset` reads (path or Hub id).
        suite: "paper" (the CFT paper's eleven benchmarks) or "all"; added to ``benchmarks``.
        out: output folder (a rerun resumes in it).
        split: the split of dataset folders and Hub ids (benchmarks have one).
        limit: first this many questions per benchmark (None: all).
        greedy: run greedy decoding (accuracy).
        num_samples: samples per question at ``temperature`` for pass@k and maj@k (0: no sampling).
        temperature: the sampling temperature.
        ks: pass@k ks (default: 1, 2, 4, ... up to ``num_samples``, and ``num_samples``).
        maj_ks: maj@k ks (default: ``num_samples``).
        max_new_tokens: generation budget per completion.
        batch_size: prompts per generation call.
        seed: the sampling seed.
        backend: "hf" (transformers) or "vllm".
        vllm_gpu_memory_utilization: vLLM's share of the GPU.
        data_root: the benchmark files' folder (default ../shared/data).
        overwrite: rerun benchmarks already finished with the same settings.
        progress: show a progress bar over the benchmarks.
    """

    model: str
    benchmarks: list[str] = field(default_factory=list)
    suite: str | None = None
    out: str = "outputs/eval"
    split: str = "test"
    limit: int | None = None
    greedy: bool = True
    num_samples: int = 0
    temperature: float = 1.0
    ks: list[int] | None = None  # tuples after __post_init__
    maj_ks: list[int] | None = None
    max_new_tokens: int = 1024
    batch_size: int = 32
    seed: int = 0
    backend: str = "hf"
    vllm_gpu_memory_utilization: float = 0.9
    data_root: str | None = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.suite is not None and self.suite not in SUITES:
            raise ValueError(f"unknown suite {self.suite!r}; use one of {sorted(SUITES)}")
        names = [*self.benchmarks, *(SUITES[self.suite] if self.suite else ())]
        self.benchmarks = list(dict.fromkeys(names))  # suite members once, in order
        if not self.benchmarks:
            raise ValueError(
                "nothing to evaluate: name benchmarks (e.g. gsm8k_test, a toy folder) or --suite"
            )
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"backend must be 'hf' or 'vllm', got {self.backend!r}")
        if not self.greedy and self.num_samples < 1:
            raise ValueError("greedy is off and num_samples is 0: set --num-samples N or keep greedy")
        n = self.num_samples
        self.ks, self.maj_ks = (tuple(ks) if ks is not None else None for ks in (self.ks, self.maj_ks))
        if n:
            self.ks = check_ks("ks", self.ks or default_ks(n), n, "num_samples")
            self.maj_ks = check_ks("maj_ks", self.maj_ks or (n,), n, "num_samples")

    def settings(self) -> dict:
        """What decides a benchmark's results: a finished benchmark is reused only if these match."""
        skip = {"benchmarks", "suite", "out", "batch_size", "data_root", "overwrite", "progress"}
        skip |= {"vllm_gpu_memory_utilization"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip} | {
            "ks": list(self.ks or ()),
            "maj_ks": list(self.maj_ks or ()),
        }


# --- data and model --------------------------------------------------------------------------------


def _toy_data(path: Path) -> Path | None:
    """The data folder of a toy build (given the build folder or its data folder), else None."""
    for folder in (path, path.parent):
        if (folder / "toy_manifest.json").is_file() and (folder / "data").is_dir():
            return folder / "data"
    return None


def load_eval_dataset(spec: str, config: EvalConfig):
    """``(label, dataset)`` of one benchmark spec; the label names its output files."""
    from cft_rl.data.datasets import DataError, load_math_dataset  # the datasets library: not for --help

    path = Path(spec).expanduser()
    if spec in BENCHMARKS:
        return spec, load_math_dataset(spec, data_root=config.data_root, limit=config.limit)
    if (toy := _toy_data(path)) is not None:
        return f"toy-{config.split}", load_math_dataset(toy, split=config.split, limit=config.limit)
    if not path.exists() and "/" not in spec:
        raise DataError(
            f"unknown benchmark {spec!r}; valid names: {', '.join(BENCHMARKS)}. "
            "Or pass a toy build folder, a dataset file/folder, or a Hub id (owner/name)."
        )
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name if path.exists() else spec).strip("_") or "dataset"
    return f"{label}-{config.split}", load_math_dataset(spec, split=config.split, limit=config.limit)


def load_model(name: str, device: str | None = None):
    """``(model, tokenizer)`` of a checkpoint folder (full or LoRA) or a Hub id (:mod:`cft_rl.models`),
    on ``device`` (default: the GPU if there is one)."""
    import torch  # torch: not for `cft-rl --help`, which imports this module

    tokenizer = models.load_tokenizer(name)
    model = models.load_model(name)
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")), tokenizer


def make_backend(config: EvalConfig):
    """The generation backend the config names, with its model loaded."""
    from cft_rl.generation import (  # torch: not for `cft-rl --help`, which imports this module
        HFGenerator,
        VLLMGenerator,
    )

    if config.backend == "hf":
        model, tokenizer = load_model(config.model)
        return HFGenerator(model, tokenizer, config.batch_size)
    from vllm import LLM  # optional, GPU-only

    # vLLM loads the weights itself, so transformers keeps off the GPU: a LoRA adapter is merged on
    # the CPU into a folder vLLM can read, and a full model goes to vLLM as it is.
    source, tokenizer = config.model, models.load_tokenizer(config.model)
    if models.resolve_model(config.model).is_adapter:
        source = str(Path(config.out) / "merged_model")
        load_model(config.model, device="cpu")[0].save_pretrained(source)
        tokenizer.save_pretrained(source)
    llm = LLM(model=source, seed=config.seed, gpu_memory_utilization=config.vllm_gpu_memory_utilization)
    return VLLMGenerator(llm, tokenizer)


# --- one benchmark ---------------------------------------------------------------------------------


def _rows(label, dataset, prompts, mode, groups, verdicts) -> list[dict]:
    rows = []
    for record, prompt, group, vs in zip(dataset, prompts, groups, verdicts, strict=True):
        for i, (sample, verdict) in enumerate(zip(group, vs, strict=True)):
            ents = sample.entropies
            rows.append(
                {
                    "benchmark": label,
                    "id": record["id"],
                    "mode": mode,
                    "sample": i,
                    "prompt": prompt,
                    "gold": record["answer"],
                    "completion": sample.text,
                    "extracted": verdict.extracted,
                    "status": verdict.status,
                    "correct": verdict.score == 1.0,
                    "num_tokens": sample.num_tokens,
                    "mean_entropy": sum(ents) / len(ents) if ents else None,
                }
            )
    return rows


def evaluate_dataset(backend, label: str, dataset, config: EvalConfig) -> tuple[dict, list[dict]]:
    """Summary and per-sample rows of one benchmark (greedy and/or sampled, as configured)."""
    from cft_rl.eval.scoring import score_groups  # torch: not for `cft-rl --help`, which imports this module
    from cft_rl.generation import render_prompts  # torch: not for `cft-rl --help`, which imports this module

    prompts = render_prompts(backend.tokenizer, dataset["prompt"])
    golds = dataset["answer"]
    summary: dict = {"benchmark": label, "num_questions": len(dataset), "settings": config.settings()}
    rows: list[dict] = []
    runs = [("greedy", 1, 0.0, (1,), ())] if config.greedy else []
    if config.num_samples:
        runs.append(("sampled", config.num_samples, config.temperature, config.ks, config.maj_ks))
    for mode, n, temperature, ks, maj_ks in runs:
        groups = backend.generate(
            prompts,
            n=n,
            temperature=temperature,
            max_new_tokens=config.max_new_tokens,
            seed=config.seed,
            progress=config.progress,
        )
        summary[mode], verdicts = score_groups(groups, golds, ks, maj_ks)
        rows += _rows(label, dataset, prompts, mode, groups, verdicts)
    headline = summary["greedy" if config.greedy else "sampled"]
    summary["accuracy"] = headline.get("accuracy", 0.0)
    summary["accuracy_ci95"] = headline.get("accuracy_ci95", [0.0, 1.0])
    return summary, rows


# --- outputs, resuming, the job --------------------------------------------------------------------


def write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa  # a datasets dependency, heavy: not for --help
    import pyarrow.parquet as pq  # (as above)

    write_atomic(path, lambda p: pq.write_table(pa.Table.from_pylist(rows), p))


def _outputs(out: Path, label: str) -> tuple[Path, Path]:
    return out / f"{label}.json", out / f"{label}.parquet"


def saved_summary(out: Path, label: str) -> dict | None:
    """The saved summary of ``label`` if both its files are there (its JSON is written last)."""
    path, samples = _outputs(out, label)
    return json.loads(path.read_text()) if path.is_file() and samples.is_file() else None


def _settings_of(config: EvalConfig) -> dict:
    return json.loads(json.dumps(config.settings()))  # as saved: tuples -> lists


def finished_summary(out: Path, label: str, config: EvalConfig) -> dict | None:
    """The saved summary of ``label`` if it is complete and was made with the same settings."""
    summary = saved_summary(out, label)
    if config.overwrite or summary is None:
        return None
    if summary.get("settings") != _settings_of(config):
        logger.warning("%s was evaluated with other settings; evaluating again", out / f"{label}.json")
        return None
    return summary


def keep_other_settings(out: Path, label: str, config: EvalConfig) -> Path | None:
    """Move ``label``'s saved results out of the way if other settings made them (see
    :func:`cft_rl.outputs.supersede`): a rerun with new settings never overwrites them. Results
    made with the same settings are redone in place (that is what ``overwrite`` asks for)."""
    summary = saved_summary(out, label)
    if summary is None or summary.get("settings") == _settings_of(config):
        return None
    kept = supersede(out, list(_outputs(out, label)), label, settings_key(summary.get("settings")))
    logger.warning("%s: the results made with other settings were moved to %s", label, kept)
    return kept


def run_eval(config: EvalConfig, backend=None) -> dict[str, dict]:
    """Evaluate every benchmark of ``config``; returns {label: summary}. ``backend``: reuse one (tests).

    Datasets are loaded (and bad names rejected) before the model, so a typo fails in a second.
    """
    import torch  # torch: not for `cft-rl --help`, which imports this module
    from tqdm.auto import tqdm

    from cft_rl.cpu import cpu_float_math  # (torch, as above)

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    datasets = [load_eval_dataset(spec, config) for spec in config.benchmarks]
    results: dict[str, dict] = {}
    todo = []
    for label, dataset in datasets:
        done = finished_summary(out, label, config)
        if done is not None:
            logger.info("%s: already evaluated, skipped (pass overwrite to redo)", label)
            results[label] = done
        else:
            todo.append((label, dataset))
    if todo:
        backend = backend or make_backend(config)
        device = getattr(getattr(backend, "model", None), "device", None)
        on_cpu = getattr(device, "type", None) == "cpu"
        with cpu_float_math() if on_cpu else contextlib.nullcontext(), torch.inference_mode():
            for label, dataset in tqdm(todo, desc="benchmarks", disable=not config.progress):
                summary, rows = evaluate_dataset(backend, label, dataset, config)
                keep_other_settings(out, label, config)  # only now: a failed run leaves them in place
                write_parquet(out / f"{label}.parquet", rows)
                write_json(out / f"{label}.json", summary)  # last: its presence marks the benchmark done
                results[label] = summary
    ordered = {label: results[label] for label, _ in datasets}
    write_json(out / "summary.json", {"model": config.model, "benchmarks": ordered})
    return ordered


# --- command line ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``cft-rl eval MODEL BENCHMARK... [--flag value]``: every ``EvalConfig`` field is a flag;
    ``cft-rl eval --table EVAL_DIR...`` prints the paper table of finished evaluations."""
    from cft_rl.config_types import config_from_flags, config_parser, parse_flags

    parser = config_parser(
        EvalConfig,
        "cft-rl eval",
        __doc__.splitlines()[0],
        positional={"model": "?", "benchmarks": "*"},
    )
    parser.add_argument(
        "--table", nargs="+", metavar="EVAL_DIR", help="print the paper table of finished evals"
    )
    args = parse_flags(parser, EvalConfig, argv)
    if args.table:  # `cft-rl eval --table DIR...`: the positional words are folders too
        folders = [*args.table, *([args.model] if args.model else []), *args.benchmarks]
        print(paper_table({f"{m} ({f})": r for f in folders for m, r in [load_results(f)]}))
        return 0
    if not args.model:
        raise ValueError("name the model to evaluate: cft-rl eval MODEL BENCHMARK... (or --suite paper)")
    config = config_from_flags(EvalConfig, args)
    results = run_eval(config)
    print(results_table(results))
    if config.suite == "paper":
        table = paper_table({config.model: results})
        (Path(config.out) / "paper_table.md").write_text(table + "\n")
        print("\n" + table)
    print(f"\nwrote {config.out}/summary.json and a .json/.parquet pair per benchmark")
    return 0


if __name__ == "__main__":
    sys.exit(main())
