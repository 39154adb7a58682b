"""One loader for every job (cft_rl.models): Hub ids with dots, offline misses that fail at once, paths
that are never Hub look-ups, LoRA warm starts in both adapter modes, and the recipe's loading settings."""

import json
import os
import shutil
from pathlib import Path

import datasets
import pytest
import torch

from cft_rl.cli import main as cli_main
from cft_rl.models import ModelNotFoundError, load_tokenizer, resolve_model

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "toy-org/Toy-Math-0.5B"  # dotted, like Qwen/Qwen2.5-Math-1.5B: ".5B" is no file extension
HUB_PLAIN = "toy-org/toy-math"
MISSING = "toy-org/Missing-1.5B"
BOTH_READINGS = ("no such folder", "not in the local cache, and the Hub is offline")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.fixture(scope="module")
def hub_cache(toy_dir, tmp_path_factory):
    """An HF cache holding the toy model under HUB_ID, in the cache layout (snapshots/<sha>, refs/main)."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / ("models--" + HUB_ID.replace("/", "--"))
    sha = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for path in toy_dir.iterdir():
        if path.is_file():
            shutil.copy(path, snapshot / path.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    plain = cache / ("models--" + HUB_PLAIN.replace("/", "--"))  # the same files under an id without a dot
    shutil.copytree(repo, plain, symlinks=True)
    return cache


@pytest.fixture
def offline(monkeypatch, hub_cache):
    """HF_HUB_CACHE=hub_cache, HF_HUB_OFFLINE=1, as the environment variables would set them."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_cache


@pytest.fixture
def no_hub_lookup(monkeypatch):
    """Any model look-up past our resolution (where the Hub's retries live) fails the test."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def refuse(*args, **kwargs):
        raise AssertionError(f"looked up {args[:1]} past the resolution")

    for cls in (AutoTokenizer, AutoModelForCausalLM):
        monkeypatch.setattr(cls, "from_pretrained", refuse)
    monkeypatch.setattr("huggingface_hub.file_exists", refuse)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", refuse)


def _sft_argv(model, data, out, *extra):
    argv = ["sft", "--config", str(ROOT / "recipes/toy/sft/full.yaml"), "--model_name_or_path", model]
    argv += ["--dataset_name", str(data), "--output_dir", str(out), "--max_steps", "1"]
    return [*argv, "--per_device_train_batch_size", "2", "--use_cpu", "true", *extra]


def _grpo_argv(model, data, out, *extra):
    argv = ["grpo", "--config", str(ROOT / "recipes/toy/grpo/toy.yaml"), "--model_name_or_path", model]
    argv += ["--dataset_name", str(data), "--output_dir", str(out), "--max_steps", "1", "--probe_steps", "0"]
    argv += ["--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "8"]
    return [*argv, *extra]


# --- Hub ids -------------------------------------------------------------------------------------------


def test_a_dotted_hub_id_resolves_to_its_cached_snapshot(offline):
    source = resolve_model(HUB_ID)
    assert source.name == HUB_ID and source.folder.parent.name == "snapshots"
    assert load_tokenizer(HUB_ID).pad_token is not None


def test_eval_loads_a_dotted_hub_id_from_the_cache(offline, toy_dir, tmp_path):
    argv = ["eval", HUB_ID, str(toy_dir), "--limit", "1", "--max-new-tokens", "4", "--out", str(tmp_path)]
    assert cli_main([*argv, "--no-progress"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["model"] == HUB_ID


def test_sft_loads_a_dotted_hub_id_from_the_cache(offline, toy_dir, tmp_path):
    assert cli_main(_sft_argv(HUB_ID, toy_dir / "data", tmp_path / "sft")) == 0
    assert (tmp_path / "sft" / "config.json").is_file()


def test_grpo_starts_from_a_dotted_hub_id(offline, toy_dir, tmp_path):
    assert cli_main(_grpo_argv(HUB_ID, toy_dir / "data", tmp_path / "grpo")) == 0
    assert (tmp_path / "grpo" / "config.json").is_file()


def test_a_grpo_warm_start_is_a_hub_id_as_well_as_a_folder(offline, toy_dir):
    from cft_rl.grpo.run import load_warm_start

    ids = torch.tensor([[5, 6, 7]])
    expected = load_warm_start(toy_dir)(input_ids=ids).logits
    assert torch.equal(load_warm_start(HUB_PLAIN)(input_ids=ids).logits, expected)


def test_annotate_loads_a_dotted_hub_id_from_the_cache(offline, toy_dir, tmp_path):
    from cft_rl.annotate.job import AnnotateConfig, run_annotation

    row = datasets.load_from_disk(str(toy_dir / "data"))["train"][0]
    data = tmp_path / "rows.jsonl"
    fields = {k: row[k] for k in ("id", "question", "answer")}
    data.write_text(json.dumps({**fields, "solution": f"\\boxed{{{row['answer']}}}"}) + "\n")
    config = AnnotateConfig(
        model=HUB_ID,
        dataset=str(data),
        out=str(tmp_path / "out"),
        engine="reference",
        num_alternatives=2,
        max_continuation_tokens=4,
        source="dataset",
    )
    assert datasets.load_from_disk(str(run_annotation(config))).num_rows == 1


# --- a missing model fails at once ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["eval", "sft", "grpo"])
def test_a_missing_model_fails_at_once_naming_both_readings(
    command, offline, no_hub_lookup, toy_dir, tmp_path, capsys
):
    argv = {
        "eval": [
            "eval",
            MISSING,
            str(toy_dir),
            "--limit",
            "1",
            "--out",
            str(tmp_path / "e"),
            "--no-progress",
        ],
        "sft": _sft_argv(MISSING, toy_dir / "data", tmp_path / "s"),
        "grpo": _grpo_argv(MISSING, toy_dir / "data", tmp_path / "g"),
    }[command]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert all(phrase in err for phrase in BOTH_READINGS), err
    assert MISSING in err and "hf download" in err


def test_a_missing_relative_path_is_never_looked_up_on_the_hub(monkeypatch, no_hub_lookup, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the Hub is reachable: still no look-up
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    for name in ("./sft/full", "../nowhere/x", "outputs/sft", "~/no/such/model"):
        with pytest.raises(ModelNotFoundError, match="no such folder") as caught:
            load_tokenizer(name)
        assert "Hub is offline" not in str(caught.value)
    # A valid Hub id that is not cached is left to from_pretrained, which downloads it.
    source = resolve_model(MISSING)
    assert source.name == MISSING and source.folder is None


# --- LoRA warm starts ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_sft_folder(toy_dir, tmp_path_factory):
    """A LoRA SFT output folder: adapter + tokenizer, its base the toy model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("lora") / "sft"
    base = AutoModelForCausalLM.from_pretrained(toy_dir)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(folder)
    load_tokenizer(toy_dir).save_pretrained(folder)
    return folder


def _spread_reward(completions, **kwargs):
    """Spread within a group, so the policy gets a gradient (chat completions: message lists)."""
    return [(len(c[-1]["content"]) % 3) / 2 for c in completions]


@pytest.mark.parametrize("adapter_mode, patterns", [("merge", None), ("merge", ["*norm*"]), ("train", None)])
def test_grpo_from_a_lora_sft_folder_trains_two_steps(
    adapter_mode, patterns, lora_sft_folder, toy_dir, grpo_config
):
    from peft import PeftModel

    from cft_rl.grpo.run import load_warm_start, train_grpo

    config = grpo_config(
        adapter_mode=adapter_mode,
        trainable_parameters=patterns,
        per_device_train_batch_size=4,
        max_completion_length=8,
        learning_rate=1e-2,
    )
    train = datasets.load_from_disk(str(toy_dir / "data"))["train"]
    trainer = train_grpo(config, str(lora_sft_folder), train, reward_funcs=[_spread_reward])
    assert trainer.state.global_step == 2
    named = dict(trainer.model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    if adapter_mode == "train":
        assert isinstance(trainer.model, PeftModel) and trainable
        assert all("lora_" in n for n in trainable)
    elif patterns is None:
        assert not isinstance(trainer.model, PeftModel) and trainable == set(named)  # the whole policy
    else:
        assert trainable == {n for n in named if "norm" in n}
    # The policy moved, and only where it trains: compared with the warm start, reloaded.
    warm = dict(load_warm_start(lora_sft_folder, adapter_mode).named_parameters())
    moved = {n for n, p in named.items() if not torch.equal(p.detach().cpu(), warm[n].detach())}
    assert moved and moved <= trainable


# --- the recipe's loading settings ---------------------------------------------------------------------


def _recipe(tmp_path, source: Path) -> Path:
    """``source`` with model_init_kwargs and trust_remote_code added, as a user would write them."""
    import yaml

    values = yaml.safe_load(source.read_text())
    values["model_init_kwargs"] = {"dtype": "bfloat16", "attn_implementation": "eager"}
    values["trust_remote_code"] = True
    path = tmp_path / source.name
    path.write_text(yaml.safe_dump(values))
    return path


# The recipe's model_init_kwargs win over the ModelConfig flags on a conflict (dtype), as in TRL's scripts.
EXPECTED_INIT = {
    "revision": "v1",
    "trust_remote_code": True,
    "attn_implementation": "eager",
    "dtype": "bfloat16",
}
FLAGS = ["--dtype", "float16", "--model_revision", "v1"]


def test_sft_keeps_the_recipes_model_init_kwargs_and_trust_remote_code(monkeypatch, toy_dir, tmp_path):
    import cft_rl.sft.run as sft

    seen = {}

    def fake_train(args, *rest, **kwargs):
        seen["init"] = args.model_init_kwargs
        raise RuntimeError("stop here")

    monkeypatch.setattr(sft, "train_sft", fake_train)
    tokenizer = lambda name, **kwargs: seen.setdefault("tokenizer", kwargs)  # noqa: E731
    monkeypatch.setattr(sft, "load_tokenizer", tokenizer, raising=False)
    argv = _sft_argv(str(toy_dir), toy_dir / "data", tmp_path / "out", *FLAGS)
    argv[2] = str(_recipe(tmp_path, ROOT / "recipes/toy/sft/full.yaml"))
    with pytest.raises(RuntimeError, match="stop here"):
        sft.main(argv[1:])
    assert seen["init"] == EXPECTED_INIT
    assert seen["tokenizer"] == {"revision": "v1", "trust_remote_code": True}


def test_grpo_keeps_the_recipes_model_init_kwargs_and_trust_remote_code(monkeypatch, toy_dir, tmp_path):
    import cft_rl.grpo.run as grpo

    seen = {}

    def fake_warm_start(path, adapter_mode, **kwargs):
        seen["init"] = kwargs
        raise RuntimeError("stop here")

    monkeypatch.setattr(grpo, "load_warm_start", fake_warm_start)
    monkeypatch.setattr(grpo, "load_tokenizer", lambda name, **kw: seen.setdefault("tokenizer", kw))
    argv = _grpo_argv(str(toy_dir), toy_dir / "data", tmp_path / "out", *FLAGS)
    argv[2] = str(_recipe(tmp_path, ROOT / "recipes/toy/grpo/toy.yaml"))
    with pytest.raises(RuntimeError, match="stop here"):
        grpo.run_cli(argv[1:])
    assert seen["init"] == EXPECTED_INIT
    assert seen["tokenizer"] == {"revision": "v1", "trust_remote_code": True}
