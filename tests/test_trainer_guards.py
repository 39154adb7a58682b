"""Guards of the trainers and reports: where the entropy control scores, how the selective loss is
normalised for any model, prepared rows longer than max_length, the GRPO benchmark's noise sentence,
and GRPO metrics in TensorBoard."""

import copy

import pytest
import torch

from cft_rl.cpu import QUIET_CPU_RUN
from cft_rl.sft.prepare import prepare_dataset
from cft_rl.sft.trainer import SelectiveSFTConfig, SelectiveSFTTrainer


@pytest.fixture(scope="module")
def toy(toy_dir):
    from cft_rl.toy.build import load_toy

    return load_toy(toy_dir)


def _config(tmp_path, **overrides) -> SelectiveSFTConfig:
    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=0.5,
        optim="sgd",  # SGD keeps the loss scale in the update: Adam would hide a normalisation error
        lr_scheduler_type="constant",
        train_sampling_strategy="sequential",
        logging_steps=1,
        **QUIET_CPU_RUN,
        max_length=None,
        seed=0,
    )
    return SelectiveSFTConfig(**{**values, **overrides})


# --- the entropy control: scored once, on the trainer's device -------------------------------------


def test_entropy_scores_each_dataset_once_on_the_trainers_device(toy, tmp_path, monkeypatch):
    from cft_rl.sft import entropy as entropy_scores

    model, tokenizer, data = toy
    calls = []
    real = entropy_scores.score_entropies

    def spy(scoring_model, encoded, batch_size, device=None):
        calls.append((len(encoded), device))
        return real(scoring_model, encoded, batch_size, device)

    monkeypatch.setattr(entropy_scores, "score_entropies", spy)
    args = _config(tmp_path, strategy="entropy", selection_fraction=0.25, eval_strategy="no")
    trainer = SelectiveSFTTrainer(
        copy.deepcopy(model),
        args=args,
        train_dataset=data["train"].select(range(6)),
        eval_dataset=data["validation"].select(range(3)),
        processing_class=tokenizer,
    )
    assert calls == [(6, args.device), (3, args.device)]
    assert abs(trainer.selection["train"]["selected_fraction"] - 0.25) < 0.05


def test_entropy_scoring_from_a_path_loads_the_model_once_on_the_device(toy, toy_dir, tmp_path, monkeypatch):
    from cft_rl.sft import entropy as entropy_scores
    from cft_rl.sft import trainer as sft

    _, tokenizer, data = toy
    loads, devices = [], []
    real_load, real_score = sft._scoring_model, entropy_scores.score_entropies

    def load(name, args):
        loads.append(name)
        return real_load(name, args)

    def score(scoring_model, encoded, batch_size, device=None):
        devices.append(next(scoring_model.parameters()).device)
        return real_score(scoring_model, encoded, batch_size, device)

    monkeypatch.setattr(sft, "_scoring_model", load)
    monkeypatch.setattr(entropy_scores, "score_entropies", score)
    args = _config(tmp_path, strategy="entropy", selection_fraction=0.25)
    SelectiveSFTTrainer(str(toy_dir), args=args, train_dataset=data["train"].select(range(4)))
    assert loads == [str(toy_dir)] and devices == [args.device]


# --- the loss is one mean over the accumulation window, for any model ------------------------------


def _one_step(toy, tmp_path, name, batch, accumulation):
    model, tokenizer, data = toy
    model = copy.deepcopy(model)
    # Trainer reads this as "the forward takes no loss kwargs" (so it counts no num_items_in_batch),
    # as for a forward without **kwargs; some Hub models declare it.
    model.accepts_loss_kwargs = False
    args = _config(
        tmp_path / name,
        strategy="numeric",
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
    )
    trainer = SelectiveSFTTrainer(
        model, args=args, train_dataset=data["train"].select(range(4)), processing_class=tokenizer
    )
    trainer.train()
    weights = trainer.train_dataset["loss_weights"]
    selected = [sum(w > 0 for w in row[1:]) for row in weights]
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()]), selected


def test_accumulated_loss_is_one_mean_when_the_model_takes_no_loss_kwargs(toy, tmp_path):
    whole, selected = _one_step(toy, tmp_path, "whole", 4, 1)
    split, _ = _one_step(toy, tmp_path, "split", 2, 2)
    # Micro-batches of unequal selected counts: a mean of per-micro-batch means would differ.
    assert selected[0] + selected[1] != selected[2] + selected[3]
    assert (whole - split).abs().max().item() < 1e-6


# --- prepared rows longer than max_length ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_prepared_rows_are_cut_with_all_their_columns(toy, tmp_path, mode):
    model, tokenizer, data = toy
    rows = data["train"].select(range(4))
    prepared, _ = prepare_dataset(rows, tokenizer, _config(tmp_path, strategy="numeric"))
    lengths = [len(ids) for ids in prepared["input_ids"]]
    cut = min(lengths) - 2  # every row is longer; keep_end keeps the completion's numbers
    args = _config(tmp_path, strategy="numeric", max_length=cut, truncation_mode=mode)
    trainer = SelectiveSFTTrainer(
        copy.deepcopy(model), args=args, train_dataset=prepared, processing_class=tokenizer
    )
    keep = slice(None, cut) if mode == "keep_start" else slice(-cut, None)
    kept = [row for row in prepared if any(lab != -100 for lab in row["labels"][keep])]
    assert len(trainer.train_dataset) == len(kept) > 0
    for row, source in zip(trainer.train_dataset, kept, strict=True):
        for column in ("input_ids", "labels", "completion_mask", "loss_weights"):
            assert row[column] == source[column][keep], column
        # The weights sit on the tokens they were given for: a label where and only where a weight is.
        assert [w > 0 for w in row["loss_weights"]] == [lab != -100 for lab in row["labels"]]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(kept))])
    assert batch["loss_weights"].shape == batch["input_ids"].shape


# --- bench_grpo: the noise sentence follows its own figures ----------------------------------------


def test_bench_grpo_says_within_noise_only_when_it_is(load_script):
    noise_sentence = load_script("bench_grpo").noise_sentence
    # Plain TRL alone varies by (4.2 - 3.5) / 4.0 = 17.5% from round to round; +2% is inside that.
    inside = noise_sentence([4.2, 3.5, 4.0, 4.0], [4.3, 3.5, 4.1, 4.05])
    assert "within the machine's noise" in inside and "17.5%" in inside
    # Steady plain runs (0.5% spread) and monitored runs 20% slower: the difference is real.
    above = noise_sentence([4.00, 4.02, 3.99, 4.01], [4.80, 4.82, 4.79, 4.81])
    assert "within" not in above and "exceeds the machine's noise" in above and "+20.0%" in above
    below = noise_sentence([4.00, 4.02, 3.99, 4.01], [3.20, 3.22, 3.19, 3.21])
    assert "within" not in below and "faster" in below
    assert "one round" in noise_sentence([4.0], [4.1]) and "within" not in noise_sentence([4.0], [4.1])


# --- report_to: the GRPO monitors reach TensorBoard ------------------------------------------------


def _length_reward(completions, **kwargs):
    return [(len(c[-1]["content"]) % 3) / 2 for c in completions]


def test_grpo_writes_monitor_and_probe_scalars_to_tensorboard(tmp_path, toy_dir, grpo_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cft_rl.grpo.run import train_grpo
    from cft_rl.toy.build import load_toy
    from cft_rl.verify.rewards import tolerant_reward

    model, tokenizer, data = load_toy(toy_dir)
    config = grpo_config(
        report_to=["tensorboard"],
        max_completion_length=16,
        probe_steps=2,
        probe_size=2,
        probe_num_samples=2,
        probe_ks=[1, 2],
        probe_maj_ks=[2],
    )
    funcs = [tolerant_reward(_length_reward)]
    train_grpo(
        config,
        model,
        data["train"],
        probe_dataset=data["validation"],
        tokenizer=tokenizer,
        reward_funcs=funcs,
    )
    events = list((tmp_path / "run").rglob("events.out.tfevents.*"))  # under output_dir/runs/
    assert events, "no TensorBoard event file"
    tags = set()
    steps = {}
    for path in events:
        accumulator = EventAccumulator(str(path.parent))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            tags.add(tag)
            steps.setdefault(tag, set()).update(e.step for e in accumulator.Scalars(tag))
    for name in ("explore/pass@1", "explore/frac_zero_std", "entropy/p50", "entropy/numeric", "probe/pass@1"):
        assert f"train/{name}" in tags, (name, sorted(tags))
    assert steps["train/explore/pass@1"] == {1, 2}
    assert {0, 2} <= steps["train/probe/pass@1"]  # the probe at the start, and at step 2
