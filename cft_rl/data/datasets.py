"""Math benchmarks and user datasets, turned into one record shape.

Every loader here returns the same columns, so training and evaluation never care where a problem
came from:

- ``id``: str, unique across benchmarks: the benchmark's own id where it has one (so results join
  back to the original), prefixed with the benchmark name when that id is a bare number;
- ``question``: str, the problem as the model should see it;
- ``answer``: str, the normalised gold answer (no ``$`` wrappers, no units, no thousands commas);
- ``solution``: str or None, a worked solution where the benchmark has one;
- ``source``: the benchmark name (or the file stem / hub id of a generic dataset);
- ``prompt``: chat messages, ``[{"role": "user", "content": ...}]``, from
  :func:`cft_rl.data.prompts.build_prompt`.

The raw files live outside the repository (``../shared/README.md``); :func:`resolve_data_root` finds them.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets

from cft_rl.answers import last_boxed_content
from cft_rl.data.benchmarks import (  # noqa: F401 - re-exported: the data API is one import away
    BENCHMARKS,
    PAPER_SUITE,
    BenchmarkSpec,
    RowError,
    asdiv_answer,
    clean_gsm8k_solution,
    format_number,
    gsm8k_answer,
    required_field,
    strip_math_delimiters,
)
from cft_rl.data.prompts import build_prompt

logger = logging.getLogger(__name__)

DATA_ROOT_ENV = "CFT_RL_DATA_ROOT"
COLUMNS = ("id", "question", "answer", "solution", "source", "prompt")

_STRING = datasets.Value("string")
FEATURES = datasets.Features(
    {
        **{column: _STRING for column in COLUMNS[:-1]},
        "prompt": datasets.List({"role": _STRING, "content": _STRING}),
    }
)


class DataError(ValueError):
    """A dataset cannot be found or read; the message says what is wrong and how to fix it."""


def _default_data_root() -> Path:
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


# The value at import time. resolve_data_root() reads the variable again, so it can be set late.
DEFAULT_DATA_ROOT = _default_data_root()


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The folder of benchmark files: ``data_root``, else $CFT_RL_DATA_ROOT, else ``../shared/data``."""
    root = Path(data_root).expanduser() if data_root is not None else _default_data_root()
    if not root.is_dir():
        raise DataError(
            f"benchmark data folder not found: {root}. Pass data_root= (--data-root on the command line) "
            f"or set {DATA_ROOT_ENV} to the folder that holds gsm8k/, math500/ and benchmarks/."
        )
    return root


# --- reading rows --------------------------------------------------------------------------------

# (1-based position in the source, the row or None, why it could not be read or None)
RawRow = tuple[int, dict | None, str | None]


def _iter_jsonl(path: Path) -> Iterator[RawRow]:
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue  # a trailing blank line is not a row
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                yield line_no, None, "malformed JSON line"
                continue
            yield (
                (line_no, row, None)
                if isinstance(row, dict)
                else (line_no, None, "line is not a JSON object")
            )


def _enumerate_rows(rows: Iterable[Any]) -> Iterator[RawRow]:
    for position, row in enumerate(rows, start=1):
        yield (position, row, None) if isinstance(row, dict) else (position, None, "row is not an object")


def _collect(
    rows: Iterable[RawRow],
    make_record: Callable[[dict, int], dict],
    where: str,
    errors: str,
    limit: int | None,
) -> tuple[list[dict], Counter]:
    """Turn raw rows into records, raising on the first bad one or counting the skipped ones.

    ``where`` names the source and its position unit, e.g. "data/x.jsonl, line"."""
    if errors not in ("raise", "skip"):
        raise DataError(f'errors must be "raise" or "skip", got {errors!r}')
    if limit is not None and limit < 0:
        raise DataError(f"limit must be a non-negative number of rows, got {limit}")
    records: list[dict] = []
    skipped: Counter = Counter()
    for position, row, problem in rows:
        if limit is not None and len(records) >= limit:
            break
        try:
            if problem is not None:
                raise RowError(problem)
            record = make_record(row, position)
            for key in ("question", "answer"):
                if not record[key]:
                    raise RowError(f"empty {key} after normalisation")
        except (RowError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            # Whatever an extractor trips over is this row's problem, not a crash of the whole load.
            reason = str(exc) if isinstance(exc, RowError) else f"unparseable row ({type(exc).__name__})"
            if errors == "raise":
                raise DataError(
                    f'{where} {position}: {reason}. Fix the row, or pass errors="skip" to skip such rows.'
                ) from exc
            skipped[reason] += 1
            continue
        records.append(record)
    if skipped:
        details = "; ".join(f"{count} x {reason}" for reason, count in skipped.most_common())
        logger.warning("skipped %d rows of %s: %s", sum(skipped.values()), where.rsplit(",", 1)[0], details)
    return records, skipped


def read_benchmark_records(
    name: str, data_root: str | os.PathLike | None = None, limit: int | None = None, errors: str = "raise"
) -> tuple[list[dict], Counter]:
    """One benchmark's records as plain dicts, and a Counter of why rows were skipped (errors="skip")."""
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; valid names: {', '.join(BENCHMARKS)}")
    spec = BENCHMARKS[name]
    path = resolve_data_root(data_root) / spec.path
    if not path.is_file():
        raise DataError(f"benchmark file missing: {path}. Check that the data root holds {spec.path}.")

    def make_record(row: dict, line_no: int) -> dict:
        question, native_id = spec.read("question", row), spec.read("id", row)
        if native_id is None or native_id.isdigit():  # "0" means nothing outside its own file
            native_id = f"{name}-{line_no - 1 if native_id is None else native_id}"
        return {
            "id": native_id,
            "question": question,
            # One wrapper rule for every benchmark, so "$10-4 n$" and "10-4 n" come out the same.
            "answer": strip_math_delimiters(spec.read("answer", row)),
            "solution": spec.read("solution", row) or None,
            "source": name,
            "prompt": build_prompt(question),
        }

    return _collect(_iter_jsonl(path), make_record, f"{path}, line", errors, limit)


def _to_dataset(records: list[dict], features: datasets.Features | None = FEATURES) -> datasets.Dataset:
    if not records:  # from_list([]) would lose the columns
        return datasets.Dataset.from_dict({column: [] for column in COLUMNS}, features=FEATURES)
    return datasets.Dataset.from_list(records, features=features)


def load_benchmark(
    name: str, data_root: str | os.PathLike | None = None, limit: int | None = None, errors: str = "raise"
) -> datasets.Dataset:
    """One benchmark as a ``datasets.Dataset`` with columns id, question, answer, solution, source, prompt."""
    records, _ = read_benchmark_records(name, data_root=data_root, limit=limit, errors=errors)
    return _to_dataset(records)


# --- any dataset: benchmark name, local file or folder, or hub id ---------------------------------

_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def _read_local(path: Path, split: str) -> tuple[Iterable[RawRow], str]:
    """Rows of a local file or ``save_to_disk`` folder, and the unit their positions count in."""
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:  # datasets raises several types for "not a saved dataset"
            raise DataError(f"{path} is not a folder written by Dataset.save_to_disk: {exc}") from exc
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(
                    f"{path} has splits {sorted(loaded)}, not {split!r}: pass split= one of them."
                )
            loaded = loaded[split]
        return _enumerate_rows(loaded), "row"
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = None  # JSON Lines under a .json name
        if data is not None:  # a list of rows, or a single row (which is also one-line JSON Lines)
            return _enumerate_rows(data if isinstance(data, list) else [data]), "row"
    if suffix in (".json", ".jsonl"):
        return _iter_jsonl(path), "line"
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # a datasets dependency; reading directly skips the datasets cache

        return _enumerate_rows(pq.read_table(path).to_pylist()), "row"
    raise DataError(f"cannot read {path}: use a .jsonl, .json or .parquet file or a save_to_disk folder.")


def _load_hub(dataset_id: str, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # offline, unknown id, missing split, gated repo: all the same to the user
        raise DataError(
            f"could not load {dataset_id!r} (split {split!r}) from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}). Pass a local .jsonl/.json/.parquet file or save_to_disk "
            f"folder, or a benchmark name ({', '.join(BENCHMARKS)})."
        ) from exc


def _generic_gold(answer: Any, solution: str | None) -> str:
    """Gold of a row in an unknown schema: GSM8K ``####`` text, a number, or the solution's final answer."""
    if isinstance(answer, str) and answer.strip():
        return gsm8k_answer(answer) if "#### " in answer else answer
    if answer is not None and not isinstance(answer, str):
        return format_number(answer)
    if solution and "#### " in solution:
        return gsm8k_answer(solution)
    boxed = last_boxed_content(solution) if solution else None
    if not boxed:
        raise RowError("no answer, and no \\boxed{} or '####' line in the solution")
    return boxed


def load_math_dataset(
    name_or_path: str | os.PathLike,
    split: str = "train",
    question_field: str = "question",
    answer_field: str = "answer",
    solution_field: str = "solution",
    data_root: str | os.PathLike | None = None,
    limit: int | None = None,
    errors: str = "raise",
    skipped: Counter | None = None,
) -> datasets.Dataset:
    """The ``--dataset NAME_OR_PATH`` entry: a benchmark name, a local file or folder, or a hub id.

    Benchmarks ignore ``split`` and the field names (their schemas are known). Other sources map the
    named fields onto the record shape; rows that carry their own ``prompt`` keep it. With
    ``errors="skip"``, pass a ``Counter`` as ``skipped`` to receive the skip reasons and counts.
    """
    name = str(name_or_path)
    if name in BENCHMARKS:
        records, counts = read_benchmark_records(name, data_root=data_root, limit=limit, errors=errors)
        if skipped is not None:
            skipped.update(counts)
        return _to_dataset(records)
    path = Path(name).expanduser()
    if path.exists():
        rows, unit = _read_local(path, split)
        source, where = path.stem, f"{path}, {unit}"
    elif name.endswith(_LOCAL_SUFFIXES) or name.startswith((".", "/", "~")):
        raise DataError(f"dataset file not found: {path}. Check the path, or pass a benchmark name.")
    else:
        rows, source, where = _enumerate_rows(_load_hub(name, split)), name, f"{name} (split {split}), row"

    def make_record(row: dict, position: int) -> dict:
        question = str(required_field(row, question_field)).strip()
        solution = row.get(solution_field)
        solution = solution.strip() if isinstance(solution, str) and solution.strip() else None
        raw_answer = row.get(answer_field)
        if solution is None and isinstance(raw_answer, str) and "#### " in raw_answer:
            solution = raw_answer.strip()  # GSM8K layout: the answer field is the worked solution
        return {
            "id": str(row["id"]) if row.get("id") is not None else f"{source}-{position - 1}",
            "question": question,
            "answer": strip_math_delimiters(_generic_gold(raw_answer, solution)),
            "solution": solution,
            "source": source,
            "prompt": row.get("prompt") or build_prompt(question),
        }

    records, counts = _collect(rows, make_record, where, errors, limit)
    if skipped is not None:
        skipped.update(counts)
    # Prompts that came with the data may be plain strings or carry extra keys: those keep their own type.
    chat_shaped = all(
        isinstance(r["prompt"], list) and all(set(m) == {"role", "content"} for m in r["prompt"])
        for r in records
    )
    return _to_dataset(records, features=FEATURES if chat_shaped else None)


def main(argv: list[str] | None = None) -> int:
    """``cft-rl data NAME``: load a math benchmark into the common record shape and show rows."""
    import argparse

    p = argparse.ArgumentParser(prog="cft-rl data", description=main.__doc__.splitlines()[0])
    p.add_argument("name", help="benchmark name, or 'all'")
    p.add_argument(
        "--data-root", default=None, help="folder with the benchmark files (default ../shared/data)"
    )
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--show", type=int, default=2, help="rows to print")
    args = p.parse_args(argv)
    for name in list(BENCHMARKS) if args.name == "all" else [args.name]:
        ds = load_benchmark(name, data_root=args.data_root, limit=args.limit)
        print(f"{name}: {len(ds)} rows")
        for row in ds.select(range(min(args.show, len(ds)))):
            print(json.dumps({k: row[k] for k in ("id", "question", "answer")}, ensure_ascii=False)[:400])
    return 0
