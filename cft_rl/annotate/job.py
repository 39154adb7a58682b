"""The critical-token annotation *job*: a dataset in, an annotated dataset out (CFT, arXiv 2510.10974).

:mod:`cft_rl.annotate.rule` and :mod:`cft_rl.annotate.engine` judge the tokens of solutions and
:mod:`cft_rl.annotate.rows` picks each row's solution (the model's own greedy one by default, as in
the paper, or the dataset's) or its skip reason; this module runs that over a dataset: it splits the
rows across workers, survives being killed, and merges the shards into one ``datasets`` folder plus a
``summary.json``.

Layout of ``out``: ``shards/shard-00000-of-00002.jsonl`` (one JSON line per finished row, annotated
or skipped, then ``{"done": true}``), ``dataset/`` (every annotated row, in dataset order) and
``summary.json`` (row counts, skip reasons, critical fraction by token class).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cft_rl.annotate.rows import RowProgress, record_features
from cft_rl.answers import last_box_extent
from cft_rl.outputs import write_atomic, write_json
from cft_rl.token_classes import token_class

logger = logging.getLogger(__name__)

SOURCES = ("self", "dataset")
ENGINES = ("reference", "fast")
BACKENDS = ("hf", "vllm")
# Why a row was skipped. "unreadable": the loader could not read it (e.g. no gold answer at all).
SKIP_REASONS = ("unreadable", "bad_gold", "empty_solution", "no_solution", "too_long")
SKIP_REASONS += ("wrong_self_solution", "bad_tokenization")
_WAIT_POLL_S = 2.0
# Settings that do not change a row's annotation; every other one must match for a shard to resume.
_NEUTRAL_FIELDS = (
    "out",
    "engine",
    "shard_index",
    "push_to_hub",
    "batch_size",
    "eager_alternatives",
    "vllm_gpu_memory_utilization",
    "wait_for_shards",
)


@dataclass
class AnnotateConfig:
    """Settings of one annotation job (or one worker's shard of it).

    Parameters:
        model: Path or Hub id of the causal LM that judges (and, with ``source="self"``, writes) the tokens.
        dataset: Benchmark name, local file/folder or Hub id, read by :func:`cft_rl.data.datasets.load_math_dataset`.
        out: Output folder: ``shards/``, ``dataset/`` and ``summary.json`` go here.
        split: Dataset split (ignored for benchmarks).
        source: ``"self"``: annotate the model's own greedy solution, kept only when the verifier marks
            it correct (the paper's setting). ``"dataset"``: annotate the ``solution`` column.
        num_alternatives: Alternatives ``k`` tried at each position (the paper's k).
        max_continuation_tokens: Greedy tokens generated after each alternative before judging it.
        max_solution_tokens: Solutions longer than this (in tokens, eos excluded) are skipped as ``too_long``.
        max_new_tokens: Generation budget for self-generated solutions.
        limit: Annotate only the first ``limit`` dataset rows (None: all).
        engine: ``"fast"`` (:func:`cft_rl.annotate.engine.annotate_fast`, the default) or ``"reference"``
            (:func:`cft_rl.annotate.rule.annotate_reference`, the slow correctness oracle).
        backend: Fast engine: ``"hf"`` (transformers, on ``cuda:$LOCAL_RANK`` when there is a GPU) or
            ``"vllm"`` (vLLM generates the self solutions, ranks by prompt logprobs and continues with
            prefix caching; ``pip install .[vllm]``).
        vllm_gpu_memory_utilization: vLLM backend: its share of the GPU.
        batch_size: Fast engine: branches decoded together, from as many solutions as it takes to fill
            the batch (continuous batching; memory grows with it, speed too, to a point). With the
            vLLM backend: branches handed to vLLM at a time.
        eager_alternatives: Fast engine: queue every rank's alternative at once rather than rank r+1
            only where rank r failed (more branches decoded, the same annotations).
        num_shards: Workers the rows are split across (row ``i`` to shard ``i % num_shards``). None:
            ``$WORLD_SIZE`` if set, else 1.
        shard_index: This worker's shard. None: ``$RANK`` if set, else 0.
        seed: Torch seed set before any generation (greedy decoding does not depend on it).
        push_to_hub: Hub dataset repo to push the merged dataset to; None: do not push.
        wait_for_shards: Shard 0 waits for the other shards' files to complete, then merges. None:
            wait when started by a launcher (``$WORLD_SIZE`` set, e.g. ``accelerate launch``), whose
            workers all finish together; otherwise shard 0 merges only if the others are already done.
    """

    model: str
    dataset: str
    out: str
    split: str = "train"
    source: str = "self"
    num_alternatives: int = 2
    max_continuation_tokens: int = 512
    max_solution_tokens: int = 1024
    max_new_tokens: int = 512
    limit: int | None = None
    engine: str = "fast"
    backend: str = "hf"
    vllm_gpu_memory_utilization: float = 0.85
    batch_size: int = 1024
    eager_alternatives: bool = False
    num_shards: int | None = None
    shard_index: int | None = None
    seed: int = 0
    push_to_hub: str | None = None
    wait_for_shards: bool | None = None

    def __post_init__(self):
        for name, valid in (("source", SOURCES), ("engine", ENGINES), ("backend", BACKENDS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}; got {getattr(self, name)!r}")
        # accelerate/torchrun set RANK and WORLD_SIZE, so `accelerate launch` shards with no extra flags.
        if self.num_shards is None:
            self.num_shards = int(os.environ.get("WORLD_SIZE", 1))
        if self.shard_index is None:
            self.shard_index = int(os.environ.get("RANK", 0))
        if self.wait_for_shards is None:
            self.wait_for_shards = "WORLD_SIZE" in os.environ
        if self.backend == "vllm" and self.engine != "fast":
            raise ValueError("backend 'vllm' needs engine 'fast' (the reference engine is transformers-only)")
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"shard_index {self.shard_index} is not in [0, num_shards={self.num_shards})")
        if self.num_alternatives < 1:
            raise ValueError(f"num_alternatives must be at least 1; got {self.num_alternatives}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {self.batch_size}")

    @classmethod
    def from_dict(cls, values: dict) -> AnnotateConfig:
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"unknown annotate setting(s) {unknown}; valid settings: {valid}")
        missing = [name for name in ("model", "dataset", "out") if not values.get(name)]
        if missing:
            raise ValueError(f"missing required setting(s) {missing} (--model, --dataset, --out)")
        return cls(**values)


# --- shard files -----------------------------------------------------------------------------------


def shard_path(out: str | Path, index: int, num_shards: int) -> Path:
    return Path(out) / "shards" / f"shard-{index:05d}-of-{num_shards:05d}.jsonl"


def read_shard(path: Path, repair: bool = False) -> tuple[list[dict], dict | None]:
    """``(records, done record or None)`` of a shard file; with ``repair``, a torn last line is cut off.

    A worker killed mid-write leaves a last line without its newline. Every complete line was written
    and fsynced whole, so only that tail can be damaged.
    """
    data = path.read_bytes() if path.exists() else b""
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning("%s: dropping a torn last line (%d bytes)", path, len(data) - end)
        if repair:
            with path.open("r+b") as handle:
                handle.truncate(end)
                os.fsync(handle.fileno())
    records, done = [], None
    for line_no, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {line_no}: not JSON ({exc}); the shard file is corrupt") from exc
        if record.get("done"):
            done = record
        elif "index" in record:
            records.append(record)
    return records, done


def _append(handle, record: dict) -> None:
    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())  # a row reported done must survive a SIGKILL or a power cut


def _resolved(name: str) -> str:
    """A local file or folder as its resolved absolute path, so that ``./toy`` and ``/work/toy`` are
    the same model; a Hub id or benchmark name (no such local path) as it is."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _settings(config: AnnotateConfig) -> dict:
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NEUTRAL_FIELDS}
    return settings | {k: _resolved(settings[k]) for k in ("model", "dataset")}


def _check_settings(path: Path, config: AnnotateConfig, has_work: bool) -> None:
    """Refuse to resume a shard written with settings that change results (its rows would be stale).

    Settings are compared only once the shard holds work (a row, or its done mark): a run that failed
    before its first row (say, on a bad model path) left nothing to protect, and its settings are
    simply replaced by this run's.
    """
    settings = _settings(config)
    header = path.with_suffix(".config.json")
    if has_work and header.exists():
        old = json.loads(header.read_text())
        old |= {k: _resolved(old[k]) for k in ("model", "dataset") if isinstance(old.get(k), str)}
        changed = sorted(k for k in settings if k in old and old[k] != settings[k])  # new fields: default
        if changed:
            raise ValueError(f"{path.parent.parent} holds a run with other {changed}: use another --out")
        return
    write_json(header, settings)


# --- rows ------------------------------------------------------------------------------------------


def _load_rows(config: AnnotateConfig) -> tuple[list[dict], int]:
    """The dataset rows, and how many rows the loader could not read (skipped, never fatal)."""
    from cft_rl.data.datasets import load_math_dataset  # the datasets library: not for `cft-rl --help`

    skipped: Counter = Counter()
    # errors="skip": a bad row is counted, never fatal
    ds = load_math_dataset(
        config.dataset, split=config.split, limit=config.limit, errors="skip", skipped=skipped
    )
    return ds.to_list(), sum(skipped.values())


# --- the job ---------------------------------------------------------------------------------------


def run_shard(config: AnnotateConfig) -> Path:
    """Annotate this worker's rows, resuming from its shard file; returns that file."""
    # torch and the models: not for `cft-rl --help` or a recipe check, which import this module.
    import torch  # (as above)

    from cft_rl.annotate.judge import load_judge  # (as above)
    from cft_rl.annotate.rows import annotate_rows  # (as above)
    from cft_rl.cpu import cpu_float_math  # (as above)

    path = shard_path(config.out, config.shard_index, config.num_shards)
    records, done = read_shard(path, repair=True)
    _check_settings(path, config, has_work=bool(records or done))
    if done:
        return path
    rows, unreadable = _load_rows(config)
    finished = {r["index"] for r in records}
    todo = [i for i in range(config.shard_index, len(rows), config.num_shards) if i not in finished]
    judge = load_judge(config) if todo else None  # nothing left to do: no model to load
    torch.manual_seed(config.seed)
    with cpu_float_math(), path.open("a", encoding="utf-8") as handle:
        progress = RowProgress(len(todo), f"annotate shard {config.shard_index}/{config.num_shards}")

        def emit(record: dict) -> None:
            # On disk the moment the row's outcome is decided, skips included: a kill loses only
            # the rows in flight.
            _append(handle, record)
            progress.finished(record["index"])

        annotate_rows(config, judge, {i: rows[i] for i in todo}, emit, progress)
        progress.close()
        _append(handle, {"done": True, "total_rows": len(rows), "unreadable": unreadable})
    return path


def shard_count(out: str | Path) -> int | None:
    """How many workers the shard files in ``out`` were written by (None: no shard yet). A killed job
    resumes its rows only under that count: the pipeline reads it to restart with as many workers."""
    folder = Path(out) / "shards"
    counts = {int(p.stem.rsplit("-", 1)[1]) for p in folder.glob("shard-*-of-*.jsonl")}
    if len(counts) > 1:
        raise ValueError(f"{folder} must hold the shards of one run; found counts {sorted(counts)}")
    return counts.pop() if counts else None


def _shard_files(out: Path) -> tuple[list[Path], int]:
    n = shard_count(out)
    if n is None:
        raise ValueError(f"{out / 'shards'} holds no shard files; run the annotation first")
    return sorted((out / "shards").glob(f"shard-*-of-{n:05d}.jsonl")), n


def shards_complete(out: str | Path) -> bool:
    paths, n = _shard_files(Path(out))
    return len(paths) == n and all(read_shard(p)[1] is not None for p in paths)


def merge(out_dir: str | Path) -> Path:
    """Merge all shards into ``out_dir/dataset`` and ``summary.json``, rows in dataset order (so the
    result does not depend on the number of shards)."""
    import datasets  # heavy: not for `cft-rl --help`

    out = Path(out_dir)
    paths, n = _shard_files(out)
    by_index, unreadable = {}, 0
    for path in paths:
        records, done = read_shard(path)
        for record in records:
            by_index[record["index"]] = record  # a row redone after a crash counts once
        if path == shard_path(out, 0, n) and done:
            unreadable = done.get("unreadable", 0)  # every worker saw the same loader skips: count once
    records = [by_index[i] for i in sorted(by_index)]
    rows = [r for r in records if "skipped" not in r]
    summary = summarize(rows, records, unreadable)
    # from_list([]) has no columns, and save_to_disk writes no data file for an empty dataset, which
    # load_from_disk then fails on: a run whose rows were all skipped saves one empty shard with every
    # column, so that load_from_disk, render and sft read it (and say it holds no rows).
    if rows:
        ds, shards = datasets.Dataset.from_list(rows), None
    else:
        features = record_features()
        ds, shards = datasets.Dataset.from_dict(dict.fromkeys(features, []), features), 1
    # Swapped in whole: a crash during the save never leaves a half-written dataset/ behind.
    write_atomic(out / "dataset", lambda tmp: ds.save_to_disk(str(tmp), num_shards=shards))
    write_json(out / "summary.json", summary)
    (logger.warning if not rows else logger.info)("%s: %s", out, describe(summary))
    return out / "dataset"


def describe(summary: dict) -> str:
    """One line for the console: ``"3 of 5 rows annotated; skipped: 1 bad_gold, 1 too_long"``."""
    line = f"{summary['annotated']} of {summary['total_rows']} rows annotated"
    skipped = ", ".join(f"{n} {reason}" for reason, n in summary["skipped"].items() if n)
    return line + (f"; skipped: {skipped}" if skipped else "")


def summarize(rows: list[dict], records: list[dict], unreadable: int = 0) -> dict:
    """Row counts, skip reasons, and the critical fraction overall and by :func:`cft_rl.token_classes.token_class`,
    also over the tokens outside the final ``\\boxed{...}`` (``outside_answer``).

    Why that split: a box's braces decide which number is the answer (a digit in place of ``}`` extends
    it), so they are critical by construction, while the paper's claim is about the reasoning. Both are
    reported; ``by_class`` counts every token."""
    skipped = Counter(r["skipped"] for r in records if "skipped" in r) + Counter(unreadable=unreadable)
    tokens, critical, outside, outside_critical = Counter(), Counter(), Counter(), Counter()
    for row in rows:
        box = last_box_extent(row["solution"]) or (0, 0)
        for token, flag, (start, end) in zip(
            row["tokens"], row["critical"], row["token_char_spans"], strict=True
        ):
            cls = token_class(token)
            tokens[cls] += 1
            critical[cls] += flag
            if end <= box[0] or start >= box[1]:
                outside[cls] += 1
                outside_critical[cls] += flag
    total = sum(tokens.values())
    return {
        "total_rows": len(records) + unreadable,
        "annotated": len(rows),
        "skipped": dict(sorted(skipped.items())),
        "total_tokens": total,
        "critical_tokens": sum(critical.values()),
        "critical_fraction": sum(critical.values()) / total if total else None,
        "by_class": {
            cls: {"tokens": tokens[cls], "critical": critical[cls], "fraction": critical[cls] / tokens[cls]}
            for cls in sorted(tokens)
        },
        "outside_answer": {
            cls: {"tokens": n, "critical": outside_critical[cls], "fraction": outside_critical[cls] / n}
            for cls, n in sorted(outside.items())
        },
    }


def run_annotation(config: AnnotateConfig) -> Path:
    """Run this worker's shard; shard 0 then merges if every shard is done. Returns ``out/dataset``
    when merged, else the shard file (then rerun shard 0, which resumes instantly, or call merge)."""
    shard = run_shard(config)
    if config.shard_index != 0:
        return shard
    while config.wait_for_shards and not shards_complete(config.out):
        # Files, not a process group: the same wait works for workers started by hand on a shared disk.
        logger.info("shard 0 done; waiting for the other shards in %s", config.out)
        time.sleep(_WAIT_POLL_S)
    if not shards_complete(config.out):
        logger.warning("other shards unfinished: rerun shard 0 or merge(%r) when they are done", config.out)
        return shard
    dataset = merge(config.out)
    if config.push_to_hub:
        __import__("datasets").load_from_disk(str(dataset)).push_to_hub(config.push_to_hub)
    return dataset


def main(argv: list[str] | None = None) -> int:
    """``cft-rl annotate [--config annotate.yaml] [--flag value]``: every ``AnnotateConfig`` field is a
    flag (``--max-new-tokens 512``), and flags override the YAML."""
    from cft_rl.config_types import config_from_flags, config_parser, parse_flags

    parser = config_parser(AnnotateConfig, "cft-rl annotate", __doc__.splitlines()[0])
    config = config_from_flags(AnnotateConfig, parse_flags(parser, AnnotateConfig, argv))
    written = run_annotation(config)
    print(f"annotation written to {written}")
    summary = Path(config.out) / "summary.json"
    if written.name == "dataset" and summary.is_file():  # merged: say what it holds
        print(describe(json.loads(summary.read_text())))
    return 0
