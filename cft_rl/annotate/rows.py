"""One annotation job's rows: which solution each gets, why a row is skipped, the record written.

:mod:`cft_rl.annotate.job` runs the job (shards, resume, merge); this module turns the rows of one shard
into output records, handing the usable ones to the engine (:func:`cft_rl.annotate.engine.annotate_many`
or the reference) and reporting the others with their skip reason, each the moment it is decided,
and reporting progress in between (:class:`RowProgress`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from cft_rl.annotate.engine import annotate_many
from cft_rl.annotate.rule import annotate_reference, critical_spans
from cft_rl.data.prompts import encode_example
from cft_rl.verify.verifier import check

if TYPE_CHECKING:
    from cft_rl.annotate.job import AnnotateConfig
    from cft_rl.annotate.judge import Judge


# Rows whose self solutions are written in one batched call (:mod:`cft_rl.annotate.solutions`): enough
# to fill much of a batch, few enough that the engine gets its first solutions within seconds.
SOLVE_CHUNK = 128


def _gold_ok(row: dict) -> bool:
    # A gold that cannot verify against itself can never mark a continuation correct: every token
    # would come out critical.
    return _verifies_itself((row["answer"] or "").strip())


@functools.lru_cache(maxsize=4096)
def _verifies_itself(gold: str) -> bool:
    # Cached: with source="self" a row's gold is checked before its solution is generated and again
    # when the solution is judged, and golds repeat across rows.
    return bool(gold) and check("\\boxed{" + gold + "}", gold).score == 1.0


def self_solutions(config: AnnotateConfig, judge: Judge, chunk: list[tuple[int, dict]]) -> dict[int, str]:
    """``index -> text``: the model's greedy solutions of the rows of ``chunk`` that can be judged, in one
    call of the judge's generator (batched without padding: see :mod:`cft_rl.annotate.solutions`)."""
    if config.source != "self":
        return {}
    wanted = [(index, row) for index, row in chunk if _gold_ok(row)]
    if not wanted:
        return {}
    samples = judge.generator.generate(
        [row["prompt"] for _, row in wanted], max_new_tokens=config.max_new_tokens, seed=config.seed
    )
    return {index: sample[0].text.strip() for (index, _), sample in zip(wanted, samples, strict=True)}


def _solution(config: AnnotateConfig, row: dict, generated: str | None) -> tuple[str | None, str | None]:
    """``(solution, None)`` to annotate, or ``(None, skip reason)``; ``generated`` is the row's self
    solution (:func:`self_solutions`)."""
    if not _gold_ok(row):
        return None, "bad_gold"
    if config.source == "dataset":
        solution = row.get("solution")
        return (solution, None) if solution and solution.strip() else (None, "no_solution")
    if not generated:
        return None, "empty_solution"
    if check(generated, row["answer"].strip()).score != 1.0:
        return None, "wrong_self_solution"
    return generated, None


def prepare_row(
    config: AnnotateConfig, judge: Judge, row: dict, index: int, generated: str | None = None
) -> dict:
    """``{"skipped": reason}`` (the row's output record), or ``{"solution": text}`` to annotate;
    ``generated`` is the row's self solution when ``source="self"``."""
    solution, reason = _solution(config, row, generated)
    if reason is None:
        try:
            _, completion_ids, _ = encode_example(judge.tokenizer, row["prompt"], solution)
        except ValueError:  # offsets would point at the wrong characters: no usable annotation
            reason = "bad_tokenization"
        else:
            reason = "too_long" if len(completion_ids) - 1 > config.max_solution_tokens else None
    if reason is not None:
        return {"index": index, "id": row["id"], "skipped": reason}
    return {"solution": solution}


def annotated_record(row: dict, index: int, solution: str, anns) -> dict:
    """The output record of an annotated row."""
    return {
        "index": index,
        "id": row["id"],
        "prompt": row["prompt"],
        "question": row["question"],
        "answer": row["answer"],
        "solution": solution,
        "critical_spans": [list(span) for span in critical_spans(anns, solution)],
        "tokens": [a.token for a in anns],
        "token_ids": [a.token_id for a in anns],
        "critical": [a.critical for a in anns],
        "alternatives": [a.alternatives for a in anns],
        "alternative_answers": [a.alternative_answers for a in anns],
        "token_char_spans": [[a.char_start, a.char_end] for a in anns],
        "num_tokens": len(anns),
        "num_critical": sum(a.critical for a in anns),
    }


def record_features():
    """The ``datasets`` features of :func:`annotated_record`'s records. An annotation with no row left
    (all skipped) saves an empty dataset with these columns, so that render and sft can still read it."""
    from datasets import Features, List, Value

    string, integer = Value("string"), Value("int64")
    return Features(
        {
            "index": integer,
            "id": string,
            "prompt": List({"role": string, "content": string}),
            "question": string,
            "answer": string,
            "solution": string,
            "critical_spans": List(List(integer)),
            "tokens": List(string),
            "token_ids": List(integer),
            "critical": List(Value("bool")),
            "alternatives": List(List(integer)),
            "alternative_answers": List(List(string)),
            "token_char_spans": List(List(integer)),
            "num_tokens": integer,
            "num_critical": integer,
        }
    )


def annotate_rows(config: AnnotateConfig, judge: Judge, rows: dict[int, dict], emit, progress=None) -> None:
    """Hand ``emit`` the output record of every row in ``rows`` (index -> row) the moment its outcome
    is decided: a skip as soon as the row is prepared, an annotation when the engine finishes it (the
    fast engine finishes rows out of order, decoding many at once). Nothing decided waits in memory
    for another row, so a kill loses only the rows in flight.

    ``progress``, if given, hears of the work in between: ``progress.prepared(index)`` once a row's
    solution is ready for the engine (with ``source="self"``, generated and verified, the solutions of
    :data:`SOLVE_CHUNK` rows together), and ``progress.judged(index, judged, positions)`` as the fast
    engine judges a row's token positions, after every batch of branches (the reference reports whole
    rows). A kill during a chunk's generation loses that chunk's solutions, which were not yet decided.
    """
    if not rows:
        return  # nothing to annotate: no engine (and no model, which was never loaded) is touched
    solutions: dict[int, str] = {}

    def annotatable():
        items = list(rows.items())
        for start in range(0, len(items), SOLVE_CHUNK):
            chunk = items[start : start + SOLVE_CHUNK]
            generated = self_solutions(config, judge, chunk)
            for index, row in chunk:
                prepared = prepare_row(config, judge, row, index, generated.get(index))
                if "skipped" in prepared:
                    emit(prepared)
                    continue
                solutions[index] = prepared["solution"]
                if progress is not None:
                    progress.prepared(index)
                yield index, row["prompt"], prepared["solution"], row["answer"]

    if config.engine == "fast":
        limits = (config.num_alternatives, config.max_continuation_tokens, config.batch_size)
        done = annotate_many(
            judge.model,
            judge.tokenizer,
            annotatable(),
            *limits,
            judge.backend,
            config.eager_alternatives,
            on_progress=progress and progress.judged,
        )
    else:
        limits = (config.num_alternatives, config.max_continuation_tokens)
        done = (
            (i, annotate_reference(judge.model, judge.tokenizer, p, s, g, *limits))
            for i, p, s, g in annotatable()
        )
    for index, anns in done:
        emit(annotated_record(rows[index], index, solutions.pop(index), anns))


class RowProgress:
    """A shard's progress bar (the ``progress`` of :func:`annotate_rows`), in rows, with an ETA. A
    finished row (annotated or skipped) counts 1; a row under annotation counts the share of its
    token positions judged so far.

    Why not whole rows only: the fast engine decodes the branches of many rows together, and a row is
    finished only when its slowest branch and its follow-up alternatives (queued behind everything
    else) are, so nearly every row finishes near the end of the run; a bar of finished rows then sits
    at 0 for most of it. Judged positions move with every batch of branches. The postfix counts the
    solutions handed to the engine, which with ``source="self"`` are first generated, a chunk at a time.
    """

    def __init__(self, total: int, desc: str):
        from tqdm.auto import tqdm

        layout = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} rows [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
        self.bar = tqdm(total=total, desc=desc, unit="row", bar_format=layout)
        self.share: dict[int, float] = {}
        self.done, self.ready = 0.0, 0

    def prepared(self, index: int) -> None:
        self.ready += 1
        self.bar.set_postfix_str(f"{self.ready} solutions in the engine")

    def judged(self, index: int, judged: int, positions: int) -> None:
        self._move(index, judged / positions if positions else 1.0)

    def finished(self, index: int) -> None:
        self._move(index, 1.0)

    def _move(self, index: int, share: float) -> None:
        delta = min(share, 1.0) - self.share.get(index, 0.0)
        if delta > 0:
            self.share[index] = self.share.get(index, 0.0) + delta
            self.done += delta
            # Set, not added: float sums of shares would drift past the total at the end.
            self.bar.n = min(round(self.done, 6), self.bar.total)
            self.bar.update(0)  # tqdm's own rate and ETA from the change

    def close(self) -> None:
        self.bar.close()
