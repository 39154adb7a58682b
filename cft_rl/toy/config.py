"""The settings of a toy build (:class:`ToyBuildConfig`) and their cache key.

A build is a pure function of these settings (and ``BUILD_VERSION``), so the key names the build: it
is written into the build's manifest, names its pretraining checkpoint, and decides whether an embedded
or cached build can be reused (:mod:`cft_rl.toy.build`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from cft_rl.toy.task import ToyTaskConfig

BUILD_VERSION = 3  # bump when the build procedure changes what a given config produces
# Settings added within build version 3, with the value that reproduces the builds made before them.
ADDED_LATER = {"lr_schedule": "cosine", "ema_decay": 0.0}


@dataclass(frozen=True)
class ToyBuildConfig:
    """Everything that decides a toy build. Each field is part of the cache key.

    Args:
        seed: drives problem generation, model init and data order.
        task: the problem generator's settings.
        n_pretrain / n_train / n_validation / n_test: problems per split (disjoint by construction).
        solutions_per_problem: pretraining texts per pretraining problem, each in its own style.
        vocab_size: BPE vocabulary, including 256 byte tokens and 3 special tokens.
        hidden_size / num_layers / num_heads / num_kv_heads / intermediate_size: the Qwen2 shape. Eight
            heads of 16 dims (four key/value heads), not four of 32, at the same parameter count and step
            time: with four, whether the model learnt to read the right operands within the budget
            depended on the seed (train greedy 19-67% over seeds 0-2), with eight it did not (56-66%).
        steps / batch_size / learning_rate / warmup_steps: pretraining, after a linear warmup. 5,000
            steps at a constant rate with a 0.998 weight average (``lr_schedule``, ``ema_decay``): the
            4,000-step cosine build this replaced sat on a slope (+11.0 pt of greedy train accuracy, on
            2,000 problems, for 10% more steps), while this one moves by at most 2.5 pt for ±10%
            steps over seeds 0-2 (docs/benchmarks.md, the toy section).
        lr_schedule: ``"cosine"`` decays to 10% of ``learning_rate`` at ``steps``; ``"constant"`` keeps
            it. Under ``"constant"`` nothing in the run depends on ``steps``, so a build of N steps is
            exactly the first N steps of a longer one: builds that differ only in steps can be measured
            from the checkpoints of one run.
        ema_decay: if above 0, the saved weights are an exponential moving average of the trained ones
            (``ema = d * ema + (1 - d) * w`` after each step, a horizon of about ``1 / (1 - d)`` steps).
            Averaging does what a decaying learning rate does for the end of a run (it removes the
            step-to-step noise) without tying the schedule to a planned length.
        pretrain_hard_share: the share of the pretraining split's hard problems (``ToyTaskConfig.hard_prob``)
            that pretraining keeps. 5% by default: the base model then has a weak skill that the
            train and test splits ask for, which RL can strengthen (with none, every sampled solution of a
            hard problem is wrong, and GRPO gets no signal there; with 10% and eight heads, one seed
            solved 46% of its hard train problems, too strong a start); 0 leaves the skill out, 1 keeps
            it all.
        noise_prob: chance that pretraining swaps a word or format token of a solution for another
            word or format token, drawn by its frequency in the solutions (:func:`~cft_rl.toy.corpus.swap_weights`),
            with no loss on the swapped token. The model learns to carry on after
            an odd word, as web-trained models do; without it a tiny model derails after any perturbation,
            and most of its tokens come out "critical". Digits and operators are never swapped: a wrong
            number must still change the answer.
        threads: torch CPU threads (fixed, because results depend on the reduction order; one thread
            keeps it the same whatever the core count).
    """

    seed: int = 0
    task: ToyTaskConfig = field(default_factory=ToyTaskConfig)
    n_pretrain: int = 20000
    n_train: int = 2000
    n_validation: int = 200
    n_test: int = 500
    solutions_per_problem: int = 2
    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 384
    steps: int = 5000
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    lr_schedule: str = "constant"
    ema_decay: float = 0.998
    pretrain_hard_share: float = 0.05
    noise_prob: float = 0.1
    threads: int = 1

    def __post_init__(self):
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule {self.lr_schedule!r}: use 'cosine' or 'constant'")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay {self.ema_decay}: use 0 (no average) or a decay in (0, 1)")

    @classmethod
    def tiny(cls, **overrides) -> ToyBuildConfig:
        """A few-second build for tests: the same pipeline with a much smaller model and corpus."""
        small = dict(
            n_pretrain=600,
            n_train=64,
            n_validation=16,
            n_test=32,
            vocab_size=300,
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            num_kv_heads=1,
            intermediate_size=64,
            steps=30,
            batch_size=16,
            # The tests' fixtures were tuned on this world; the default's later task mix is not theirs.
            task=ToyTaskConfig(hard_prob=0.35),
            pretrain_hard_share=0.1,
            # 30 steps under a 0.998 average would save weights close to the initial ones.
            lr_schedule="cosine",
            ema_decay=0.0,
        )
        return cls(**{**small, **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> ToyBuildConfig:
        """From YAML/CLI values; a misspelt key is an error that names it and lists the valid ones."""
        values = dict(values)
        _check_keys(cls, values, "toy build")
        if isinstance(values.get("task"), dict):
            _check_keys(ToyTaskConfig, values["task"], "toy task")
            task = dict(values["task"])
            if "operations" in task:
                task["operations"] = tuple(task["operations"])
            values["task"] = ToyTaskConfig(**task)
        return cls(**values)

    def key(self) -> str:
        settings = dataclasses.asdict(self)
        # Fields added after a build version enter the key only when set to something else than the
        # behaviour that version had: the builds made before them (the tiny preset among them) keep
        # their keys, so no cache, pipeline stage or embedded model is invalidated by a no-op.
        for name, before in ADDED_LATER.items():
            if settings[name] == before:
                del settings[name]
        blob = json.dumps({"version": BUILD_VERSION, **settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_keys(cls, values: dict, what: str) -> None:
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; valid settings: {sorted(valid)}")
