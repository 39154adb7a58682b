"""The toy build's learning-rate schedules, its weight average, and building several lengths in one run."""

import dataclasses
import math

import pytest
import torch
from safetensors.torch import load_file

from cft_rl.toy import build as toy_module
from cft_rl.toy import pretrain as pretrain_module
from cft_rl.toy.build import ToyBuildConfig, build_lengths, build_toy, is_built
from cft_rl.toy.config import ADDED_LATER
from cft_rl.toy.pretrain import checkpoint_path, learning_rate, make_model
from cft_rl.toy.task import ToyTaskConfig


def test_learning_rates_by_hand():
    cosine = ToyBuildConfig(learning_rate=1.0, warmup_steps=4, steps=10, lr_schedule="cosine")
    assert learning_rate(cosine, 0) == pytest.approx(0.25)  # warmup: (0 + 1) / 4
    assert learning_rate(cosine, 3) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.3)))
    assert learning_rate(cosine, 5) == pytest.approx(0.55)  # half way down to 10%
    constant = dataclasses.replace(cosine, lr_schedule="constant")
    assert [learning_rate(constant, s) for s in (0, 3, 5, 9, 10_000)] == pytest.approx([0.25, 1, 1, 1, 1])
    # Only under "constant" is the rate of a step the same whatever the planned length.
    assert learning_rate(dataclasses.replace(constant, steps=99), 5) == learning_rate(constant, 5)
    assert learning_rate(dataclasses.replace(cosine, steps=99), 5) != learning_rate(cosine, 5)


def test_bad_schedule_settings_name_the_fix():
    with pytest.raises(ValueError, match="lr_schedule 'linear'.*'cosine' or 'constant'"):
        ToyBuildConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="ema_decay 1.0"):
        ToyBuildConfig(ema_decay=1.0)


def test_settings_added_later_keep_the_older_builds_keys():
    # ADDED_LATER's values reproduce the builds made before these fields existed, so those builds' keys
    # must not move (the tiny preset's among them); any other value is a different build.
    # The first embedded v3 build (4 heads, 35% hard problems, a tenth of them in pretraining, 4,000
    # cosine steps) was made before them: its settings must still give its key.
    first_v3 = ToyBuildConfig(
        num_heads=4, num_kv_heads=2, pretrain_hard_share=0.1, task=ToyTaskConfig(hard_prob=0.35),
        steps=4000, **ADDED_LATER,
    )  # fmt: skip
    assert first_v3.key() == "dd5ac0a2fd1ff8a0"
    cosine = ToyBuildConfig(steps=4000, **ADDED_LATER)
    assert cosine.key() == "e4b337f79793713e"  # the cosine default of 2026-12-06, the tiny preset's rule
    keys = {cosine.key(), ToyBuildConfig(steps=4000, lr_schedule="cosine", ema_decay=0.5).key(),
            ToyBuildConfig(steps=4000, lr_schedule="constant", ema_decay=0.0).key()}  # fmt: skip
    assert len(keys) == 3


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_constant_run_saves_exactly_the_builds_of_each_length(tmp_path):
    config = ToyBuildConfig.tiny(steps=1, lr_schedule="constant", ema_decay=0.8)
    folders = {8: tmp_path / "s8", 12: tmp_path / "s12"}
    build_lengths(folders, config, progress=False)
    for steps, folder in folders.items():
        alone = build_toy(
            tmp_path / f"alone{steps}", dataclasses.replace(config, steps=steps), progress=False
        )
        assert is_built(folder, dataclasses.replace(config, steps=steps))
        assert _same(_weights(folder), _weights(alone)), (
            f"the {steps}-step checkpoint is not the {steps}-step build"
        )
    assert not _same(_weights(folders[8]), _weights(folders[12]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone12", "alone8", "s12", "s8"]  # no debris


def test_the_average_is_what_a_build_saves(tmp_path):
    raw = build_toy(tmp_path / "raw", ToyBuildConfig.tiny(steps=6, lr_schedule="constant"), progress=False)
    averaged = ToyBuildConfig.tiny(steps=6, lr_schedule="constant", ema_decay=0.5)
    ema = build_toy(tmp_path / "ema", averaged, progress=False)
    # By hand: the average starts at the initial weights and moves half way to the trained ones each step.
    tokenizer, _ = toy_module.prepare_world(tmp_path / "world", averaged)
    initial = make_model(averaged, tokenizer).state_dict()
    trajectory = [initial]
    for steps in range(1, 7):
        folder = build_toy(tmp_path / f"raw{steps}", dataclasses.replace(averaged, steps=steps, ema_decay=0.0),
                           progress=False)  # fmt: skip
        trajectory.append(_weights(folder))
    expected = trajectory[0]
    for w in trajectory[1:]:
        expected = {k: 0.5 * expected[k] + 0.5 * w[k] for k in w}
    got = _weights(ema)
    assert all(torch.allclose(got[k], expected[k], atol=1e-6) for k in got)
    assert _same(_weights(raw), trajectory[-1])
    assert not _same(got, trajectory[-1])


def test_build_lengths_refuses_a_schedule_tied_to_the_planned_length(tmp_path):
    with pytest.raises(ValueError, match="lr_schedule='constant'.*not a prefix"):
        build_lengths({8: tmp_path / "a"}, ToyBuildConfig.tiny(), progress=False)


def test_build_lengths_skips_lengths_already_built(tmp_path, monkeypatch):
    config = ToyBuildConfig.tiny(steps=1, lr_schedule="constant")
    build_lengths({5: tmp_path / "s5"}, config, progress=False)
    monkeypatch.setattr(toy_module, "_pretrain", lambda *a, **k: pytest.fail("a built length was retrained"))
    build_lengths({5: tmp_path / "s5"}, config, progress=False)


def test_watching_a_run_leaves_its_model_unchanged(tmp_path):
    # scripts/bench_toy_curve.py measures greedy accuracy during a build: generating in the middle of a
    # run (which puts the model in eval mode) must not change what the build saves.
    from cft_rl.generation import generate

    config = ToyBuildConfig.tiny(steps=12)
    seen = []

    def watch(model, tokenizer):
        generate(model, tokenizer, ["Ann has 3 apples."], max_new_tokens=4)
        seen.append(model.training)

    watched = build_toy(
        tmp_path / "watched", config, progress=False, rebuild=True, at_steps={4: watch, 8: watch}
    )
    plain = build_toy(tmp_path / "plain", config, progress=False, rebuild=True)
    assert seen == [False, False]  # the hooks ran, on a model in eval mode
    assert _same(_weights(watched), _weights(plain))


def test_world_problems_are_the_saved_splits(tmp_path):
    config = ToyBuildConfig.tiny(steps=2)
    folder = build_toy(tmp_path / "w", config, progress=False)
    problems = toy_module.world_problems(config)
    _, _, data = toy_module.load_toy(folder)
    assert [str(p.answer) for p in problems["train"]] == data["train"]["answer"]
    assert [p.question for p in problems["test"]] == data["test"]["question"]
    assert any(p.hard for p in problems["train"]) and not all(p.hard for p in problems["train"])


def _kill_after_checkpoint(monkeypatch, at_step: int):
    """Checkpoints every 3 steps; the run dies right after writing the one of ``at_step``."""
    monkeypatch.setattr(pretrain_module, "CHECKPOINT_EVERY", 3)
    save = pretrain_module._save_checkpoint

    def save_then_die(path, step, *args):
        save(path, step, *args)
        if step == at_step:
            raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_module, "_save_checkpoint", save_then_die)
    return save


def _steps_trained(monkeypatch) -> list[int]:
    steps, rate = [], pretrain_module.learning_rate
    monkeypatch.setattr(pretrain_module, "learning_rate", lambda c, s: steps.append(s) or rate(c, s))
    return steps


def test_a_killed_build_resumes_where_it_stopped_and_saves_the_same_weights(tmp_path, monkeypatch):
    config = ToyBuildConfig.tiny(steps=10, ema_decay=0.5)  # cosine: each step's rate depends on the plan
    straight = build_toy(tmp_path / "straight", config, progress=False)
    save = _kill_after_checkpoint(monkeypatch, at_step=6)
    with pytest.raises(KeyboardInterrupt):
        build_toy(tmp_path / "b", config, progress=False)
    checkpoint = checkpoint_path(tmp_path / "b", config)
    assert torch.load(checkpoint, weights_only=True)["step"] == 6
    monkeypatch.setattr(pretrain_module, "_save_checkpoint", save)
    steps = _steps_trained(monkeypatch)
    build_toy(tmp_path / "b", config, progress=False)
    assert steps == [6, 7, 8, 9], "the rerun did not pick up from the checkpoint"
    assert _same(_weights(tmp_path / "b"), _weights(straight))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "straight"]  # checkpoint and debris gone


def test_a_killed_sweep_resumes_and_keeps_the_lengths_it_saved(tmp_path, monkeypatch):
    config = ToyBuildConfig.tiny(steps=1, lr_schedule="constant", ema_decay=0.5)
    folders = {4: tmp_path / "s4", 8: tmp_path / "s8"}
    save = _kill_after_checkpoint(monkeypatch, at_step=6)
    with pytest.raises(KeyboardInterrupt):
        build_lengths(folders, config, progress=False)
    assert is_built(folders[4], dataclasses.replace(config, steps=4)) and not folders[8].exists()
    monkeypatch.setattr(pretrain_module, "_save_checkpoint", save)
    steps = _steps_trained(monkeypatch)
    build_lengths(folders, config, progress=False)
    assert steps == [6, 7]
    alone = build_toy(tmp_path / "alone", dataclasses.replace(config, steps=8), progress=False)
    assert _same(_weights(folders[8]), _weights(alone))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone", "s4", "s8"]


def test_a_checkpoint_of_other_settings_is_refused(tmp_path):
    config = ToyBuildConfig.tiny(steps=10)
    other = dataclasses.replace(config, steps=12)
    tokenizer, _ = toy_module.prepare_world(tmp_path / "world", config)
    model = make_model(other, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters())
    pretrain_module._save_checkpoint(
        checkpoint_path(tmp_path / "b", config), 3, model, optimizer, None, other
    )
    with pytest.raises(ValueError, match=f"checkpoint of build {other.key()}.*delete it"):
        build_toy(tmp_path / "b", config, progress=False)
