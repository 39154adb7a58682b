"""Torch threads fitted to the free cores (issue 17): the fit on hand numbers, and the load measured from
made-up ``/proc/stat`` readings."""

from __future__ import annotations

import os

import pytest

import cft_rl.cpu as cpu
from cft_rl.cpu import Load, fit_threads, measure_load, stat_jiffies

# --- the fit and the measurement -------------------------------------------------------------------


@pytest.mark.parametrize(
    "cores, busy, expected",
    [
        (2, 0.0, 2),  # idle: every core
        (2, 0.3, 2),  # background noise up to the slack costs no thread (2 - 0.3 + 0.3 = 2 exactly)
        (2, 0.31, 1),
        (2, 1.0, 1),  # the case: another process on one core of two
        (2, 2.5, 1),  # never below 1
        (16, 3.5, 12),  # 16 - 3.5 + 0.3 = 12.8
        (10, 8.3, 2),  # exactly 2, which floats make 1.9999999999999993
        (8, -0.5, 8),  # never above the cores
        (1, 0.0, 1),
    ],
)
def test_fit_threads_on_hand_numbers(cores, busy, expected):
    assert fit_threads(cores, busy) == expected


def test_fit_threads_slack_and_bad_cores():
    assert fit_threads(4, 1.5, slack=0.0) == 2 and fit_threads(4, 1.5, slack=0.5) == 3
    with pytest.raises(ValueError, match="cores must be at least 1"):
        fit_threads(0, 0.0)


def _stat(*cpus: tuple[int, int, int]) -> str:
    """/proc/stat text with one line per (user, system, idle); the all-CPU line is a decoy."""
    lines = ["cpu  999999 0 999999 0 0 0 0 0 0 0"]
    lines += [f"cpu{i} {u} 0 {s} {idle} 0 0 0 0 0 0" for i, (u, s, idle) in enumerate(cpus)]
    return "\n".join([*lines, "intr 123 4 5", "ctxt 678"]) + "\n"


def test_stat_jiffies_counts_the_allowed_cpus():
    text = _stat((10, 5, 85), (40, 10, 50), (100, 0, 0))
    assert stat_jiffies(text) == (165, 300, 3)
    assert stat_jiffies(text, {0, 1}) == (65, 200, 2)  # cpu2 is outside the affinity
    # user nice system idle iowait irq softirq steal guest guest_nice: idle and iowait are idle
    assert stat_jiffies("cpu0 1 2 3 4 5 6 7 8 9 9\n") == (1 + 2 + 3 + 6 + 7 + 8, 36, 1)


def _fake_machine(monkeypatch, texts, clocks, cpus=(0, 1)):
    texts, clocks = iter(texts), iter(clocks)
    monkeypatch.setattr(cpu, "_affinity", lambda: set(cpus))
    monkeypatch.setattr(cpu, "_read_proc_stat", lambda: next(texts))
    monkeypatch.setattr(cpu, "_process_clock", lambda: next(clocks))


def test_measure_load_is_the_others_busy_cores(monkeypatch):
    # Over the window: cpu0 fully busy (30 of 30 ticks), cpu1 3 of 30; cpu2, outside the affinity,
    # fully busy too. Busy share of the two allowed CPUs: 33/60 -> 1.1 cores, of which this process
    # used 0.03 s of CPU in 0.3 s: 0.1 core. The others: 1.0.
    before = _stat((100, 0, 900), (100, 0, 900), (0, 0, 0))
    after = _stat((130, 0, 900), (102, 1, 927), (30, 0, 0))
    _fake_machine(monkeypatch, [before, after], [(10.0, 5.0), (10.3, 5.03)])
    load = measure_load(window=0)
    assert load.cores == 2 and load.source == "/proc/stat"
    assert load.busy == pytest.approx(1.0)


def test_measure_load_never_negative(monkeypatch):
    # This process's own spinning threads are all the load there is (and a little more, by rounding).
    before, after = _stat((0, 0, 100), (0, 0, 100)), _stat((30, 0, 100), (0, 0, 130))
    _fake_machine(monkeypatch, [before, after], [(0.0, 0.0), (0.3, 0.31)])
    assert measure_load(window=0).busy == 0.0


def test_measure_load_falls_back_to_the_load_average(monkeypatch):
    _fake_machine(monkeypatch, [None, None], [(0.0, 0.0), (0.3, 0.0)], cpus={0, 1, 2})
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (1.5, 1.0, 0.5), raising=False)
    assert measure_load(window=0) == Load(3, 1.5, "loadavg")
    monkeypatch.delattr(cpu.os, "getloadavg", raising=False)
    assert measure_load(window=0) == Load(3, 0.0, "none")  # neither: as idle (torch's default)


def test_measure_load_on_this_machine_is_a_reading():
    load = measure_load(window=0.05)
    assert 1 <= load.cores <= (os.cpu_count() or 1) and load.busy >= 0.0
