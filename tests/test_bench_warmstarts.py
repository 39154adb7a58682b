"""scripts/bench_warmstarts.py without a model: which SFT runs it finds in a pipeline folder (one per
arm, or one per arm and GRPO seed), and the figures it reports from hand-made measurements."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest


@pytest.fixture
def bench(load_script):
    """The script as a module; its report module beside it is found as when it runs as a script."""
    return load_script("bench_warmstarts")


def _run(folder: Path, finished: bool = True) -> None:
    folder.mkdir(parents=True)
    if finished:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 3}))


def _pipeline(root: Path, runs: list[str]) -> Path:
    (root / "toy" / "world" / "data").mkdir(parents=True)
    for run in runs:
        _run(root / "sft" / run)
    return root


# --- which runs -------------------------------------------------------------------------------------


def test_an_arm_trained_once_is_its_folder(bench, tmp_path):
    root = _pipeline(tmp_path, ["random", "critical", "full"])
    found = bench.pipeline_arms(root)
    assert found == {name: root / "sft" / name for name in ("full", "critical", "random")}  # pipeline order


def test_an_arm_trained_per_grpo_seed_is_its_seed_folders(bench, tmp_path):
    root = _pipeline(tmp_path, [f"{arm}/seed{s}" for arm in ("critical", "full") for s in (10, 2)])
    found = bench.pipeline_arms(root)
    assert list(found) == [
        "full/seed2",
        "full/seed10",
        "critical/seed2",
        "critical/seed10",
    ]  # seeds by number
    assert found["full/seed10"] == root / "sft" / "full" / "seed10"
    args = bench.parse_args(["--pipeline", str(root), "--no-write"])
    _, models = bench.models_to_measure(args)
    assert models["critical/seed2"]["eval"] == root / "eval" / "sft" / "critical" / "seed2"
    assert models["base"]["eval"] == root / "eval" / "base"
    assert bench.default_seeds(models) == [0]  # the SFT runs are the replicates
    assert bench.default_seeds({"base": {}, "full": {}, "critical": {}}) == [0, 1, 2]


def test_an_unfinished_seed_run_or_mixed_layouts_are_refused(bench, tmp_path):
    root = _pipeline(tmp_path / "a", ["full/seed0", "critical/seed0"])
    _run(root / "sft" / "full" / "seed1", finished=False)
    with pytest.raises(SystemExit, match=r"not finished.*\['full/seed1'\]"):
        bench.pipeline_arms(root)
    mixed = _pipeline(tmp_path / "b", ["full/seed0", "critical"])
    with pytest.raises(SystemExit, match=r"mixes layouts: \['critical'\] trained once, \['full'\]"):
        bench.pipeline_arms(mixed)


def test_a_stale_run_beside_seed_folders_is_left_out(bench, tmp_path, capsys):
    root = _pipeline(tmp_path, ["full/seed0", "critical/seed0"])
    _run(root / "sft" / "full" / "checkpoint-3")  # not a seed folder
    (root / "sft" / "full" / "trainer_state.json").write_text("{}")  # a run from before the option
    assert list(bench.pipeline_arms(root)) == ["full/seed0", "critical/seed0"]
    assert "measuring the seed folders" in capsys.readouterr().err


# --- the figures --------------------------------------------------------------------------------------


def _model(pass1: dict[int, float], greedy: float | None = None) -> dict:
    """A measured model: pass@1 per sampling seed, every other metric 0.5 (pass@k 0.5 + pass@1)."""
    seeds = {}
    for seed, p in pass1.items():
        seeds[seed] = {m: 0.5 for m in ("entropy", "distinct_answers", "distinct_completions")}
        seeds[seed] |= {"pass@1": p, "pass@k": 0.5 + p, "gap": 0.5}
    found = {"benchmark": "toy-test", "accuracy": greedy, "questions": 200, "max_new_tokens": 192}
    return {"path": "x", "eval": None, "seeds": seeds, "greedy": found if greedy is not None else None}


def test_an_arm_of_one_run_spreads_over_sampling_seeds(bench):
    from warmstarts_report import summarize

    models = {"base": _model({0: 0.30, 1: 0.34}, 0.40), "full": _model({0: 0.40, 1: 0.50}, 0.45)}
    full = summarize(models)["full"]
    assert full["pass@1"]["mean"] == pytest.approx(0.45) and full["pass@1"]["sd"] == pytest.approx(
        math.sqrt(0.005)
    )
    d = full["vs_base"]
    assert d["pass@1"]["mean"] == pytest.approx(0.13)  # (0.10 + 0.16) / 2, paired by sampling seed
    assert (d["pass@1"]["min"], d["pass@1"]["max"]) == (pytest.approx(0.10), pytest.approx(0.16))
    assert d["greedy"]["mean"] == pytest.approx(0.05) and d["greedy"]["sd"] is None


def test_an_arm_of_several_runs_spreads_over_its_runs(bench):
    from warmstarts_report import render, summarize

    models = {
        "base": _model({0: 0.30, 1: 0.34}, 0.40),
        "full/seed0": _model({0: 0.40, 1: 0.50}, 0.50),  # mean 0.45
        "full/seed1": _model({0: 0.60, 1: 0.60}, 0.60),  # mean 0.60
        "full_replica/seed0": _model({0: 0.50, 1: 0.50}, 0.55),
        "full_replica/seed1": _model({0: 0.70, 1: 0.50}, 0.50),
    }
    summary = summarize(models)
    full = summary["full"]
    assert full["runs"] == ["full/seed0", "full/seed1"]
    assert full["pass@1"]["mean"] == pytest.approx(0.525)  # over the runs' means, not the 4 samples
    assert full["pass@1"]["sd"] == pytest.approx(math.sqrt(2 * 0.075**2))
    assert full["greedy"]["mean"] == pytest.approx(0.55) and full["greedy"]["sd"] == pytest.approx(
        math.sqrt(0.005)
    )
    d = full["vs_base"]["pass@1"]  # each run against the base, paired by sampling seed: 0.13, then 0.28
    assert (d["mean"], d["min"], d["max"]) == (pytest.approx(0.205), pytest.approx(0.13), pytest.approx(0.28))
    text = render(
        models, summary, {"samples": 8, "seeds": [0, 1], "problems": 10, "split": "v", "max_new_tokens": 9}
    )
    assert "over those **SFT runs**" in text and "**sampling** seeds only" not in text
    assert "| full | 55.0 ± 7.1% | 52.5 ± 10.6% |" in text
    assert "| full/seed1 | 60.0% | 60.0 ± 0.0% |" in text  # each run's row: over its sampling seeds
    # full_replica − full, paired by GRPO seed: seed0 +0.05, seed1 0.00 (pass@1); greedy +0.05, -0.10.
    assert (
        "mean over the 2 pairs, min to max): greedy -2.5 pt (-10.0 to +5.0); pass@1 +2.5 pt (+0.0 to +5.0)"
        in text
    )


def test_the_report_of_one_run_per_arm_says_the_spread_is_the_sampling_seeds(bench):
    from warmstarts_report import render, summarize

    models = {"base": _model({0: 0.30, 1: 0.34}), "full": _model({0: 0.40, 1: 0.50})}
    text = render(
        models,
        summarize(models),
        {"samples": 8, "seeds": [0, 1], "problems": 10, "split": "v", "max_new_tokens": 9},
    )
    assert "over the 2 **sampling** seeds only: each warm start is one SFT training run" in text
    assert "| full | – | 45.0 ± 7.1% |" in text and "Each SFT run" not in text
