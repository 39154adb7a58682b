"""scripts/bench_toy_steps.py: a steps build's paired change against its seed's build, on hand-made
correctness lists."""

from __future__ import annotations

import math

import pytest


@pytest.fixture
def steps(load_script):
    return load_script("bench_toy_steps")


def _measured(build, correct, hard=None, prompts=None, steps=4000):
    n = len(correct)
    return {"build": build, "steps": steps, "correct": correct, "hard": hard or [False] * n,
            "prompts": prompts or [f"p{i}" for i in range(n)]}  # fmt: skip


def test_the_change_is_the_mean_of_per_problem_differences(steps):
    # 8 problems, the last 4 hard: the steps build gains problems 1 and 5, loses problem 2.
    ref = _measured("seed0", [1, 0, 1, 0, 1, 0, 0, 0], hard=[False] * 4 + [True] * 4)
    other = _measured("seed0-steps4400", [1, 1, 0, 0, 1, 1, 0, 0], hard=[False] * 4 + [True] * 4, steps=4400)
    row = steps.paired_change(ref, other, bound=5.0)
    # differences in points: 0, +100, -100, 0, 0, +100, 0, 0 -> mean 12.5
    assert row["change"]["mean"] == pytest.approx(12.5)
    # sample sd of those differences: two at +87.5 from the mean, one at -112.5, five at -12.5
    sd = math.sqrt((2 * 87.5**2 + 112.5**2 + 5 * 12.5**2) / 7)
    assert row["change"]["se"] == pytest.approx(sd / math.sqrt(8))
    assert row["accuracy"]["all"] == pytest.approx(0.5) and row["reference_accuracy"]["all"] == pytest.approx(
        3 / 8
    )
    # easy 2/4 -> 2/4 (0 pt), hard 1/4 -> 2/4 (+25 pt)
    assert row["change_easy"] == pytest.approx(0.0) and row["change_hard"] == pytest.approx(25.0)
    assert row["within_bound"] is False
    assert steps.paired_change(ref, other, bound=12.5)["within_bound"] is True


def test_a_loss_counts_against_the_bound_as_a_gain_does(steps):
    ref = _measured("seed1", [1] * 10)
    other = _measured("seed1-steps3600", [1] * 9 + [0], steps=3600)
    row = steps.paired_change(ref, other, bound=5.0)
    assert row["change"]["mean"] == pytest.approx(-10.0) and row["within_bound"] is False


def test_builds_of_different_worlds_are_refused(steps):
    ref = _measured("seed0", [1, 0])
    other = _measured("seed1-steps4400", [1, 1], prompts=["q0", "q1"])
    with pytest.raises(SystemExit, match="different worlds"):
        steps.paired_change(ref, other, bound=5.0)


def test_the_check_line_says_no_when_any_build_is_out_of_bound(steps):
    ref = _measured("seed0", [1, 0, 1, 0])
    rows = [
        steps.paired_change(ref, _measured("seed0-steps3600", [1, 0, 1, 0], steps=3600), 5.0),
        steps.paired_change(ref, _measured("seed0-steps4400", [1, 1, 1, 0], steps=4400), 5.0),
    ]
    text = steps.render(rows, 5.0)
    assert "seed0-steps3600 +0.0 pt, seed0-steps4400 +25.0 pt" in text
    assert "within 5 pt of its seed's build: **no**" in text
    assert "within 5 pt of its seed's build: **yes**" in steps.render(rows[:1], 5.0)
