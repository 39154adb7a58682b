"""GRPO wiring: failure-tolerant rewards, config errors, monitors in the log, two processes, resume."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from cft_rl.grpo.metrics import group_metrics
from cft_rl.grpo.run import load_warm_start, make_probe
from cft_rl.grpo.trainer import model_token_counts
from cft_rl.verify.rewards import build_reward_funcs, tolerant_reward

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


# --- failure-tolerant rewards ----------------------------------------------------------------------


def _flaky(completions, answer, log_extra=None, **kwargs):
    """Raises on a completion saying "boom", NaN on "nan"; logs a column like math_reward does."""
    if any("boom" in c for c in completions):
        raise RuntimeError("boom")
    if log_extra is not None:
        log_extra("seen", [c.upper() for c in completions])
    return [math.nan if c == "nan" else float(c == a) for c, a in zip(completions, answer, strict=True)]


def test_tolerant_reward_scores_only_the_failing_completions_as_none():
    metrics, columns = {}, {}
    reward = tolerant_reward(_flaky)
    out = reward(
        prompts=["p"] * 4,
        completions=["1", "boom", "nan", "2"],
        answer=["1", "1", "1", "1"],
        log_extra=lambda c, v: columns.setdefault(c, []).extend(v),
        log_metric=lambda n, v: metrics.setdefault(n, v),
    )
    assert out == [1.0, None, None, 0.0]
    assert reward.__name__ == "_flaky"
    assert metrics == {"rewards/_flaky/frac_failed": 0.5}
    # The extra column keeps one entry per completion: the raising row is None, not dropped.
    assert columns == {"seen": ["1", None, "NAN", "2"]}


def test_tolerant_reward_logs_zero_failures_and_rejects_a_wrong_length():
    metrics = {}
    reward = tolerant_reward(_flaky, "acc")
    assert reward(completions=["1"], answer=["1"], log_metric=lambda n, v: metrics.update({n: v})) == [1.0]
    assert metrics == {"rewards/acc/frac_failed": 0.0}
    with pytest.raises(ValueError, match="returned 1 rewards for 2 completions"):
        tolerant_reward(lambda completions, **kw: [1.0])(completions=["a", "b"])


def test_lengths_count_model_tokens_as_trl_does():
    """Tool/env tokens (mask 0) do not count; the mask is padded with 1 past each row's length. A row that
    ``mask_truncated_completions`` zeroed counts all its tokens, and only then."""
    tool_mask = torch.tensor([[1, 0, 0, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    assert model_token_counts([3, 2, 3], None) == [3, 2, 3]
    assert model_token_counts([5, 2, 3], tool_mask) == [3, 2, 0]
    assert model_token_counts([5, 2, 3], tool_mask, truncated_masked=True) == [3, 2, 3]


def test_reward_funcs_by_name_and_dotted_path():
    funcs = build_reward_funcs(["math_reward", "cft_rl.verify.verifier.format_reward"])
    assert [f.__name__ for f in funcs] == ["math_reward", "format_reward"]
    assert funcs[1](completions=["so \\boxed{3}", "no"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="reward_funcs"):
        build_reward_funcs(["no_such_reward"])


# --- bad configuration: the error names the field ----------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"monitor_ks": [1, 8]}, "monitor_ks"),  # k > G = 4
        ({"probe_num_samples": 4, "probe_ks": [1, 8]}, "probe_ks"),
        ({"probe_num_samples": 4, "probe_ks": [1], "probe_maj_ks": [5]}, "probe_maj_ks"),
        ({"adapter_mode": "frozen"}, "adapter_mode"),
        ({"probe_steps": 3, "logging_steps": 2}, "probe_steps"),
        ({"monitor_distinct_max_n": 0}, "monitor_distinct_max_n"),
        ({"reward_funcs": []}, "reward_funcs"),
    ],
)
def test_bad_config_names_the_field(tmp_path, overrides, field, grpo_config):
    with pytest.raises(ValueError, match=field):
        grpo_config(**overrides)


def test_probe_larger_than_its_data_names_probe_size(tmp_path, toy_dir, grpo_config):
    import datasets

    data = datasets.load_from_disk(str(toy_dir / "data"))["validation"]
    config = grpo_config(probe_steps=1, probe_size=len(data) + 1)
    with pytest.raises(ValueError, match="probe_size"):
        make_probe(config, data)
    with pytest.raises(ValueError, match="probe dataset"):
        make_probe(config, None)


def test_warm_start_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a warm-start checkpoint"):
        load_warm_start(tmp_path)


def test_lora_warm_start_is_merged_or_kept_trainable(tmp_path, toy_dir, grpo_config):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from cft_rl.grpo.run import build_trainer

    base = AutoModelForCausalLM.from_pretrained(toy_dir)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")  # an adapter folder without a tokenizer, like a bare peft save
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        expected = lora(input_ids=ids).logits
        merged = load_warm_start(tmp_path / "adapter", "merge")
        assert not isinstance(merged, PeftModel)
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)
    config = grpo_config(adapter_mode="train", max_steps=1, reward_funcs=["format_reward"])
    import datasets

    train = datasets.load_from_disk(str(toy_dir / "data"))["train"]
    trainer = build_trainer(config, str(tmp_path / "adapter"), train)
    assert isinstance(trainer.model, PeftModel)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    frozen = {n: p.clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    trainer.train()
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if n in frozen)


def test_trainable_parameters_train_only_what_they_match(tmp_path, toy_dir, grpo_config):
    import datasets

    from cft_rl.grpo.run import build_trainer

    config = grpo_config(trainable_parameters=["*norm*"], max_steps=1, reward_funcs=["format_reward"])
    train = datasets.load_from_disk(str(toy_dir / "data"))["train"]
    trainer = build_trainer(config, str(toy_dir), train)
    named = dict(trainer.model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and trainable == {n for n in named if "norm" in n}
    trainer.create_optimizer()
    in_optimizer = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    assert in_optimizer == sum(named[n].numel() for n in trainable)
    frozen = {n: p.clone() for n, p in named.items() if n not in trainable}
    trainer.train()
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if n in frozen)
    with pytest.raises(ValueError, match=r"match no parameter; names look like"):
        build_trainer(grpo_config(trainable_parameters=["nothing.*"]), str(toy_dir), train)


# --- end to end: monitors land in trainer_state.json --------------------------------------------------


def _length_reward(completions, **kwargs):
    """Non-binary and spread within a group, so group statistics have something to measure."""
    return [(len(c[-1]["content"]) % 3) / 2 for c in completions]  # chat completions: message lists


def test_monitors_and_probe_land_in_the_log_history(tmp_path, toy_dir, grpo_config):
    from cft_rl.grpo.run import train_grpo
    from cft_rl.toy.build import load_toy

    model, tokenizer, data = load_toy(toy_dir)
    config = grpo_config(
        log_completions=True,
        num_completions_to_print=0,
        probe_steps=2,
        probe_size=4,
        probe_num_samples=4,
        probe_ks=[1, 4],
        probe_maj_ks=[2],
    )
    funcs = [tolerant_reward(_length_reward)]
    trainer = train_grpo(
        config,
        model,
        data["train"],
        probe_dataset=data["validation"],
        tokenizer=tokenizer,
        reward_funcs=funcs,
    )
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history] == [0, 1, 2, 2]  # probe at 0, two steps, the train summary
    assert set(history[0]) >= {
        "probe/pass@1",
        "probe/pass@4",
        "probe/maj@2",
        "probe/entropy",
        "probe/seconds",
    }
    for entry in history[1:3]:
        for name in ("explore/pass@1", "explore/pass@4", "explore/frac_zero_std", "explore/self_bleu"):
            assert name in entry
        for name in ("entropy/p10", "entropy/p90", "entropy/numeric", "entropy/word", "entropy/forking_frac"):
            assert name in entry
        assert entry["entropy/p10"] <= entry["entropy/p50"] <= entry["entropy/p90"]
        assert "completions/group_length_std" in entry and "rewards/_length_reward/frac_failed" in entry
    assert "probe/pass@1" in history[2] and "probe/pass@1" not in history[1]
    # The logged group metrics are those of the completions table TRL wrote for that step.
    table = pd.read_parquet(tmp_path / "run" / "completions" / "completions_00002.parquet")
    rewards = table["_length_reward"].tolist()
    texts = [c[-1]["content"] for c in table["completion"]]
    expected = group_metrics(rewards, texts, 4, trainer.monitor)
    for name in ("explore/frac_zero_std", "explore/distinct_2", "explore/self_bleu", "explore/pass@2"):
        assert history[2][name] == pytest.approx(expected[name])
    assert trainer.monitor.resolve_ks(4) == (1, 2, 4)


def test_at_learning_rate_zero_every_probe_equals_the_step_0_probe(tmp_path, toy_dir, grpo_config):
    """The lr-0 control of `cft-rl compare`'s "RL learning": a policy that never changes draws the same
    probe samples at every probe step (each probe batch has its own seed, not one per step), so a
    run's rise over its own step-0 probe is its rise over an lr-0 run from the same warm start."""
    from cft_rl.grpo.run import train_grpo
    from cft_rl.toy.build import load_toy

    model, tokenizer, data = load_toy(toy_dir)
    probe = dict(probe_steps=1, probe_size=3, probe_num_samples=4, probe_ks=[1, 4], probe_maj_ks=[2])
    config = grpo_config(learning_rate=0.0, **probe)
    funcs = [tolerant_reward(_length_reward)]
    kw = dict(probe_dataset=data["validation"], tokenizer=tokenizer, reward_funcs=funcs)
    train_grpo(config, model, data["train"], **kw)
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    probes = [e for e in history if "probe/pass@1" in e]
    assert [e["step"] for e in probes] == [0, 1, 2]
    first = {k: v for k, v in probes[0].items() if k.startswith("probe/") and k != "probe/seconds"}
    assert {"probe/pass@4", "probe/entropy", "probe/distinct_answers"} <= set(first)
    for entry in probes[1:]:
        assert {k: entry[k] for k in first} == first, entry["step"]


# --- several processes: the same samples give the same metrics ------------------------------------------


def test_two_processes_log_what_one_process_logs(toy_dir, tmp_path, two_cpu_processes):
    job = str(ROOT / "tests" / "grpo_ddp_job.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    run = subprocess.run(
        [sys.executable, job, str(toy_dir), str(one), "12"], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    run = subprocess.run(
        [*two_cpu_processes, job, str(toy_dir), str(two), "6"], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world_size"], b["world_size"]) == (1, 2)
    steps_a, steps_b = a["log_history"][:2], b["log_history"][:2]
    for entry_a, entry_b in zip(steps_a, steps_b, strict=True):
        assert set(entry_a) == set(entry_b)
        monitors = [k for k in entry_a if k.startswith(("explore/", "completions/", "entropy/"))]
        assert len(monitors) > 25
        for key in monitors:
            # Group metrics: the same numbers; entropies: the same up to float summation order.
            assert entry_b[key] == pytest.approx(entry_a[key], rel=1e-5, abs=1e-7), key
        assert entry_a["entropy/p10"] < entry_a["entropy/p90"]  # a spread, so a lost half would show
        assert 0 < entry_a["explore/frac_no_answer"] < 1 and 0 < entry_a["explore/pass@1"] < 1


# --- resume: the log history goes on without gaps or duplicates ------------------------------------------


class _Crash(Exception):
    pass


def test_resume_after_a_crash_continues_the_log_history(tmp_path, toy_dir, grpo_config):
    from transformers import TrainerCallback

    from cft_rl.grpo.run import train_grpo
    from cft_rl.toy.build import load_toy

    class CrashAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise _Crash

    model, tokenizer, data = load_toy(toy_dir)
    overrides = dict(max_steps=4, save_strategy="steps", save_steps=2, probe_steps=2, probe_size=2)
    overrides |= dict(probe_num_samples=2, probe_ks=[1, 2], probe_maj_ks=[2])
    config = grpo_config(**overrides)
    funcs = [tolerant_reward(_length_reward)]
    kwargs = dict(probe_dataset=data["validation"], tokenizer=tokenizer, reward_funcs=funcs)
    with pytest.raises(_Crash):
        train_grpo(config, model, data["train"], callbacks=[CrashAt()], **kwargs)
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]
    model, _, _ = load_toy(toy_dir)  # a fresh process would start from the warm-start again
    trainer = train_grpo(config, model, data["train"], resume_from_checkpoint=True, **kwargs)
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    steps = [e["step"] for e in history if "loss" in e]
    assert steps == [1, 2, 3, 4]
    assert [e["step"] for e in history if "probe/pass@1" in e] == [0, 2, 4]
    assert all("explore/pass@1" in e and "entropy/p50" in e for e in history if "loss" in e)
    assert trainer.state.global_step == 4
