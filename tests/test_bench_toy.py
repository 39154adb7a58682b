"""scripts/bench_toy.py: issue 17's acceptance checks of the base model, computed from the measurements,
and the steps builds of a constant schedule made in one run."""

from __future__ import annotations

import argparse
import dataclasses

import pytest


@pytest.fixture
def bench(load_script):
    return load_script("bench_toy")


def _build(name, train, scale=None, **critical):
    fractions = {"overall": 0.15, "digit": 0.7, "operator": 0.65, "format": 0.2, "word": 0.02}
    fractions |= {"format outside the box": 0.03, **critical}
    return {"name": name, "seed": int(name[4]), "scale": scale, "steps": 4000, "train_greedy": train, "pass@1": 0.4, "pass@8": 0.7,
            "distinct_completions": 8.0, "critical": fractions}  # fmt: skip


def _steps(name, change_pt, scale):
    """A steps build: only its paired change against its seed's build is measured (on many problems)."""
    change = {"mean": change_pt, "se": 0.6, "low": change_pt - 1.2, "high": change_pt + 1.2}
    return {"name": name, "seed": int(name[4]), "scale": scale, "steps": 4400, "paired": {"change": change}}


def _failed(checks) -> list[str]:
    return [c["check"] for c in checks if not c["pass"]]


def test_a_robust_base_passes_every_check(bench):
    builds = [_build("seed0", 0.55), _build("seed1", 0.60), _build("seed2", 0.52)]
    builds += [_steps("seed0-steps90", -3.0, 0.9), _steps("seed0-steps110", 3.0, 1.1)]
    assert _failed(bench.acceptance(builds, 8)) == []


def test_each_bound_fails_on_its_own(bench):
    seeds = [_build("seed0", 0.55), _build("seed1", 0.60), _steps("seed0-steps90", 1.0, 0.9)]
    spread = bench.acceptance([*seeds, _build("seed2", 0.44)], 8)
    assert _failed(spread) == ["train greedy accuracy spread over seeds ≤ 10 pt"]
    cliff = bench.acceptance([*seeds, _steps("seed0-steps110", 6.0, 1.1)], 8)
    assert _failed(cliff) == ["steps builds: train greedy accuracy within 5 pt of seed0"]
    # The box's braces may be critical (they say which number is the answer); format outside it may not.
    boxed = bench.acceptance([*seeds, _build("seed2", 0.55, format=0.9)], 8)
    assert _failed(boxed) == []
    outside = bench.acceptance([*seeds, _build("seed2", 0.55, **{"format outside the box": 0.06})], 8)
    assert _failed(outside) == ["critical fraction of format tokens outside the box ≤ 5%, every seed"]
    digits = bench.acceptance([*seeds, _build("seed2", 0.55, digit=0.4)], 8)
    assert _failed(digits) == ["critical fraction of digit tokens > 50%, every seed"]


def test_an_unmeasured_class_fails_its_check(bench):
    checks = bench.acceptance([_build("seed0", 0.55, word=None), _steps("seed0-steps90", 0.0, 0.9)], 8)
    assert _failed(checks) == ["critical fraction of word tokens ≤ 5%, every seed"]
    no_steps_builds = bench.acceptance([_build("seed0", 0.55)], 8)
    assert _failed(no_steps_builds) == ["steps builds: train greedy accuracy within 5 pt of seed0"]


def test_steps_builds_of_several_seeds_each_compare_with_their_own_seed(bench, load_script):
    seeds = [_build("seed0", 0.50), _build("seed1", 0.60), _build("seed2", 0.55)]
    steps = [_steps("seed0-steps4400", 3.0, 1.1), _steps("seed1-steps4400", -4.9, 1.1)]
    check = bench.acceptance([*seeds, *steps], 8)[-1]
    assert check["pass"] and check["check"].endswith("of its seed's build (seed0, seed1)")
    assert check["measured"] == "seed0-steps4400 +3.0 pt [+1.8, +4.2], seed1-steps4400 -4.9 pt [-6.1, -3.7]"
    drift = bench.acceptance([*seeds, steps[0], _steps("seed1-steps4400", -5.2, 1.1)], 8)[-1]
    assert not drift["pass"] and drift["measured"].endswith("seed1-steps4400 -5.2 pt [-6.4, -4.0]")
    # The seed table has no row of a steps build: they were not measured on its columns.
    rows = load_script("toy_checks").table(
        [{**b, "test_greedy": 0.5, "distinct_answers": 3.0, "entropy": 0.2, "annotated": 70} for b in seeds]
        + steps,
        8,
    )
    assert "steps4400" not in rows and "| **mean over seeds** |  |  | 55.0% |" in rows


def test_a_steps_build_is_measured_paired_against_its_own_seed(bench, monkeypatch, tmp_path):
    def fake_measure(folder, problems, max_new_tokens):
        correct = {"seed1": [1, 1, 0, 0], "seed1-steps5500": [1, 1, 1, 0]}[folder.name]
        return {"build": folder.name, "steps": 5, "prompts": ["a", "b", "c", "d"], "correct": correct,
                "hard": [False, True, False, True], "problems": problems}  # fmt: skip

    monkeypatch.setattr(bench, "steps_measure", fake_measure)
    args = argparse.Namespace(steps_problems=4, max_new_tokens=9)
    found = bench.measure_steps_build(tmp_path / "seed1-steps5500", tmp_path / "seed1", args)
    assert found["reference"] == "seed1" and found["change"]["mean"] == pytest.approx(25.0)
    assert found["change"]["se"] == pytest.approx(25.0)  # differences 0, 0, 100, 0: sd 50, over sqrt 4


def test_steps_builds_are_planned_for_the_steps_seeds_only(bench):
    args = argparse.Namespace(tiny=True, set=[], seeds=[0, 1, 2], steps_scale=[0.5], steps_seeds=[1, 2])
    planned = [(b["name"], b["scale"]) for b in bench.plan_builds(args)]
    steps = bench.plan_builds(args)[-1]["config"].steps
    assert planned[3:] == [(f"seed1-steps{steps}", 0.5), (f"seed2-steps{steps}", 0.5)]
    with pytest.raises(SystemExit, match="must be among --seeds"):
        bench.plan_builds(argparse.Namespace(**{**vars(args), "steps_seeds": [3]}))


def test_constant_schedule_steps_builds_come_from_one_run(bench, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "build_lengths", lambda folders, shape: calls.append((dict(folders), shape)))
    args = argparse.Namespace(
        tiny=True, set=['lr_schedule="constant"'], seeds=[0, 1], steps_scale=[0.5, 2.0], steps_seeds=None
    )
    specs = bench.plan_builds(args)
    bench.build_constant_lengths(specs, tmp_path)
    assert [sorted(folders) for folders, _ in calls] == [[15, 30, 60], [30]]  # seed 0's lengths, then seed 1
    assert calls[0][0][15] == tmp_path / "seed0-steps15"
    assert {dataclasses.replace(shape, steps=30).seed for _, shape in calls} == {0, 1}
    calls.clear()
    bench.build_constant_lengths(bench.plan_builds(argparse.Namespace(**{**vars(args), "set": []})), tmp_path)
    assert calls == []  # a cosine schedule: each length is its own build


@pytest.fixture
def curve(load_script):
    return load_script("bench_toy_curve")


def test_accuracy_by_difficulty_by_hand(curve):
    found = curve.by_difficulty([True, False, True, True, False], [False, False, True, True, True])
    assert found == {"all": 0.6, "easy": 0.5, "hard": pytest.approx(2 / 3)}
    assert curve.by_difficulty([True], [False])["hard"] is None  # no hard problem: undefined, not 0


def test_a_curve_is_read_only_for_the_build_it_was_recorded_with(curve, tmp_path):
    import json

    folder = tmp_path / "seed0"
    points = [{"step": 10, "all": 0.5, "easy": 0.75, "hard": 0.25}]
    curve.curve_path(folder).write_text(json.dumps({"key": "abc", "points": points}))
    assert curve.read_curve(folder, "abc") == points
    assert curve.read_curve(folder, "other") is None  # a rebuilt folder: its old curve is not its own
    assert curve.read_curve(tmp_path / "seed1", "abc") is None
    table = curve.curve_table(
        [
            {
                "name": "seed0",
                "steps": 20,
                "curve": points,
                "train_difficulty": {"all": 0.6, "easy": 1.0, "hard": None},
            }
        ]
    )
    assert "| seed0 | 10 | 50.0% | 75.0% | 25.0% |" in table
    assert "| **seed0 (saved)** | 20 | 60.0% | 100.0% | – |" in table
    assert curve.curve_table([{"name": "seed0", "curve": None}]) == ""
