"""`cft-rl pipeline`: recipe checks, stage keys, and the smoke recipe end to end (run, skip, rerun
downstream of a change, kill and resume)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cft_rl.pipeline.recipe import Recipe, RecipeError, plan
from cft_rl.pipeline.run import read_manifest, run_pipeline, status

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "toy" / "pipeline_smoke.yaml"


def _recipe(tmp_path, *overrides) -> Recipe:
    return Recipe.load(SMOKE, [f"output_dir={tmp_path}", *overrides])


# --- recipe checks and plans (no job runs) ---------------------------------------------------------


def test_plan_has_every_stage_in_order(tmp_path):
    stages = plan(_recipe(tmp_path))
    names = [s.name for s in stages]
    assert names[:4] == ["toy", "annotate", "sft/full", "sft/critical"]
    assert names[4:8] == ["grpo/full/seed0", "grpo/critical/seed0", "grpo/full/seed1", "grpo/critical/seed1"]
    assert names[-1] == "compare" and "eval/base" in names and "eval/grpo/critical/seed1" in names
    by_name = {s.name: s for s in stages}
    grpo = by_name["grpo/critical/seed1"]
    assert grpo.settings["model_name_or_path"] == str(tmp_path / "sft" / "critical")
    assert grpo.settings["seed"] == 1 and grpo.settings["output_dir"] == str(tmp_path / "grpo/critical/seed1")
    # identical RL settings across arms: only the warm start, seed and folder differ
    other = by_name["grpo/full/seed1"].settings
    differ = {k for k in grpo.settings if grpo.settings[k] != other.get(k)}
    assert differ == {"model_name_or_path", "output_dir"}
    assert by_name["sft/critical"].settings["strategy"] == "critical"
    assert by_name["compare"].settings["labels"] == ["full", "critical", "full", "critical"]


def _keys(recipe: Recipe) -> dict[str, str]:
    return {s.name: s.key for s in plan(recipe)}


def test_a_section_change_rekeys_only_its_stages_and_downstream(tmp_path):
    base = _keys(_recipe(tmp_path))
    grpo = _keys(_recipe(tmp_path, "grpo.learning_rate=3e-4"))
    changed = {n for n in base if base[n] != grpo[n]}
    assert changed == {n for n in base if n.startswith(("grpo/", "eval/grpo/"))} | {"compare"}
    sft = _keys(_recipe(tmp_path, "sft.learning_rate=5e-4"))
    assert {n for n in base if base[n] != sft[n]} == {
        n for n in base if n.startswith(("sft/", "grpo/", "eval/sft/", "eval/grpo/"))
    } | {"compare"}
    toy = _keys(_recipe(tmp_path, "toy.steps=31"))
    assert all(base[n] != toy[n] for n in base)  # everything is downstream of the toy world


def test_a_new_default_build_rekeys_the_toy_stage(tmp_path, monkeypatch):
    """``toy: {}`` reads the same after the default preset or its embedded model changes: the stage
    key must follow the build's own key, or an old pipeline folder keeps the old base model."""
    import cft_rl.toy.config as toy_config

    base = _keys(_recipe(tmp_path))
    monkeypatch.setattr(toy_config, "BUILD_VERSION", f"{toy_config.BUILD_VERSION}-next")
    assert all(base[n] != k for n, k in _keys(_recipe(tmp_path)).items())


def test_settings_that_do_not_change_results_rerun_nothing(tmp_path):
    base = _keys(_recipe(tmp_path))
    assert _keys(_recipe(tmp_path, "annotate.batch_size=7", "grpo.report_to=[tensorboard]")) == base
    # moving the whole pipeline folder keeps its keys
    assert _keys(_recipe(tmp_path / "moved")) == base


@pytest.mark.parametrize(
    "override, message",
    [
        ("grpo.learning_rat=1e-4", r"grpo\.'learning_rat'.*did you mean 'learning_rate'"),
        ("outptu_dir=x", r"'outptu_dir'"),
        ("annotate.num_alternativs=3", r"num_alternativs"),
        ("toy.task={max_stpes: 3}", r"max_stpes"),
        ("grpo.output_dir=x", r"grpo\.output_dir is set by the pipeline"),
        ("sft.strategy=critical", r"list it under sft\.arms"),
        ("sft.arms=[critical, numeric]", r"must include \['full'\]"),
        ("sft.arms=[full, critical, nonsense]", r"unknown strategy 'nonsense'"),
        ("grpo.seeds=[0, 0]", r"seed twice"),
        ("eval.models=[base, grpoo]", r"grpoo"),
        # values of the wrong type (issue 15): named with the key, the value and the expected type
        (
            "grpo.learning_rate=abc",
            r"grpo\.learning_rate = 'abc' \(str\).*GRPORunConfig\.learning_rate.*float",
        ),
        ("annotate.num_alternatives=two", r"annotate\.num_alternatives = 'two'.*takes int"),
        ("eval.temperature=1e-3", r"eval\.temperature = '1e-3'.*float.*YAML reads 1e-3 as text"),
        ("sft.arms=[full, {name: critical, strategy: critical, learning_rate: x}]", r"'critical'.*= 'x'"),
        ("grpo.max_steps=2.5", r"grpo\.max_steps = 2\.5 \(float\).*int"),
        ("toy.task={max_steps: x}", r"toy\.task\.max_steps = 'x'"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, override, message):
    with pytest.raises(RecipeError, match=message):
        _recipe(tmp_path, override)


def test_values_that_parse_as_their_type_pass(tmp_path):
    # TRL's configs read the YAML the pipeline writes as flags: "3e-4" (text in YAML) is a float there.
    recipe = _recipe(tmp_path, "grpo.learning_rate=3e-4", "sft.bf16=false", "annotate.limit=null")
    assert recipe.grpo["learning_rate"] == "3e-4" and recipe.annotate["limit"] is None


def test_a_bad_value_moves_nothing(tmp_path, capsys):
    # A finished pipeline (its manifests), then a --set value of the wrong type for a stage that would
    # rerun: the error comes before any stage runs, and no finished stage is moved to .superseded.
    from cft_rl.cli import main
    from cft_rl.pipeline.run import write_manifest

    stages = plan(_recipe(tmp_path))
    for stage in stages:
        write_manifest(tmp_path, stage, status="done", outputs={})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["pipeline", str(SMOKE), "--set", f"output_dir={tmp_path}", "grpo.learning_rate=abc"]) == 2
    assert "grpo.learning_rate = 'abc'" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert all(status(tmp_path, s) == "done" for s in stages)


def test_arms_take_settings_and_names(tmp_path):
    recipe = _recipe(tmp_path, "sft.arms=[full, critical, {name: dft, strategy: full, loss_type: dft}]")
    by_name = {s.name: s for s in plan(recipe)}
    assert by_name["sft/dft"].settings["loss_type"] == "dft"
    assert by_name["sft/dft"].settings["strategy"] == "full"
    assert "grpo/dft/seed1" in by_name


def test_cli_dry_run_prints_the_plan_and_errors_cleanly(tmp_path, capsys):
    from cft_rl.cli import main

    assert main(["pipeline", str(SMOKE), "--dry-run", "--set", f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "16 stages" in out and "grpo/critical/seed1" in out and "run" in out
    assert not (tmp_path / "toy").exists()  # a dry run writes nothing
    assert main(["pipeline", str(SMOKE), "--dry-run", "--set", "grpo.temprature=0.5"]) == 2
    assert "temprature" in capsys.readouterr().err


def test_resume_point_is_the_last_complete_checkpoint(tmp_path):
    from cft_rl.pipeline.run import _last_checkpoint

    assert _last_checkpoint(tmp_path / "missing") == []
    for step, complete in ((2, True), (10, True), (11, False)):  # 11: killed while being written
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert _last_checkpoint(tmp_path) == ["--resume_from_checkpoint", str(tmp_path / "checkpoint-10")]


# --- end to end ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The smoke recipe run once to the end (about a minute and a half on 2 cores)."""
    root = tmp_path_factory.mktemp("pipeline")
    recipe = _recipe(root)
    results = run_pipeline(recipe, echo=lambda *_: None)
    return root, recipe, results


def test_pipeline_runs_end_to_end(finished):
    root, recipe, results = finished
    assert all(r.status == "new" for r in results)
    for stage in plan(recipe):
        manifest = read_manifest(root, stage)
        assert manifest["status"] == "done" and manifest["key"] == stage.key, stage.name
    report = (root / "compare" / "report.md").read_text()
    assert "## Accuracy (greedy, %)" in report and "grpo/critical" in report and "(n=2)" in report
    assert "| entropy | critical | 2 |" in report  # curves pooled over both seeds
    assert (root / "compare" / "report.html").stat().st_size > 10_000
    state = json.loads((root / "grpo/critical/seed1/trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "reward" in e] == [1, 2]
    assert json.loads((root / "eval/base/summary.json").read_text())["benchmarks"]


def _span(manifest: dict) -> tuple[datetime, datetime]:
    end = datetime.fromisoformat(manifest["finished"])
    return end - timedelta(seconds=manifest["seconds"]), end


def test_lanes_run_the_same_pipeline(finished, tmp_path):
    # Two lanes, each stage in its own process (one GRPO seed and the base eval, to keep it short):
    # the same stages and keys as the sequential run, the same annotation though written by two
    # shard workers, each stage's output in its log, and the two SFT arms side by side.
    root, recipe, _ = finished
    work = tmp_path / "lanes"
    lanes = _recipe(work, "lanes=2", "grpo.seeds=[0]", "eval.models=[base]")
    lines = []
    results = run_pipeline(lanes, echo=lines.append)
    assert all(r.status == "new" for r in results)
    sequential = {s.name: s.key for s in plan(recipe)}
    for stage in plan(lanes):
        manifest = read_manifest(work, stage)
        assert manifest["status"] == "done" and manifest["key"] == stage.key, stage.name
        assert stage.name == "compare" or sequential[stage.name] == stage.key, stage.name
        assert (work / stage.name / "stage.log").stat().st_size > 0, stage.name
    annotate = read_manifest(work, plan(lanes)[1])
    assert annotate["threads"]["processes"] == 2 and annotate["threads"]["lanes"] == 2
    assert sorted(p.name for p in (work / "annotate" / "shards").glob("*.jsonl")) == [
        "shard-00000-of-00002.jsonl",
        "shard-00001-of-00002.jsonl",
    ]
    import datasets

    ours, theirs = (datasets.load_from_disk(str(r / "annotate" / "dataset")) for r in (work, root))
    assert ours.to_list() == theirs.to_list()
    (a_start, a_end), (b_start, b_end) = (_span(read_manifest(work, s)) for s in plan(lanes)[2:4])
    assert a_start < b_end and b_start < a_end, "the two SFT arms did not run side by side"
    assert any(line.startswith("==> sft/critical started (1 lane") for line in lines)
    assert any(line.startswith("\npipeline finished in") for line in lines)


def test_rerun_skips_finished_stages(finished, monkeypatch):
    # A rerun of a finished pipeline runs no job at all and leaves every manifest as it was.
    import cft_rl.pipeline.run as pipeline

    root, recipe, _ = finished
    before = {s.name: read_manifest(root, s) for s in plan(recipe)}

    def must_not_run(stage, root):
        raise AssertionError(f"{stage.name} ran again")

    monkeypatch.setattr(pipeline, "RUNNERS", dict.fromkeys(pipeline.RUNNERS, must_not_run))
    results = run_pipeline(recipe, echo=lambda *_: None)
    assert {r.status for r in results} == {"done"}
    assert {r.name: r.outputs for r in results} == {n: m["outputs"] for n, m in before.items()}
    assert {s.name: read_manifest(root, s) for s in plan(recipe)} == before


def test_killed_pipeline_resumes_from_the_checkpoint(finished, tmp_path):
    # Works on a copy, before the next test changes the finished pipeline.
    root, _, _ = finished
    work = tmp_path / "copy"
    shutil.copytree(root, work)
    override = [f"output_dir={work}", "grpo.max_steps=8", "grpo.probe_steps=0"]
    cmd = [sys.executable, "-m", "cft_rl.cli", "pipeline", str(SMOKE), "--set", *override]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    run = work / "grpo" / "full" / "seed0"
    deadline = time.time() + 240
    try:
        while not (run / "checkpoint-3").is_dir():  # the finished copy has checkpoint-1 and -2
            assert proc.poll() is None, "the pipeline ended before it could be killed"
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    recipe = Recipe.load(SMOKE, override)
    stage = next(s for s in plan(recipe) if s.name == "grpo/full/seed0")
    assert status(work, stage) == "resume"
    results = {r.name: r for r in run_pipeline(recipe, echo=lambda *_: None)}
    assert results["toy"].status == "done" and results["sft/full"].status == "done"
    assert results["grpo/full/seed0"].status == "resume"
    assert results["grpo/full/seed0"].outputs["resumed_from"].startswith(str(run / "checkpoint-"))
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    steps = [e["step"] for e in history if "reward" in e]
    assert steps == list(range(1, 9))  # no gap, no duplicate


def test_a_changed_arm_reruns_only_downstream(finished):
    root, recipe, _ = finished
    before = {s.name: read_manifest(root, s)["finished"] for s in plan(recipe)}
    # The changed arm also goes through the launcher path: `python -m cft_rl.cli sft ...` in a subprocess.
    arms = f"[full, {{name: critical, strategy: critical, learning_rate: 2.0e-3, launch: {sys.executable}}}]"
    changed = Recipe.load(SMOKE, [f"output_dir={root}", f"sft.arms={arms}"])
    results = {r.name: r.status for r in run_pipeline(changed, echo=lambda *_: None)}
    rerun = {n for n, s in results.items() if s != "done"}
    assert rerun == {
        "sft/critical",
        "grpo/critical/seed0",
        "grpo/critical/seed1",
        "eval/sft/critical",
        "eval/grpo/critical/seed0",
        "eval/grpo/critical/seed1",
        "compare",
    }
    after = {s.name: read_manifest(root, s)["finished"] for s in plan(changed)}
    assert all(after[n] == before[n] for n in results if n not in rerun)
    assert read_manifest(root, plan(changed)[3])["settings"]["learning_rate"] == 2.0e-3
    kept = sorted(p.name for p in (root / ".superseded").iterdir())
    assert any(name.startswith("sft__critical.") for name in kept)  # the old folder is kept, not deleted


@pytest.mark.parametrize(
    "override, message",
    [
        ("sft.launch=5", r"sft\.launch = 5 \(int\) does not fit SFTSection\.launch, which takes str \| None"),
        ("eval.models=base", r"eval\.models = 'base' \(str\) does not fit EvalSection\.models"),
        ("grpo.seeds=[0, x]", r"grpo\.seeds = \[0, 'x'\].*GRPOSection\.seeds"),
    ],
)
def test_the_pipelines_own_keys_are_dataclass_fields_checked_by_type(tmp_path, override, message):
    with pytest.raises(RecipeError, match=message):
        _recipe(tmp_path, override)


# --- sft.seed_per_grpo_seed: one SFT warm start per GRPO seed ----------------------------------------

PER_SEED = "sft.seed_per_grpo_seed=true"
REPLICA = "sft.arms=[full, critical, {name: full_replica, strategy: full, seed: 43}]"


def _stages(recipe: Recipe) -> dict:
    return {s.name: s for s in plan(recipe)}


def _sft_default_seed() -> int:
    import dataclasses

    from cft_rl.sft.trainer import SelectiveSFTConfig

    return next(f.default for f in dataclasses.fields(SelectiveSFTConfig) if f.name == "seed")


def test_one_sft_run_per_arm_and_grpo_seed(tmp_path):
    stages = plan(_recipe(tmp_path, PER_SEED, REPLICA))
    names = [s.name for s in stages]
    # Each seed's SFT runs just before its GRPO runs: a pipeline stopped early has whole replicates.
    assert names[2:8] == ["sft/full/seed0", "sft/critical/seed0", "sft/full_replica/seed0"] + [
        f"grpo/{arm}/seed0" for arm in ("full", "critical", "full_replica")
    ]
    assert names[8:11] == ["sft/full/seed1", "sft/critical/seed1", "sft/full_replica/seed1"]
    assert not {"sft/full", "sft/critical", "eval/sft/full"} & set(names)
    by_name = {s.name: s for s in stages}
    default = _sft_default_seed()  # the smoke recipe sets no sft.seed
    for seed in (0, 1):
        for arm, arm_seed in (("full", default), ("critical", default), ("full_replica", 43)):
            sft = by_name[f"sft/{arm}/seed{seed}"]
            assert sft.settings["seed"] == arm_seed + 1000 * seed
            assert sft.settings["output_dir"] == str(tmp_path / "sft" / arm / f"seed{seed}")
            grpo = by_name[f"grpo/{arm}/seed{seed}"]
            assert grpo.settings["model_name_or_path"] == sft.settings["output_dir"]
            assert grpo.settings["seed"] == seed and grpo.inputs == [sft.name, "toy"]
            evaluated = by_name[f"eval/sft/{arm}/seed{seed}"]
            assert evaluated.settings["model"] == sft.settings["output_dir"] and evaluated.inputs == [
                sft.name
            ]
    assert by_name["compare"].settings["labels"] == ["full", "critical", "full_replica"] * 2
    assert "eval/sft/full/seed1" in by_name["compare"].settings["evals"]


def _differing(a: dict, b: dict) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_per_seed_sft_runs_differ_from_the_arm_only_in_seed_and_folder(tmp_path):
    one = _stages(_recipe(tmp_path, "sft.seed=7"))
    per_seed = _stages(_recipe(tmp_path, "sft.seed=7", PER_SEED))
    for arm in ("full", "critical"):
        for seed in (0, 1):
            a, b = one[f"sft/{arm}"], per_seed[f"sft/{arm}/seed{seed}"]
            assert _differing(a.settings, b.settings) == {"output_dir"} | ({"seed"} if seed else set())
            assert b.settings["seed"] == 7 + 1000 * seed and b.launch == a.launch  # the shared seed
    # The GRPO runs too differ only in their warm start's folder.
    for name in ("grpo/full/seed1", "grpo/critical/seed0"):
        assert _differing(one[name].settings, per_seed[name].settings) == {"model_name_or_path"}


def test_the_arm_seed_default_is_read_from_the_sft_config(tmp_path, monkeypatch):
    import dataclasses

    from cft_rl.sft.trainer import SelectiveSFTConfig

    seed_field = next(f for f in dataclasses.fields(SelectiveSFTConfig) if f.name == "seed")
    monkeypatch.setattr(seed_field, "default", 5)
    assert _stages(_recipe(tmp_path, PER_SEED))["sft/full/seed1"].settings["seed"] == 1005


def test_the_option_off_plans_exactly_what_a_recipe_without_it_plans(tmp_path):
    def summary(recipe):
        return [(s.name, s.key, s.settings, s.inputs, s.launch) for s in plan(recipe)]

    without = summary(_recipe(tmp_path, REPLICA))
    assert summary(_recipe(tmp_path, REPLICA, "sft.seed_per_grpo_seed=false")) == without
    assert "sft/full" in [name for name, *_ in without]


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "sft.seed_per_grpo_seed='true'",  # text, which the pipeline would read as true even if 'false'
            r"sft\.seed_per_grpo_seed = 'true' \(str\) does not fit SFTSection\.seed_per_grpo_seed, which takes bool",
        ),
        ("sft.seed_per_grpo_seed=1", r"sft\.seed_per_grpo_seed = 1 \(int\) does not fit.*takes bool"),
        (
            "sft.arms=[full, {name: critical, seed_per_grpo_seed: true}]",
            r"applies to every arm: set it in sft",
        ),
    ],
)
def test_seed_per_grpo_seed_takes_a_bool_of_the_whole_section(tmp_path, override, message):
    with pytest.raises(RecipeError, match=message):
        _recipe(tmp_path, override)


def _old_stage(root, name, key="oldkey"):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"stage": name, "key": key, "status": "done"}))
    (folder / "model.safetensors").write_text("old weights")
    return folder


def test_a_stage_folder_of_an_older_plan_is_moved_aside_not_written_into(tmp_path):
    """sft/full from before sft.seed_per_grpo_seed: the new sft/full/seed0 must not land inside it."""
    from cft_rl.pipeline.run import stale_parents

    recipe = _recipe(tmp_path, "sft.seed_per_grpo_seed=true")
    stages = plan(recipe)
    assert "sft/full/seed0" in {s.name for s in stages} and "sft/full" not in {s.name for s in stages}
    old = _old_stage(tmp_path, "sft/full")
    (tmp_path / "sft" / "notes").mkdir()  # no manifest: not a stage, left alone
    assert stale_parents(tmp_path, stages) == [("sft/full", old, "oldkey")]

    run_pipeline(recipe, dry_run=True, echo=lambda *_: None)
    assert (old / "model.safetensors").is_file()  # a dry run moves nothing

    # A real run moves it before the first stage runs (stopped there: only the move is under test).
    with pytest.raises(RuntimeError, match="stop"):
        run_pipeline(recipe, echo=lambda line: _stop_at_first_stage(line))
    assert not old.exists()
    moved = list((tmp_path / ".superseded").glob("sft__full.oldkey*"))
    assert len(moved) == 1 and (moved[0] / "model.safetensors").read_text() == "old weights"


def _stop_at_first_stage(line: str) -> None:
    if line.lstrip().startswith("==>"):
        raise RuntimeError("stop")


def test_a_planned_stage_is_never_taken_for_a_stale_parent(tmp_path):
    from cft_rl.pipeline.run import stale_parents

    stages = plan(_recipe(tmp_path))  # sft/full is itself planned here
    _old_stage(tmp_path, "sft/full")
    _old_stage(tmp_path, "grpo/full/seed0")
    assert stale_parents(tmp_path, stages) == []
