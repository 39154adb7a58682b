"""Torch threads fitted to the free cores (issue 17): the fit on hand numbers, the load measured from
made-up ``/proc/stat`` readings, the recipe's ``threads`` key, and what the pipeline gives each stage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import cft_rl.cpu as cpu
import cft_rl.pipeline.threads as threads
from cft_rl.cpu import Load, fit_threads, measure_load, stat_jiffies
from cft_rl.pipeline.recipe import Recipe, RecipeError, plan
from cft_rl.pipeline.threads import launch_processes, stage_threads

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "toy" / "pipeline_smoke.yaml"
CPU_2PROC = ROOT / "recipes" / "accelerate_configs" / "cpu_2proc.yaml"


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


# --- the recipe key --------------------------------------------------------------------------------


def _recipe(tmp_path, *overrides) -> Recipe:
    return Recipe.load(SMOKE, [f"output_dir={tmp_path}", *overrides])


def test_threads_key_takes_auto_or_a_count(tmp_path):
    assert _recipe(tmp_path).threads == "auto"  # the toy recipes fit their threads by default
    assert _recipe(tmp_path, "threads=3").threads == 3
    assert _recipe(tmp_path, "threads=null").threads is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("thread=auto", r"unknown key 'thread' in the recipe; did you mean 'threads'"),
        ("threads=many", r"threads = 'many' \(str\) does not fit Recipe\.threads, which takes int \| 'auto'"),
        ("threads=2.5", r"threads = 2\.5 \(float\) does not fit Recipe\.threads"),
        ("threads=true", r"threads = True \(bool\) does not fit"),
        ("threads=0", r"threads = 0: give a count of at least 1, or auto"),
    ],
)
def test_a_bad_threads_key_errors_clearly(tmp_path, override, message):
    with pytest.raises(RecipeError, match=message):
        _recipe(tmp_path, override)


def test_threads_change_no_stage_key(tmp_path):
    # Results differ only in rounding across thread counts: changing it must not rerun finished stages.
    keys = {s.name: s.key for s in plan(_recipe(tmp_path))}
    assert {s.name: s.key for s in plan(_recipe(tmp_path, "threads=1"))} == keys


# --- what each stage gets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "launch, expected",
    [
        (None, 1),
        ("python", 1),
        ("accelerate launch --num_processes 4", 4),
        ("accelerate launch --num_processes=3 --mixed_precision no", 3),
        ("torchrun --nproc_per_node 8", 8),
        (f"accelerate launch --config_file {CPU_2PROC}", 2),
        ("accelerate launch --config_file /no/such/file.yaml", 1),
    ],
)
def test_launch_processes(launch, expected):
    assert launch_processes(launch) == expected


@pytest.fixture
def saved_threads():
    """torch's thread count and the thread variables, as they were before the test."""
    before = torch.get_num_threads(), {k: os.environ.get(k) for k in threads.THREAD_ENV}
    yield before
    torch.set_num_threads(before[0])


def test_an_in_process_stage_gets_the_count_then_it_is_restored(saved_threads):
    count = saved_threads[0] + 1  # differs from what torch had
    with stage_threads(count, "grpo/full/seed0", "grpo", None) as chosen:
        assert chosen == {"threads": count, "setting": count}
        assert torch.get_num_threads() == count and os.environ["OMP_NUM_THREADS"] == str(count)
    assert torch.get_num_threads() == saved_threads[0]
    assert {k: os.environ.get(k) for k in threads.THREAD_ENV} == saved_threads[1]


def test_a_launched_stage_splits_the_count_between_its_processes(saved_threads):
    with stage_threads(5, "sft/full", "sft", f"accelerate launch --config_file {CPU_2PROC}") as chosen:
        assert chosen["processes"] == 2 and chosen["threads_per_process"] == 2
        assert os.environ["OMP_NUM_THREADS"] == "2" and os.environ["MKL_NUM_THREADS"] == "2"
        assert torch.get_num_threads() == saved_threads[0]  # the subprocess reads the env; we are untouched
    assert {k: os.environ.get(k) for k in threads.THREAD_ENV} == saved_threads[1]


def test_auto_fits_the_measured_load_and_the_toy_build_keeps_its_own(monkeypatch, saved_threads):
    monkeypatch.setattr(threads, "measure_load", lambda: Load(5, 1.04, "/proc/stat"))
    with stage_threads("auto", "eval/base", "eval", None) as chosen:
        assert chosen == {
            "threads": 4,
            "setting": "auto",
            "cores": 5,
            "busy": 1.04,
            "measured_by": "/proc/stat",
        }
        assert torch.get_num_threads() == 4
    for kind in ("toy", "compare"):  # the toy build fixes toy.threads; compare runs no torch
        with stage_threads("auto", kind, kind, None) as chosen:
            assert chosen is None and torch.get_num_threads() == saved_threads[0]
    with stage_threads(None, "eval/base", "eval", None) as chosen:
        assert chosen is None and torch.get_num_threads() == saved_threads[0]


def test_the_pipeline_runs_each_stage_with_its_count_and_records_it(tmp_path, monkeypatch, saved_threads):
    import cft_rl.pipeline.run as pipeline

    monkeypatch.setattr(threads, "measure_load", lambda: Load(5, 1.0, "/proc/stat"))
    seen = {}

    def runner(stage, root):
        seen[stage.name] = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
        return {}

    monkeypatch.setattr(pipeline, "RUNNERS", dict.fromkeys(pipeline.RUNNERS, runner))
    lines = []
    recipe = _recipe(tmp_path)
    pipeline.run_pipeline(recipe, echo=lines.append)
    assert "torch threads of the annotate/sft/grpo/eval stages: auto" in lines[0]
    for stage in plan(recipe):
        manifest = pipeline.read_manifest(tmp_path, stage)
        if stage.kind in ("toy", "compare"):
            assert seen[stage.name][0] == saved_threads[0] and "threads" not in manifest, stage.name
        else:
            assert seen[stage.name] == (4, "4"), stage.name
            assert manifest["threads"]["threads"] == 4 and manifest["threads"]["busy"] == 1.0
    assert torch.get_num_threads() == saved_threads[0]
