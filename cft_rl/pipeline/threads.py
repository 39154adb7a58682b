"""Torch CPU threads of the pipeline's stages: the recipe's top-level ``threads`` (an int, or ``auto``).

``auto`` fits the count to the cores that are free when each stage starts (:func:`cft_rl.cpu.fit_threads`):
on a machine shared with another job, torch's threads wait for each other spinning, and a thread that
shares a core with the other job slows every step several times over (a toy GRPO step: 2.5 s alone,
10-39 s with one core of two taken). Fewer threads than cores avoids it. The cost: the thread count
decides how float sums are split, so runs under different loads stay seed-comparable (same data, same
draws, the same results up to rounding) but are not bitwise identical. That is why the count is left
out of the stage keys (changing it reruns nothing) but written to each stage's manifest, and why the
toy build keeps its own fixed ``toy.threads``: the world every stage starts from must not depend on load.

Applied to the stages that run torch (annotate, sft, grpo, eval): in this process through
``torch.set_num_threads``, and for a stage under a launcher through ``OMP_NUM_THREADS`` (which
``accelerate launch`` passes on), split between the launcher's processes. Both are restored afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from pathlib import Path

import yaml

from cft_rl.cpu import fit_threads, measure_load, usable_cores

logger = logging.getLogger(__name__)
THREADED_KINDS = ("annotate", "sft", "grpo", "eval")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def choose_threads(setting: int | str) -> dict:
    """The count for a stage starting now: ``{"threads": n, "setting": ...}``, and for ``auto`` what
    was measured (cores, busy cores, how)."""
    if setting != "auto":
        return {"threads": int(setting), "setting": int(setting)}
    load = measure_load()
    threads = fit_threads(load.cores, load.busy)
    busy = round(load.busy, 2)
    return {
        "threads": threads,
        "setting": "auto",
        "cores": load.cores,
        "busy": busy,
        "measured_by": load.source,
    }


def lane_threads(setting: int | str | None, lanes: int, own: int = 0) -> int:
    """Torch threads of one lane of ``lanes`` (:mod:`cft_rl.pipeline.lanes`): an equal share of
    ``setting``'s count, at least 1. For ``auto`` the free cores are measured now, the ``own`` threads
    of the lanes already running not counted as another job's; ``None``: a share of every core."""
    if setting is None:
        total = usable_cores()
    elif setting == "auto":
        load = measure_load()
        total = fit_threads(load.cores, max(0.0, load.busy - own))
    else:
        total = int(setting)
    return max(1, total // lanes)


def launch_processes(launch: str | None) -> int:
    """How many processes a launcher command starts on this machine: ``--num_processes N`` (accelerate),
    ``--nproc_per_node N`` (torchrun), else its ``--config_file``'s ``num_processes``; 1 if none says."""
    if not launch:
        return 1
    words = shlex.split(launch)
    flags = {}
    for i, word in enumerate(words):
        name, sep, value = word.partition("=")
        if name.startswith("--"):
            flags[name] = value if sep else (words[i + 1] if i + 1 < len(words) else "")
    for flag in ("--num_processes", "--nproc_per_node", "--nproc-per-node"):
        if flags.get(flag, "").isdigit():
            return max(1, int(flags[flag]))
    config = Path(flags.get("--config_file", ""))
    if flags.get("--config_file") and config.is_file():
        number = (yaml.safe_load(config.read_text()) or {}).get("num_processes")
        if isinstance(number, int) and number > 0:
            return number
    return 1


@contextlib.contextmanager
def stage_threads(setting: int | str | None, name: str, kind: str, launch: str | None):
    """Run a stage's job inside this to give it ``setting``'s threads; yields what was chosen (for the
    manifest), or None where nothing is set: no ``threads`` in the recipe, or a stage without torch."""
    if setting is None or kind not in THREADED_KINDS:
        yield None
        return
    chosen = choose_threads(setting)
    processes = launch_processes(launch)
    per_process = max(1, chosen["threads"] // processes)
    if processes > 1:
        chosen |= {"processes": processes, "threads_per_process": per_process}
    how = f"{chosen['busy']} of {chosen['cores']} cores busy" if setting == "auto" else "the recipe's"
    logger.info("%s: %d torch thread(s) (threads: %s; %s)", name, chosen["threads"], setting, how)
    saved_env = {key: os.environ.get(key) for key in THREAD_ENV}
    os.environ.update({key: str(per_process) for key in THREAD_ENV})
    torch = None
    if not launch:  # an in-process job: its torch is already started, so the env alone is too late
        import torch

        saved_threads = torch.get_num_threads()
        torch.set_num_threads(per_process)
    try:
        yield chosen
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if torch is not None:
            torch.set_num_threads(saved_threads)
