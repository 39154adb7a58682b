"""Reward functions made safe for a trainer: one bad completion never stops training.

TRL calls each reward with the whole batch. A reward that raises, or returns NaN, for one odd completion
would kill a run hours in; :func:`tolerant_reward` scores such completions as None (TRL: "not scored")
and logs how often it happened. :func:`build_reward_funcs` turns the names of a recipe's
``reward_funcs`` into such rewards. Both work with any TRL trainer, not just ours.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable, Sequence

from cft_rl.verify.verifier import get_reward_func

logger = logging.getLogger(__name__)


def tolerant_reward(func: Callable, name: str | None = None) -> Callable:
    """``func`` as a TRL reward that never stops training on a bad completion.

    A NaN or infinite reward becomes None (TRL: "not scored"). If the batch call raises, each
    completion is scored on its own and those that raise become None. Each call logs the fraction of
    completions that failed as ``rewards/<name>/frac_failed`` (0.0 included, so the curve has no holes).
    ``log_extra`` columns are buffered and passed on only once complete, so a failure never misaligns
    TRL's completions table. A wrong number of rewards is still an error: that is a bug, not a bad row.
    """
    name = name or getattr(func, "__name__", type(func).__name__)

    @functools.wraps(func)
    def reward(prompts=None, completions=None, log_extra=None, log_metric=None, **kwargs) -> list:
        n = len(completions)
        values, extras = _score_all(func, prompts, completions, kwargs, n)
        if len(values) != n:
            raise ValueError(f"reward {name!r} returned {len(values)} rewards for {n} completions")
        failed = [v is None or not _finite(v) for v in values]
        if log_extra is not None:
            for column, column_values in extras.items():
                log_extra(column, column_values)
        if log_metric is not None:
            log_metric(f"rewards/{name}/frac_failed", sum(failed) / max(1, n))
        return [None if bad else float(v) for v, bad in zip(values, failed, strict=True)]

    reward.__name__ = name
    return reward


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _score_all(func, prompts, completions, kwargs, n) -> tuple[list, dict]:
    """``func`` on the whole batch; if it raises, on each row alone (a failed row scores None)."""
    extras: dict[str, list] = {}
    try:
        values = list(func(prompts=prompts, completions=completions, log_extra=_collect(extras), **kwargs))
        return values, extras
    except Exception as exc:  # any error of user code: isolate the rows that cause it
        logger.warning("reward %s failed on a batch (%r); scoring its %d rows one by one", func, exc, n)
    values, rows = [], []
    for i in range(n):
        row_extras: dict[str, list] = {}
        row_kwargs = {k: v[i : i + 1] if _per_row(v, n) else v for k, v in kwargs.items()}
        try:
            out = func(
                prompts=None if prompts is None else prompts[i : i + 1],
                completions=completions[i : i + 1],
                log_extra=_collect(row_extras),
                **row_kwargs,
            )
            values.append(list(out)[0])
        except Exception:
            values.append(None)
            row_extras = {}
        rows.append(row_extras)
    columns = {column for row in rows for column in row}
    extras = {c: [row[c][0] if row.get(c) else None for row in rows] for c in sorted(columns)}
    return values, extras


def _collect(store: dict[str, list]) -> Callable[[str, list], None]:
    return lambda column, values: store.setdefault(column, []).extend(values)


def _per_row(value, n: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == n


def build_reward_funcs(names: Sequence[str]) -> list[Callable]:
    """The rewards of ``reward_funcs``, each made failure-tolerant; an unknown name names the field."""
    funcs = []
    for name in names:
        try:
            func = get_reward_func(name)
        except ValueError as exc:
            raise ValueError(f"reward_funcs: {exc}") from None
        if inspect.iscoroutinefunction(func):
            funcs.append(func)  # TRL awaits these; they keep TRL's own None handling
        else:
            funcs.append(tolerant_reward(func, name.replace(":", ".").rpartition(".")[2]))
    return funcs
