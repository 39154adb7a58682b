"""The math answer verifier and the TRL reward functions built on it.

``verify(prediction_text, gold)`` is the single grader used everywhere: as the GRPO reward, to keep
only correct solutions before annotation, to decide whether a perturbed continuation still reaches the
right answer, and in evaluation. It must agree with math-verify where math-verify is right, and never
hang or raise where a policy's output is pathological. Three layers:

1. :func:`cft_rl.answers.extract_answer` finds the final answer with linear-time string code, in-process.
2. math-verify parses gold and answer and compares them symbolically in a guarded worker process
   (:mod:`cft_rl.verify.guard`), with its own ``signal.alarm`` timeouts off: they only work in a main thread.
3. A wall-clock limit per verification kills runaway sympy work (``9^{9^{9^{9}}}``) from any thread.

Reward functions follow TRL's shape ``(completions, **columns) -> list[float | None]``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Imported at module level on purpose: the guarded workers preload this module, so sympy's
# one-second import happens once per worker start, never inside a timed verification.
import math_verify.grader
import math_verify.parser
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
from math_verify import verify as mv_verify
from sympy import Eq, FiniteSet

from cft_rl.answers import extract_answer, last_boxed_content
from cft_rl.verify.guard import CRASHED, TIMEOUT, close_shared_pool, shared_pool

DEFAULT_TIMEOUT_S = 5.0
# Below this many pairs a batch runs on one worker: spreading a handful of ~1 ms jobs over
# processes costs more in pipe traffic than it saves.
MIN_PARALLEL_BATCH = 32
_JOB = "cft_rl.verify.verifier:_score_job"
_CHOICE_GOLD_RE = re.compile(r"^\(?([A-E])\)?$")
_CHOICE_PRED_RE = re.compile(r"^\(?([A-Ea-e])\)?(?:$|[\s:.)])")
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")


# Inputs a policy can produce that must neither hang nor crash the verifier: sympy towers that never
# finish, megabyte ramblings, unbalanced braces by the thousand, broken unicode, missing values. Each
# must score 0.0 within timeout + 1 s. The tests and the speed benchmark both run this set.
PATHOLOGICAL_INPUTS: tuple[tuple[object, object], ...] = (
    (r"\boxed{9^{9^{9^{9}}}}", "5"),
    (r"\boxed{5}", "9^{9^{9^{9}}}"),
    (r"\boxed{(10^{10^{10}})!}", "1"),
    ("x" * 1_000_000, "5"),
    ("x" * 1_000_000 + r"\boxed{" + "9" * 999 + "}", "5"),
    ("{" * 10_000 + r"\boxed{" + "{" * 10_000, "5"),
    (r"\boxed{" + "{" * 400 + "}" * 400 + "}", "5"),
    ("\ud800\udfff\\boxed{\ud800}", "5"),
    # A rambling answer sentence and a runaway list of joined boxes: cut down before any parse.
    ("Final Answer: " + "the value of $x^{2}$ is not $y$ and " * 300 + "so it is 4", "5"),
    (", ".join([r"\boxed{1}"] * 10_000), "5"),
    (None, "5"),
    ("", "5"),
    (r"\boxed{5}", None),
    (r"\boxed{5}", ""),
    (float("nan"), float("inf")),
)


@dataclass(frozen=True)
class Verdict:
    """The outcome of one verification.

    ``score`` is 1.0 or 0.0, or None when the *gold* cannot be parsed (the example is unusable, not
    wrong). ``status`` says why: correct, wrong, no_answer, unparsed_answer, bad_gold, timeout,
    crashed or error.
    """

    score: float | None
    status: str
    extracted: str | None = None
    pred_parsed: str = ""
    gold_parsed: str = ""


# ---------------------------------------------------------------------------------------------------
# Worker side: everything that touches sympy runs here, inside a guarded process.
# ---------------------------------------------------------------------------------------------------


_DOLLAR_RE = re.compile(r"(?<!\\)\$")
# Differences that never change meaning: spacing, \left/\right, math-mode switches, a final full stop.
_COSMETIC_RE = re.compile(r"\s+|\\[,;:!]|\\left|\\right|(?<!\\)\$|\.+$")


def _unwrap_math(text: str) -> str:
    """Drop unescaped ``$`` delimiters anywhere in an answer (``20 $cm^2$``, ``a+$ $b``).

    Inside an extracted answer they are math-mode switches, never currency (that is ``\\$``), and
    math-verify reads an answer that switches mode halfway as two answers.
    """
    return _DOLLAR_RE.sub(" ", text).strip()


def normalize_answer(answer: str | None) -> str | None:
    """An extracted answer up to cosmetics (spaces, ``\\left``, ``$``, thin spaces); None stays None.

    Only textual: ``1/2`` and ``0.5`` stay distinct (equivalence needs sympy, see :func:`check`).
    """
    if answer is None:
        return None
    return _COSMETIC_RE.sub("", answer.strip()) or None


# A plain integer of at most 15 digits (math-verify's numeric precision), as sympy prints it.
_INTEGER_RE = re.compile(r"\s*(0|-?[1-9]\d{0,14})\s*$")


def _same_text(a: str, b: str) -> bool:
    """Identical up to cosmetics: correct without parsing, and without a trip to a worker.

    This is how prose golds ("No solution.", "3:30 p.m.") can be matched at all, and it makes the
    common case of a reward, a model writing the gold verbatim, cost microseconds.
    """
    return normalize_answer(a) == normalize_answer(b)


@functools.lru_cache(maxsize=8192)
def _parse(text: str, is_gold: bool):
    # Our extractor already isolated the answer, so the prediction is parsed from a box, first.
    # A bare ``\\frac{1}{2}`` parses to nothing: math-verify only extracts from math context.
    latex = LatexExtractionConfig() if is_gold else LatexExtractionConfig(boxed_match_priority=0)
    source = f"${text}$" if is_gold else f"\\boxed{{{text}}}"
    return parse(source, extraction_config=[latex, ExprExtractionConfig()], parsing_timeout=None)


def _choice_letter(text: str, pattern: re.Pattern[str]) -> str | None:
    """Multiple-choice letter of ``(B)``, ``B)``, ``\\text{B}`` or ``B: 12``; None otherwise."""
    m = pattern.match(_TEXT_WRAP_RE.sub(r"\1", text).strip())
    return m.group(1).upper() if m else None


def _several(parsed: list) -> bool:
    """Whether a parse holds several values: ``{3, 4}``, ``\\pm 2``, ``x \\in \\{1, 2\\}``."""
    value = parsed[0]
    if isinstance(value, Eq) and isinstance(value.rhs, FiniteSet):
        value = value.rhs
    return isinstance(value, FiniteSet) and len(value) > 1


def _score_job(answer: str, gold: str, float_rounding: int, numeric_precision: int, strict: bool):
    """Compare an extracted answer with a gold answer; returns ``(status, pred_parsed, gold_parsed)``."""
    # We disable math-verify's signal timeouts on purpose (the guard enforces ours); silence its
    # once-per-process warning about that, here in the worker only.
    math_verify.parser.TIMEOUT_WARNING_SHOWN = math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    gold_letter = _choice_letter(gold, _CHOICE_GOLD_RE)
    if gold_letter is not None:  # SAT-style gold: compare letters, sympy would read "B" as a symbol
        letter = _choice_letter(answer, _CHOICE_PRED_RE)
        return ("correct" if letter == gold_letter else "wrong", letter or answer[:200], gold_letter)
    answer, gold = _unwrap_math(answer), _unwrap_math(gold)
    gold_parsed = _parse(gold, True)
    if not gold_parsed:
        return ("bad_gold", "", "")
    pred_parsed = _parse(answer, False)
    gold_str = str(gold_parsed[0])[:200]
    if not pred_parsed:
        return ("unparsed_answer", "", gold_str)
    if _several(pred_parsed) and not _several(gold_parsed):
        # A hedge ("\\boxed{3} or \\boxed{4}", "\\boxed{1}, \\boxed{2}" for the point (1, 2)) never
        # scores for a single-valued gold, although math-verify reads ``{1, 2}`` as ``(1, 2)``.
        return ("wrong", str(pred_parsed[0])[:200], gold_str)
    ok = mv_verify(
        gold_parsed,
        pred_parsed,
        float_rounding=float_rounding,
        numeric_precision=numeric_precision,
        strict=strict,
        timeout_seconds=None,
    )
    return ("correct" if ok else "wrong", str(pred_parsed[0])[:200], gold_str)


# ---------------------------------------------------------------------------------------------------
# Caller side.
# ---------------------------------------------------------------------------------------------------


def _as_text(value: object) -> str | None:
    """Coerce a completion or gold into text: strings, bytes, numbers and TRL chat messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return None if not math.isfinite(value) else (str(int(value)) if value.is_integer() else repr(value))
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        # Conversational completion: the last assistant message carries the answer.
        return _as_text(value[-1].get("content"))
    if isinstance(value, dict):
        return _as_text(value.get("content"))
    return None


def check_batch(
    predictions: Sequence[object],
    golds: Sequence[object],
    timeout: float = DEFAULT_TIMEOUT_S,
    workers: int | None = None,
    float_rounding: int = 6,
    numeric_precision: int = 15,
    strict: bool = True,
) -> list[Verdict]:
    """Verify many (prediction text, gold answer) pairs, with a :class:`Verdict` for each.

    Large batches run across worker processes (``workers`` defaults to one per core); each pair has
    its own ``timeout`` in seconds. Nothing here raises on bad content.
    """
    if len(predictions) != len(golds):
        raise ValueError(
            f"check_batch got {len(predictions)} predictions but {len(golds)} golds; pass one gold per prediction."
        )
    verdicts: list[Verdict | None] = [None] * len(predictions)
    jobs, slots, extracted = [], [], []
    for i, (pred, gold) in enumerate(zip(predictions, golds, strict=True)):
        gold_text = _as_text(gold)
        gold_text = gold_text.strip() if gold_text else ""
        answer = extract_answer(_as_text(pred))
        if not gold_text:
            verdicts[i] = Verdict(None, "bad_gold", answer)
        elif answer is None:
            verdicts[i] = Verdict(0.0, "no_answer")
        elif _same_text(answer, gold_text):
            verdicts[i] = Verdict(1.0, "correct", answer, answer[:200], gold_text[:200])
        elif _INTEGER_RE.match(answer) and _INTEGER_RE.match(gold_text):
            # Two different plain integers (equal ones were just matched): math-verify can only say
            # "wrong", and parses each to itself. Settled here, as a worker would, in microseconds.
            verdicts[i] = Verdict(0.0, "wrong", answer, answer.strip(), gold_text)
        else:
            jobs.append((answer, gold_text, float_rounding, numeric_precision, strict))
            slots.append(i)
            extracted.append(answer)
    pool = shared_pool(_JOB)
    n = 1 if len(jobs) < MIN_PARALLEL_BATCH else (workers or pool.max_workers)
    for i, answer, result in zip(slots, extracted, pool.map(jobs, timeout=timeout, workers=n), strict=True):
        verdicts[i] = _to_verdict(result, answer)
    return verdicts  # type: ignore[return-value]


def _to_verdict(result, answer: str) -> Verdict:
    if result == TIMEOUT:
        return Verdict(0.0, "timeout", answer)
    if result == CRASHED:
        return Verdict(0.0, "crashed", answer)
    status, pred_parsed, gold_parsed = result if len(result) == 3 else (result[0], result[1], "")
    score = {"correct": 1.0, "bad_gold": None}.get(status, 0.0)
    return Verdict(score, status, answer, pred_parsed, gold_parsed)


def check(prediction: object, gold: object, timeout: float = DEFAULT_TIMEOUT_S, **options) -> Verdict:
    """Verify one prediction; see :func:`check_batch`."""
    return check_batch([prediction], [gold], timeout=timeout, **options)[0]


def verify(prediction_text: object, gold: object, timeout: float = DEFAULT_TIMEOUT_S, **options) -> float:
    """1.0 if the final answer in ``prediction_text`` equals ``gold``, else 0.0. Never raises or hangs.

    ``gold`` is the bare gold answer (``"72"``, ``"\\frac{1}{2}"``); it is wrapped for math-verify.
    Use :func:`check` to learn *why* a prediction scored 0.
    """
    return check(prediction_text, gold, timeout=timeout, **options).score or 0.0


def verify_batch(
    predictions, golds, timeout: float = DEFAULT_TIMEOUT_S, workers: int | None = None, **options
):
    """Scores (1.0/0.0) for many pairs, across processes when the batch is large enough to pay."""
    verdicts = check_batch(predictions, golds, timeout=timeout, workers=workers, **options)
    return [v.score or 0.0 for v in verdicts]


async def averify(
    prediction_text: object, gold: object, timeout: float = DEFAULT_TIMEOUT_S, **options
) -> float:
    """:func:`verify` for async code: the wait happens in a thread, so the event loop keeps running."""
    return await asyncio.to_thread(verify, prediction_text, gold, timeout, **options)


def warmup() -> None:
    """Start the verifier's worker processes now, e.g. before timing or before a trainer starts."""
    shared_pool(_JOB).warmup()


def shutdown() -> None:
    """Stop the verifier's worker processes (and drop their parse caches)."""
    close_shared_pool(_JOB)


# ---------------------------------------------------------------------------------------------------
# TRL reward functions.
# ---------------------------------------------------------------------------------------------------


def math_reward(
    completions: list, answer: list, log_extra: Callable[[str, list], None] | None = None, **kwargs
) -> list[float | None]:
    """1.0 when a completion's final answer equals the row's gold ``answer``, 0.0 otherwise.

    Accepts string and conversational completions. Returns None for a row whose gold cannot be
    parsed, so TRL skips it instead of training on a wrong zero. Under a trainer, logs the extracted
    answer, both parses and the verdict to the completions table.
    """
    verdicts = check_batch(completions, answer)
    if log_extra is not None:
        log_extra("answer_extracted", [v.extracted or "" for v in verdicts])
        log_extra("answer_parsed", [v.pred_parsed for v in verdicts])
        log_extra("gold_parsed", [v.gold_parsed for v in verdicts])
        log_extra("verdict", [v.status for v in verdicts])
    return [v.score for v in verdicts]


def format_reward(completions: list, **kwargs) -> list[float]:
    """1.0 when a completion states a final answer in ``\\boxed{...}`` (non-empty), else 0.0."""
    scores = []
    for completion in completions:
        text = _as_text(completion)
        scores.append(1.0 if text and last_boxed_content(text) else 0.0)
    return scores


REWARD_FUNCS: dict[str, Callable] = {f.__name__: f for f in (math_reward, format_reward)}


def get_reward_func(name: str) -> Callable:
    """A registered reward by name, or any callable by dotted path (``pkg.module.func`` or ``pkg.module:func``)."""
    if name in REWARD_FUNCS:
        return REWARD_FUNCS[name]
    module, sep, attr = name.replace(":", ".").rpartition(".")
    if sep:
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(
                f"Cannot import reward function {name!r}: {exc}. Check the dotted path."
            ) from exc
    raise ValueError(
        f"Unknown reward function {name!r}. Registered: {sorted(REWARD_FUNCS)}; or give a dotted import path."
    )


def main(argv: list[str] | None = None) -> int:
    """``cft-rl verify PREDICTION GOLD``: print the verdict as JSON; exit 0 when it is correct."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="cft-rl verify", description=main.__doc__.splitlines()[0])
    p.add_argument("prediction", help="model output text; its final answer is extracted")
    p.add_argument("gold", help="the gold answer, e.g. 72 or \\frac{1}{2}")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds before the verification gives up")
    args = p.parse_args(argv)
    verdict = check(args.prediction, args.gold, timeout=args.timeout)
    print(json.dumps(verdict.__dict__, ensure_ascii=False))
    return 0 if verdict.score == 1.0 else 1
