"""CPU settings for torch: float math for the toy world, and a thread count that fits a busy machine."""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path


@contextlib.contextmanager
def cpu_float_math(threads: int | None = None):
    """Float32 denormals flushed to zero, and optionally a fixed thread count, restored on exit.

    Small models on CPU produce denormals all the time: Adam's second moments of tiny gradients, SiLU
    of very negative inputs, near-zero attention weights. x86 CPUs run arithmetic on them ~100x slower
    (measured here: a 4096x160x480 product, 15 ms -> 1.5 s; critical-token annotation of the toy model,
    17.3 s -> 5.9 s). Flushing them changes nothing a model can learn or predict. Both settings are
    process-wide, so they are restored: left on, flushing breaks code that relies on subnormals
    (hypothesis refuses to run, for one). A fixed thread count makes reductions reproducible.
    """
    import torch  # here, not at the top: the thread-fitting functions below need no torch

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # torch's default; it offers no getter to restore from
        torch.set_num_threads(previous_threads)


# Trainer settings shared by the CPU tests and benchmarks: no checkpoints, no trackers, float32
# (no bf16 on these CPUs' fast paths), no recomputation. Spread into a TRL config: ``**QUIET_CPU_RUN``.
QUIET_CPU_RUN = dict(
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    bf16=False,
    gradient_checkpointing=False,
)


# --- threads that fit the free cores ---------------------------------------------------------------

# Background use up to this share of a core still counts the core as free: an idle machine always has
# some (a shell, the kernel, a logger), and losing a thread to it would halve a 2-core run for nothing.
SLACK = 0.3


def fit_threads(cores: int, busy: float, slack: float = SLACK) -> int:
    """The torch threads to run with on ``cores`` cores while other processes keep ``busy`` cores busy.

    Why not every core: torch's CPU kernels split each operation evenly across their threads, and the
    threads wait for each other at its end, spinning (OpenMP's waiting policy). A thread that shares its
    core with another process gets a fraction of it; the others wait for it, spinning, and take time
    from the process that slows it. Measured on the toy: a GRPO step went from 2.5 s to 10-39 s while
    another process used one core of two. One thread per free core avoids the fight.

    Args:
        cores: the cores this process may run on (:func:`usable_cores`).
        busy: the cores' worth of CPU that other processes use (:func:`measure_load`).
        slack: background use up to this share of a core still counts the core as free.

    Returns: ``floor(cores - busy + slack)``, at least 1 and at most ``cores``.
    """
    if cores < 1:
        raise ValueError(f"cores must be at least 1, got {cores}")
    free = round(cores - busy + slack, 6)  # rounded: 10 - 8.3 + 0.3 is 2, not 1.9999999999999993
    return max(1, min(cores, math.floor(free)))


def _affinity() -> set[int] | None:
    """The CPU ids this process may run on (taskset, a container's cpuset), where the OS says."""
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, else every core."""
    cpus = _affinity()
    return len(cpus) if cpus else os.cpu_count() or 1


@dataclass
class Load:
    """What :func:`measure_load` found: ``busy`` cores' worth of other processes' CPU use out of
    ``cores``, and how it was measured (``/proc/stat``, ``loadavg`` or ``none``)."""

    cores: int
    busy: float
    source: str


PROC_STAT = Path("/proc/stat")


def _read_proc_stat() -> str | None:
    try:
        return PROC_STAT.read_text()
    except OSError:  # not Linux, or no /proc in this sandbox
        return None


def _process_clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all its threads)."""
    return time.monotonic(), time.process_time()


def stat_jiffies(text: str, cpus: set[int] | None = None) -> tuple[int, int, int]:
    """(busy, total, CPUs counted) clock ticks summed over the ``cpuN`` lines of ``/proc/stat`` text,
    only those of ``cpus`` if given. Idle and iowait are idle; steal (a hypervisor running another
    machine on the core) is busy: either way the core is not ours. Guest time is already in user."""
    busy = total = counted = 0
    for line in text.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or not name[3:].isdigit():
            continue  # the all-CPU "cpu" line, and the other counters
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in (fields + ["0"] * 8)[:8])
        ticks = user + nice + system + idle + iowait + irq + softirq + steal
        busy, total, counted = busy + ticks - idle - iowait, total + ticks, counted + 1
    return busy, total, counted


def measure_load(window: float = 0.3) -> Load:
    """The cores other processes keep busy, measured now over ``window`` seconds.

    On Linux: the busy share of this process's CPUs in ``/proc/stat`` over the window, minus this
    process's own CPU time over it (torch's threads may still spin after the last operation). Elsewhere:
    the 1-minute load average, which is coarse and counts this process's recent work too, so it errs
    toward fewer threads; with neither, the machine is taken as idle (torch's own default).
    """
    cores, cpus = usable_cores(), _affinity()
    before, clock_before = _read_proc_stat(), _process_clock()
    if before is not None:
        time.sleep(window)
        after, clock_after = _read_proc_stat(), _process_clock()
        (b0, t0, n), (b1, t1, _) = stat_jiffies(before, cpus), stat_jiffies(after or "", cpus)
        if n and t1 > t0:
            wall = clock_after[0] - clock_before[0]
            own = (clock_after[1] - clock_before[1]) / wall if wall > 0 else 0.0
            return Load(cores, max(0.0, (b1 - b0) / (t1 - t0) * n - own), "/proc/stat")
    if hasattr(os, "getloadavg"):
        return Load(cores, os.getloadavg()[0], "loadavg")
    return Load(cores, 0.0, "none")
