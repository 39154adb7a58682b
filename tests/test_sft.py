"""Selective SFT: the loss maths on hand-computed tensors, equality with TRL, and runs on the toy."""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, TrlParser

from cft_rl.cli import main as cli_main
from cft_rl.cpu import QUIET_CPU_RUN
from cft_rl.models import load_model
from cft_rl.sft.loss import SUM_KEYS, selection_metrics, selective_loss
from cft_rl.sft.run import train_sft
from cft_rl.sft.trainer import (
    SelectiveDataCollator,
    SelectiveSFTConfig,
    SelectiveSFTTrainer,
)

ROOT = Path(__file__).resolve().parents[1]
LN2 = math.log(2)

# --- the loss on hand-computed tensors -------------------------------------------------------------


def test_weighted_loss_equals_a_hand_computation():
    # Selected probabilities 1/2, 1/8, 1/2: NLLs ln 2, 3 ln 2, ln 2 over 3 selected tokens.
    log_probs = torch.tensor([[0.5, 0.25, 0.125], [0.8, 0.1, 0.5]]).log()
    weights = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert selective_loss(log_probs, weights).item() == pytest.approx(5 * LN2 / 3, abs=1e-6)
    # Normalised by the count over the whole accumulation window / all devices when given.
    assert selective_loss(log_probs, weights, num_items=6).item() == pytest.approx(5 * LN2 / 6, abs=1e-6)
    # DFT: each NLL times its probability: (1/2 ln 2 + 1/8 * 3 ln 2 + 1/2 ln 2) / 3.
    dft = selective_loss(log_probs, weights, dft=True).item()
    assert dft == pytest.approx((0.5 + 0.375 + 0.5) * LN2 / 3, abs=1e-6)
    # A fractional weight scales its token's NLL and still counts as one token.
    half = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert selective_loss(log_probs, half).item() == pytest.approx(0.5 * LN2, abs=1e-6)


def test_an_all_zero_example_adds_nothing_and_no_nan():
    # Row 2 selects nothing, and its log-probs are as bad as they get.
    log_probs = torch.tensor([[-LN2, -2 * LN2], [float("-inf"), float("nan")]], requires_grad=True)
    weights = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    loss = selective_loss(log_probs, weights)
    assert loss.item() == pytest.approx((LN2 + 2 * LN2) / 2, abs=1e-6)
    loss.backward()
    assert torch.equal(log_probs.grad[1], torch.zeros(2))
    # A batch that selects nothing at all: a finite zero that still backpropagates.
    nothing = selective_loss(torch.zeros(2, 2, requires_grad=True), torch.zeros(2, 2))
    nothing.backward()
    assert nothing.item() == 0.0


def test_gradient_at_unselected_positions_is_exactly_zero():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 7, requires_grad=True)
    labels = torch.tensor([[3, 1, 6, 0]])
    log_probs = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    for dft in (False, True):
        logits.grad = None
        selective_loss(log_probs, torch.tensor([[1.0, 0.0, 1.0, 0.0]]), dft=dft).backward(retain_graph=True)
        assert torch.equal(logits.grad[0, 1], torch.zeros(7)) and torch.equal(
            logits.grad[0, 3], torch.zeros(7)
        )
        assert logits.grad[0, 0].abs().sum() > 0 and logits.grad[0, 2].abs().sum() > 0


def test_metrics_are_token_weighted_ratios_of_sums():
    sums = dict(selected=2.0, completion=8.0, selected_nll=3.0, completion_nll=4.0, selected_entropy=5.0)
    metrics = selection_metrics(torch.tensor([sums[k] for k in SUM_KEYS]))
    assert metrics == {
        "selected/fraction": 0.25,
        "selected/nll": 1.5,
        "selected/entropy": 2.5,
        "completion/nll": 0.5,
    }
    assert selection_metrics(torch.zeros(len(SUM_KEYS)))["selected/nll"] == 0.0


def test_collator_pads_the_weights_like_the_labels():
    examples = [
        {
            "input_ids": [5, 6, 7],
            "labels": [-100, 6, -100],
            "completion_mask": [0, 1, 1],
            "loss_weights": [0, 1, 0],
        },
        {"input_ids": [8, 9], "labels": [-100, 9], "completion_mask": [0, 1], "loss_weights": [0, 1]},
    ]
    batch = SelectiveDataCollator(pad_token_id=0)(examples)
    assert batch["loss_weights"].tolist() == [[0, 1, 0], [0, 1, 0]]
    assert batch["completion_mask"].tolist() == [[False, True, True], [False, True, False]]
    flat = SelectiveDataCollator(pad_token_id=0, padding_free=True)(examples)
    assert flat["loss_weights"].tolist() == [[0, 1, 0, 0, 1]]
    assert flat["labels"].tolist() == [[-100, 6, -100, -100, 9]]


# --- on the toy model: equality with TRL and with a plain-logits computation -----------------------


@pytest.fixture(scope="module")
def toy(toy_dir):
    from cft_rl.toy.build import load_toy

    return load_toy(toy_dir)


def _args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        **QUIET_CPU_RUN,
        max_length=None,
    )
    return {**values, **overrides}


def _trainer(toy, tmp_path, rows=4, **overrides):
    model, tokenizer, data = toy
    args = SelectiveSFTConfig(**_args(tmp_path, **overrides))
    train = data["train"].select(range(rows))
    return SelectiveSFTTrainer(
        copy.deepcopy(model), args=args, train_dataset=train, processing_class=tokenizer
    )


def _batch(trainer, n=4):
    rows = [trainer.train_dataset[i] for i in range(n)]
    return trainer.data_collator(rows)


def _count(labels):
    return (labels[:, 1:] != -100).sum()


def test_full_equals_trls_plain_sft_loss(toy, tmp_path):
    model, tokenizer, _ = toy
    ours = _trainer(toy, tmp_path, strategy="full")
    batch = _batch(ours)
    # TRL builds its own completion-only labels from the same tokens.
    trl_data = ours.train_dataset.remove_columns(["loss_weights", "labels"])
    theirs = SFTTrainer(
        copy.deepcopy(model),
        args=SFTConfig(**_args(tmp_path), completion_only_loss=True),
        train_dataset=trl_data,
        processing_class=tokenizer,
    )
    trl_batch = theirs.data_collator([theirs.train_dataset[i] for i in range(4)])
    assert torch.equal(trl_batch["input_ids"], batch["input_ids"])
    assert torch.equal(trl_batch["labels"], batch["labels"])
    for num_items in (None, _count(batch["labels"])):
        expected = theirs.compute_loss(theirs.model, dict(trl_batch), num_items_in_batch=num_items)
        got = ours.compute_loss(ours.model, dict(batch), num_items_in_batch=num_items)
        assert abs(got.item() - expected.item()) < 1e-6


@pytest.mark.parametrize("loss_type", ["nll", "dft"])
def test_selective_loss_equals_a_plain_logits_computation(toy, tmp_path, loss_type):
    model, _, _ = toy
    trainer = _trainer(toy, tmp_path, strategy="numeric", loss_type=loss_type)
    trainer.model.train()  # the metrics go to the "train" log
    batch = _batch(trainer)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    log_probs = torch.log_softmax(logits[:, :-1].float(), -1)
    targets = batch["input_ids"][:, 1:]
    picked = log_probs.gather(-1, targets[..., None])[..., 0]
    selected = batch["loss_weights"][:, 1:] > 0
    nll = -picked[selected]
    if loss_type == "dft":
        nll = nll * picked[selected].exp()
    expected = nll.sum() / selected.sum()
    got = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=_count(batch["labels"]))
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    completion = batch["completion_mask"][:, 1:]
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert logged["selected/fraction"] == pytest.approx((selected.sum() / completion.sum()).item())
    assert logged["completion/nll"] == pytest.approx(-picked[completion].mean().item(), abs=1e-5)
    assert logged["selected/nll"] == pytest.approx(-picked[selected].mean().item(), abs=1e-5)


def test_two_processes_normalise_like_one(toy_dir, tmp_path, two_cpu_processes):
    """Rank 0 and rank 1 select different numbers of tokens; the step must still be one mean."""
    job = str(ROOT / "tests" / "sft_ddp_job.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run(
        [sys.executable, job, str(toy_dir), str(one), "2"], check=True, env=env, capture_output=True
    )
    run = subprocess.run(
        [*two_cpu_processes, job, str(toy_dir), str(two), "1"], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert a["selected_per_micro_batch"][0] != a["selected_per_micro_batch"][1]
    assert b["losses"] == pytest.approx(a["losses"], abs=1e-6)
    assert max(abs(x - y) for x, y in zip(a["weights_head"], b["weights_head"], strict=True)) < 1e-6
    # The entropy control: scored by the main process alone, the same selection on every rank.
    alone, first, second = (
        json.loads(Path(f"{p}.rank{r}.json").read_text()) for p, r in [(one, 0), (two, 0), (two, 1)]
    )
    assert alone["forwards"] > 0 and first["forwards"] == alone["forwards"] and second["forwards"] == 0
    assert first["loss_weights"] == second["loss_weights"] == alone["loss_weights"]


# --- training runs: full, LoRA, SFTKey, the command line -------------------------------------------


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_full_fine_tuning_trains_and_saves_a_loadable_model(toy, tmp_path):
    model, tokenizer, data = toy
    args = SelectiveSFTConfig(**_args(tmp_path, strategy="numeric", learning_rate=1e-2))
    result = train_sft(args, copy.deepcopy(model), data["train"].select(range(8)), tokenizer=tokenizer)
    loaded = load_model(result.output_dir)
    ids = torch.tensor([tokenizer("1 + 2 = 3")["input_ids"]])
    assert not torch.allclose(_logits(loaded, ids), _logits(model, ids))
    summary = json.loads((result.output_dir / "selection.json").read_text())
    assert summary["numeric"]["train"]["rows_kept"] == 8
    assert [m["step"] for m in result.metrics["numeric"]] == [1, 2]


def test_lora_trains_an_adapter_that_loads_for_grpo(toy, tmp_path, toy_dir):
    from peft import LoraConfig

    model, tokenizer, data = toy
    base = copy.deepcopy(model)
    base.config._name_or_path = str(toy_dir)  # what from_pretrained(toy_dir) records; the adapter names it
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = SelectiveSFTConfig(**_args(tmp_path, strategy="answer", learning_rate=5e-2))
    result = train_sft(args, base, data["train"].select(range(8)), tokenizer=tokenizer, peft_config=lora)
    assert (result.output_dir / "adapter_config.json").is_file()
    assert not (result.output_dir / "model.safetensors").exists()
    merged = load_model(result.output_dir)
    ids = torch.tensor([tokenizer("1 + 2 = 3")["input_ids"]])
    assert not torch.allclose(_logits(merged, ids), _logits(model, ids))
    assert type(merged).__name__ == type(model).__name__  # a plain model: GRPO needs no peft


def test_sftkey_runs_both_stages(toy, tmp_path):
    model, tokenizer, data = toy
    values = _args(tmp_path, strategy="sftkey", lr_scheduler_type="constant", learning_rate=1e-3)
    args = SelectiveSFTConfig(**values, sftkey_stage2_max_steps=3, sftkey_stage2_learning_rate=5e-3)
    result = train_sft(args, copy.deepcopy(model), data["train"].select(range(8)), tokenizer=tokenizer)
    assert (result.output_dir / "stage1" / "config.json").is_file()
    assert (result.output_dir / "config.json").is_file()
    first, second = result.metrics["full"], result.metrics["answer"]
    assert len(first) == 2 and len(second) == 3
    assert all(m["selected/fraction"] == 1.0 for m in first)
    assert all(0 < m["selected/fraction"] < 0.2 for m in second)
    assert {m["learning_rate"] for m in first} == {1e-3} and {m["learning_rate"] for m in second} == {5e-3}


def test_cli_runs_a_recipe_with_overrides(toy_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "sft",
        "--config",
        str(ROOT / "recipes/toy/sft/numeric.yaml"),
        "--model_name_or_path",
        str(toy_dir),
    ]
    argv += ["--dataset_name", str(toy_dir / "data"), "--output_dir", str(out), "--max_steps", "1"]
    argv += ["--per_device_train_batch_size", "2", "--use_cpu", "true"]
    assert cli_main(argv) == 0
    assert (out / "config.json").is_file() and (out / "selection.json").is_file()
    assert "numeric" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--strategy", "critcal"],
            "valid strategies: full, critical, numeric, answer, random, entropy, sftkey",
        ),
        (["--strategy", "critical"], "Run `cft-rl annotate"),
    ],
)
def test_cli_bad_input_exits_2_with_the_fix(toy_dir, tmp_path, capsys, flags, message):
    argv = ["sft", "--model_name_or_path", str(toy_dir), "--dataset_name", str(toy_dir / "data")]
    argv += ["--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false", *flags]
    assert cli_main(argv) == 2
    assert message in capsys.readouterr().err


def test_every_recipe_parses():
    for recipe in sorted((ROOT / "recipes/toy/sft").glob("*.yaml")):
        parser = TrlParser((ScriptArguments, SelectiveSFTConfig, ModelConfig))  # a config sets its defaults
        _, args, model_args = parser.parse_args_and_config(["--config", str(recipe), "--use_cpu", "true"])
        assert args.strategy == recipe.stem.split("_")[0], recipe.name
        assert model_args.use_peft == ("lora" in recipe.stem)
        assert (args.loss_type == "dft") == ("dft" in recipe.stem)
