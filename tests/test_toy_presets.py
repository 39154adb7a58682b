"""The embedded default toy build: its settings key, its size, and that building the default copies it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from cft_rl.toy.build import EMBEDDED, MANIFEST, ToyBuildConfig, build_toy, embedded_build, load_toy, preset

DEFAULT = EMBEDDED / "default"


def test_the_embedded_model_was_built_with_the_default_preset():
    # A change to the defaults, the task generator or BUILD_VERSION changes the key: the shipped model
    # is then stale and must be rebuilt (see cft_rl/toy/build.py, 'Presets', for the command).
    manifest = json.loads((DEFAULT / MANIFEST).read_text())
    assert manifest["key"] == preset("default").key() == ToyBuildConfig().key()
    assert manifest["config"] == json.loads(json.dumps(dataclasses.asdict(ToyBuildConfig())))
    assert embedded_build(ToyBuildConfig()) == DEFAULT


def test_the_embedded_build_is_small_and_complete():
    size = sum(f.stat().st_size for f in DEFAULT.rglob("*") if f.is_file())
    assert size <= 10 * 2**20, f"embedded build is {size / 2**20:.1f} MB; the limit is 10 MB"
    model, tokenizer, data = load_toy(DEFAULT)
    assert set(data) == {"train", "validation", "test"}
    assert (
        sum(p.numel() for p in model.parameters())
        == json.loads((DEFAULT / MANIFEST).read_text())["parameters"]
    )


def test_building_the_default_copies_the_embedded_model(tmp_path, monkeypatch):
    import cft_rl.toy.build as toy_module

    monkeypatch.setattr(toy_module, "_pretrain", lambda *a, **k: pytest.fail("the default build retrained"))
    out = build_toy(tmp_path / "world", ToyBuildConfig(), progress=False)
    shipped, copied = load_toy(DEFAULT)[0].state_dict(), load_toy(out)[0].state_dict()
    assert all(torch.equal(shipped[k], copied[k]) for k in shipped)
    assert not list(tmp_path.glob(".*.building"))


class _Retrained(Exception):
    pass


def test_other_settings_and_rebuild_do_not_use_the_embedded_model(toy_config, tmp_path, monkeypatch):
    import cft_rl.toy.build as toy_module

    def pretrain(*args, **kwargs):
        raise _Retrained

    monkeypatch.setattr(toy_module, "_pretrain", pretrain)
    with pytest.raises(_Retrained):
        build_toy(tmp_path / "world", ToyBuildConfig(), progress=False, rebuild=True)
    assert embedded_build(toy_config) is None
    assert embedded_build(ToyBuildConfig(seed=1)) is None
    with pytest.raises(ValueError, match="unknown toy preset 'big'; presets: default, tiny"):
        preset("big")
