"""Standalone sft/grpo rerun into an output_dir that holds a run: resume an interrupted one from its last
checkpoint and say so, report and skip a finished one, start again only with --overwrite_output_dir."""

import json
import os
from pathlib import Path

import pytest

from cft_rl.cli import main as cli_main
from cft_rl.resume import plan_run

ROOT = Path(__file__).resolve().parents[1]
MARK = {"resume_test_mark": 1, "step": 1}
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def _checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return path


def test_the_checkpoint_resumed_is_the_one_the_pipeline_picks(tmp_path):
    from cft_rl.pipeline.run import _last_checkpoint

    assert plan_run(tmp_path).resume is None and plan_run(tmp_path / "nowhere").message is None
    _checkpoint(tmp_path, 1)
    last = _checkpoint(tmp_path, 12)
    _checkpoint(tmp_path, 13, complete=False)  # cut by a kill while being written
    plan = plan_run(tmp_path)
    assert not plan.skip and plan.resume == str(last) and "resuming" in plan.message
    assert _last_checkpoint(tmp_path) == ["--resume_from_checkpoint", plan.resume]
    # The pipeline names the checkpoint itself: that one is used.
    assert plan_run(tmp_path, str(tmp_path / "checkpoint-1")).resume == str(tmp_path / "checkpoint-1")
    assert plan_run(tmp_path, overwrite=True).resume is None


def test_a_finished_run_is_skipped_even_when_the_pipeline_names_a_checkpoint(tmp_path):
    _checkpoint(tmp_path, 2)
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    for resume in (None, str(tmp_path / "checkpoint-2")):
        plan = plan_run(tmp_path, resume)
        assert (
            plan.skip and "finished run (step 2" in plan.message and "--overwrite_output_dir" in plan.message
        )
    assert not plan_run(tmp_path, overwrite=True).skip


# --- the commands, end to end --------------------------------------------------------------------------


def _sft(toy_dir, out, *extra):
    argv = ["sft", "--config", str(ROOT / "recipes/toy/sft/full.yaml"), "--model_name_or_path", str(toy_dir)]
    argv += ["--dataset_name", str(toy_dir / "data"), "--output_dir", str(out), "--max_steps", "2"]
    argv += ["--per_device_train_batch_size", "2", "--save_strategy", "steps", "--save_steps", "1"]
    return cli_main([*argv, "--use_cpu", "true", *extra])


def _grpo(toy_dir, out, *extra):
    argv = ["grpo", "--config", str(ROOT / "recipes/toy/grpo/toy.yaml"), "--model_name_or_path", str(toy_dir)]
    argv += ["--dataset_name", str(toy_dir / "data"), "--output_dir", str(out), "--max_steps", "2"]
    argv += ["--probe_steps", "0", "--num_generations", "2", "--per_device_train_batch_size", "2"]
    argv += ["--max_completion_length", "8", "--save_strategy", "steps", "--save_steps", "1"]
    return cli_main([*argv, *extra])


def _interrupt(out: Path) -> None:
    """Leave ``out`` as a kill after checkpoint-1 would: no checkpoint-2, no final state. checkpoint-1's
    log gets a mark, so a run that resumed from it carries the mark into its final log."""
    import shutil

    shutil.rmtree(out / "checkpoint-2")
    (out / "trainer_state.json").unlink()
    state_path = out / "checkpoint-1" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["log_history"].insert(0, MARK)
    state_path.write_text(json.dumps(state))


def _final_log(out: Path) -> list[dict]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


@pytest.mark.parametrize("command", ["sft", "grpo"])
def test_a_rerun_resumes_an_interrupted_run_and_skips_a_finished_one(
    command, toy_dir, tmp_path, capsys, monkeypatch
):
    import cft_rl.grpo.run
    import cft_rl.sft.run

    run = {"sft": _sft, "grpo": _grpo}[command]
    out = tmp_path / "out"
    assert run(toy_dir, out) == 0
    assert (out / "checkpoint-2").is_dir() and MARK not in _final_log(out)
    _interrupt(out)
    capsys.readouterr()
    assert run(toy_dir, out) == 0
    assert MARK in _final_log(out)  # resumed from checkpoint-1, not restarted at step 0
    assert "resuming from its last checkpoint, checkpoint-1 (step 1)" in capsys.readouterr().out
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2

    module, name = (cft_rl.sft.run, "train_sft") if command == "sft" else (cft_rl.grpo.run, "train_grpo")
    with monkeypatch.context() as patched:
        patched.setattr(module, name, lambda *a, **k: pytest.fail("a finished run was trained again"))
        assert run(toy_dir, out) == 0
    assert f"{out} holds a finished run (step 2" in capsys.readouterr().out

    assert run(toy_dir, out, "--overwrite_output_dir", "true") == 0
    assert "training from step 0" in capsys.readouterr().out
    assert MARK not in _final_log(out)
    assert MARK not in json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())["log_history"]
