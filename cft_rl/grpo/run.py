"""GRPO from any warm-start checkpoint, with the math reward and the exploration/entropy monitors.

    cft-rl grpo --config recipes/toy/grpo/toy.yaml [--field value ...]
    accelerate launch scripts/grpo.py --config recipe.yaml

The RL stage. Everything is TRL's ``GRPOTrainer`` and ``GRPOConfig``; this module adds:

- the policy from a warm-start directory (:func:`load_warm_start`): a full model, or a LoRA adapter
  that is merged into its base model or kept as the trainable adapter (``adapter_mode``);
- rewards by name (``math_reward``, ``format_reward``) or dotted import path, each wrapped by
  :func:`cft_rl.verify.rewards.tolerant_reward`, so a reward that raises or returns NaN for one completion scores only that
  completion as failed (counted in ``rewards/<name>/frac_failed``) and training goes on;
- the monitors of :mod:`cft_rl.grpo.trainer` and the fixed probe set.

vLLM (``use_vllm`` with ``vllm_mode`` ``colocate`` or ``server``) is TRL's, passed through untouched.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trl import GRPOConfig

from cft_rl.cpu import cpu_float_math
from cft_rl.data.datasets import load_math_dataset
from cft_rl.grpo.metrics import MonitorConfig
from cft_rl.grpo.trainer import MonitoredGRPOTrainer, Probe
from cft_rl.models import load_model, load_tokenizer, model_init_kwargs, resolve_model
from cft_rl.resume import OutputDirArguments, end_processes, prepare_output_dir
from cft_rl.verify.rewards import build_reward_funcs

logger = logging.getLogger(__name__)

__all__ = [
    "GRPORunConfig",
    "MonitoredGRPOTrainer",
    "build_trainer",
    "load_tokenizer",
    "load_warm_start",
    "main",
    "make_probe",
    "run_cli",
    "train_grpo",
]

ADAPTER_MODES = ("merge", "train")
# GRPORunConfig field -> MonitorConfig field, for the fields that are passed straight on.
_MONITOR_FIELDS = {
    "monitor_ks": "ks",
    "monitor_success_threshold": "success_threshold",
    "monitor_zero_std_atol": "zero_std_atol",
    "monitor_distinct_max_n": "distinct_max_n",
    "monitor_self_bleu_max_words": "self_bleu_max_words",
    "monitor_forking_threshold": "forking_threshold",
    "monitor_entropy_percentiles": "entropy_percentiles",
    "probe_steps": "probe_steps",
    "probe_num_samples": "probe_num_samples",
    "probe_temperature": "probe_temperature",
    "probe_ks": "probe_ks",
    "probe_maj_ks": "probe_maj_ks",
}


@dataclass
class GRPORunConfig(GRPOConfig):
    """TRL's ``GRPOConfig`` plus the warm-start, reward, monitor and probe settings.

    Every inherited field means what it means in TRL (``reward_weights`` weighs ``reward_funcs``).

    Parameters:
        adapter_mode: When the warm-start directory holds a LoRA adapter: ``merge`` it into its base
            model and train the full model, or ``train`` the adapter itself (base frozen).
        trainable_parameters: fnmatch patterns of parameter names to train; every other parameter is
            frozen. None: all (what the toy recipes train). ``["*norm*"]`` is LayerNorm tuning: cheap,
            but on a small model it mostly rescales the logits, a temperature change. Not with a LoRA
            adapter.
        reward_funcs: Reward functions, by registered name (``math_reward``, ``format_reward``) or
            dotted import path (``pkg.module.func``).
        correct_reward: Name of the reward whose value decides correctness for ``explore/pass@k``
            (correct when >= ``monitor_success_threshold``). Default: ``math_reward`` when it is among
            ``reward_funcs``, else the weighted total reward.
        monitor_ks: The k of ``explore/pass@k``; None: 1, 2, 4, ... and ``num_generations``. Each k must
            be at most ``num_generations``.
        monitor_success_threshold / monitor_zero_std_atol / monitor_distinct_max_n /
        monitor_self_bleu_max_words / monitor_forking_threshold / monitor_entropy_percentiles: the
            corresponding settings of :class:`cft_rl.grpo.metrics.MonitorConfig`.
        probe_steps: Sample the fixed probe set before training and every this many steps; 0: no probe.
            Must be a multiple of ``logging_steps``, so each probe lands in its own log entry.
        probe_dataset: Dataset the probe prompts come from (CLI), anything
            :func:`cft_rl.data.datasets.load_math_dataset` reads; None: ``dataset_name``. Benchmarks have a single
            split, so with ``dataset_name: gsm8k_train`` name a held-out set here (e.g. ``gsm8k_test``).
        probe_split: Split of the dataset the probe prompts come from (CLI; the Python API takes the
            probe dataset itself). Must not be the training split's prompts if curves are to mean
            held-out behaviour.
        probe_size: Probe prompts: the first ``probe_size`` rows of the probe split.
        probe_num_samples / probe_temperature / probe_ks / probe_maj_ks: completions per probe prompt,
            their temperature (1.0: the policy's own distribution), and the k of ``probe/pass@k`` and
            ``probe/maj@k`` (each at most ``probe_num_samples``).
        probe_batch_size: Probe prompts per generation call.
        probe_seed: Sampling seed of the probe, the same at every probe.
    """

    adapter_mode: str = field(default="merge", metadata={"help": "LoRA warm-start: 'merge' or 'train'."})
    trainable_parameters: list[str] | None = field(
        default=None, metadata={"help": "fnmatch patterns of the parameters to train (None: all)."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["math_reward"],
        metadata={"help": "Reward functions: registered names or dotted import paths."},
    )
    correct_reward: str | None = field(default=None, metadata={"help": "Reward deciding pass@k correctness."})
    monitor_ks: list[int] | None = field(default=None, metadata={"help": "k of explore/pass@k (<= G)."})
    monitor_success_threshold: float = field(default=1.0, metadata={"help": "Correct when reward >= this."})
    monitor_zero_std_atol: float = field(default=1e-6, metadata={"help": "Tolerance of 'all rewards equal'."})
    monitor_distinct_max_n: int = field(default=4, metadata={"help": "explore/distinct_1..n."})
    monitor_self_bleu_max_words: int | None = field(default=512, metadata={"help": "Self-BLEU word cut."})
    monitor_forking_threshold: float = field(
        default=0.672, metadata={"help": "Forking token: entropy > this."}
    )
    monitor_entropy_percentiles: list[float] = field(
        default_factory=lambda: [10.0, 50.0, 80.0, 90.0], metadata={"help": "entropy/p{q} logged."}
    )
    probe_steps: int = field(default=0, metadata={"help": "Probe every N steps; 0: off."})
    probe_dataset: str | None = field(
        default=None, metadata={"help": "Probe prompts' dataset (default: dataset_name)."}
    )
    probe_split: str = field(default="validation", metadata={"help": "Dataset split of the probe prompts."})
    probe_size: int = field(default=64, metadata={"help": "Number of probe prompts."})
    probe_num_samples: int = field(default=8, metadata={"help": "Samples per probe prompt."})
    probe_temperature: float = field(default=1.0, metadata={"help": "Probe sampling temperature."})
    probe_ks: list[int] = field(default_factory=lambda: [1, 8], metadata={"help": "k of probe/pass@k."})
    probe_maj_ks: list[int] = field(default_factory=lambda: [8], metadata={"help": "k of probe/maj@k."})
    probe_batch_size: int = field(default=32, metadata={"help": "Probe prompts per generation call."})
    probe_seed: int = field(default=1234, metadata={"help": "Probe sampling seed."})

    def __post_init__(self):
        super().__post_init__()
        if self.adapter_mode not in ADAPTER_MODES:
            raise ValueError(f"adapter_mode must be one of {ADAPTER_MODES}; got {self.adapter_mode!r}")
        if not self.reward_funcs:
            raise ValueError("reward_funcs is empty: name at least one reward (e.g. [math_reward])")
        if self.monitor_ks and max(self.monitor_ks) > self.num_generations:
            raise ValueError(
                f"monitor_ks has k={max(self.monitor_ks)}, more than num_generations={self.num_generations}: "
                "pass@k needs k samples of one prompt; lower monitor_ks or raise num_generations"
            )
        for name in ("probe_size", "probe_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.probe_steps and self.logging_steps >= 1 and self.probe_steps % int(self.logging_steps):
            raise ValueError(
                f"probe_steps={self.probe_steps} is not a multiple of logging_steps={self.logging_steps}: "
                "a probe would be averaged into a later log entry; make probe_steps a multiple"
            )
        self.monitor_config()  # validates the monitor fields, naming them as they are named here

    def monitor_config(self) -> MonitorConfig:
        """The :class:`MonitorConfig` of these settings; an invalid one is an error naming our field."""
        values = {ours: getattr(self, ours) for ours in _MONITOR_FIELDS}
        values = {
            theirs: tuple(v) if isinstance(v, list) else v
            for theirs, v in zip(_MONITOR_FIELDS.values(), values.values(), strict=True)
        }
        try:
            return MonitorConfig(**values)
        except ValueError as exc:
            message = str(exc)
            for ours, theirs in _MONITOR_FIELDS.items():
                message = message.replace(f"MonitorConfig.{theirs} ", f"{ours} ")
            raise ValueError(message) from None


# --- the policy ------------------------------------------------------------------------------------


def load_warm_start(path: str | Path, adapter_mode: str = "merge", **model_kwargs):
    """The policy of a warm start: a checkpoint folder or a Hub id (:func:`cft_rl.models.load_model`),
    a full model, or base model + the LoRA adapter in ``path``.

    With an adapter (``adapter_config.json``), ``adapter_mode="merge"`` returns the merged plain model,
    every parameter trainable; ``"train"`` returns the ``PeftModel`` with the adapter trainable, so
    GRPO trains that adapter. ``model_kwargs`` go to ``from_pretrained`` (dtype, revision...).
    """
    if adapter_mode not in ADAPTER_MODES:
        raise ValueError(f"adapter_mode must be one of {ADAPTER_MODES}; got {adapter_mode!r}")
    train = adapter_mode == "train"
    return load_model(path, merge=not train, trainable=train, **model_kwargs)


def restrict_trainable(model, patterns: Sequence[str]) -> int:
    """Freeze every parameter whose name matches none of ``patterns`` (fnmatch); returns the number of
    parameters left trainable. The trainer's optimizer then only sees those."""
    from fnmatch import fnmatchcase

    kept = 0
    for name, param in model.named_parameters():
        train = any(fnmatchcase(name, pattern) for pattern in patterns)
        param.requires_grad_(train)
        kept += param.numel() if train else 0
    if not kept:
        example = next(iter(dict(model.named_parameters())), "?")
        raise ValueError(
            f"trainable_parameters {list(patterns)} match no parameter; names look like {example!r}"
        )
    return kept


# --- the Python API --------------------------------------------------------------------------------


def make_probe(config: GRPORunConfig, dataset) -> Probe | None:
    """The fixed probe of ``config`` on the first ``probe_size`` rows of ``dataset``; None if off."""
    if not config.probe_steps:
        return None
    if dataset is None:
        raise ValueError("probe_steps > 0 needs a probe dataset (probe_dataset=, or probe_split on the CLI)")
    if config.probe_size > len(dataset):
        raise ValueError(
            f"probe_size={config.probe_size} is larger than the probe data ({len(dataset)} rows); "
            "lower probe_size or choose a larger probe_split"
        )
    missing = {"prompt", "answer"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"the probe data lacks column(s) {sorted(missing)}; it needs prompt and answer")
    rows = dataset.select(range(config.probe_size))
    return Probe(
        rows["prompt"],
        rows["answer"],
        every=config.probe_steps,
        batch_size=config.probe_batch_size,
        max_new_tokens=config.max_completion_length or 256,
        seed=config.probe_seed,
    )


def build_trainer(
    config: GRPORunConfig,
    model,
    train_dataset,
    *,
    eval_dataset=None,
    probe_dataset=None,
    tokenizer=None,
    reward_funcs: Sequence[Callable] | None = None,
    peft_config=None,
    callbacks=None,
    **trainer_kwargs,
) -> MonitoredGRPOTrainer:
    """The monitored trainer of ``config``; see :func:`train_grpo` for the arguments.

    ``trainer_kwargs`` go to ``GRPOTrainer`` as they are (``rollout_func``, ``tools``...).
    """
    if isinstance(model, (str, Path)):
        # trust_remote_code as TRL's GRPOTrainer takes it: the config's, unless model_init_kwargs say.
        init = {"trust_remote_code": config.trust_remote_code, **(config.model_init_kwargs or {})}
        revision, remote = init.get("revision"), init["trust_remote_code"]
        tokenizer = tokenizer or load_tokenizer(model, revision=revision, trust_remote_code=remote)
        model = load_warm_start(model, config.adapter_mode, **init)
        config.model_init_kwargs = None  # used here; TRL would warn that it ignores them
    if config.trainable_parameters:
        if peft_config is not None or hasattr(model, "peft_config"):
            raise ValueError(
                "trainable_parameters selects parameters of a full model; drop it or the LoRA adapter"
            )
        restrict_trainable(model, config.trainable_parameters)
    if peft_config is not None and config.adapter_mode == "train" and hasattr(model, "peft_config"):
        raise ValueError(
            "the warm-start is a LoRA adapter kept trainable (adapter_mode=train) and a new peft_config "
            "was given too; use adapter_mode=merge to put a new adapter on the merged model"
        )
    funcs = list(reward_funcs) if reward_funcs is not None else build_reward_funcs(config.reward_funcs)
    names = [getattr(f, "__name__", "") for f in funcs]
    correct = config.correct_reward or ("math_reward" if "math_reward" in names else None)
    if "math_reward" in names and "answer" not in train_dataset.column_names:
        raise ValueError("math_reward needs an 'answer' column (the gold final answer) in the training data")
    return MonitoredGRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
        monitor=config.monitor_config(),
        correct_reward=correct,
        probe=make_probe(config, probe_dataset),
        **trainer_kwargs,
    )


def train_grpo(
    config: GRPORunConfig,
    model,
    train_dataset,
    *,
    eval_dataset=None,
    probe_dataset=None,
    tokenizer=None,
    reward_funcs: Sequence[Callable] | None = None,
    peft_config=None,
    callbacks=None,
    resume_from_checkpoint: str | bool | None = None,
) -> MonitoredGRPOTrainer:
    """Run GRPO; save the policy to ``config.output_dir``; return the trainer (its ``state.log_history``).

    ``model``: a warm-start directory (see :func:`load_warm_start`) or a model object (then pass
    ``tokenizer``). ``train_dataset`` needs ``prompt`` and, for ``math_reward``, ``answer``.
    ``probe_dataset``: the held-out rows of the probe (needed when ``probe_steps`` > 0).
    ``reward_funcs``: callables overriding ``config.reward_funcs``. ``peft_config``: a new LoRA adapter
    on a full (or merged) warm-start. ``resume_from_checkpoint``: a checkpoint folder, or True for
    the last one in ``output_dir`` (default: ``config.resume_from_checkpoint``).
    """
    trainer = build_trainer(
        config,
        model,
        train_dataset,
        eval_dataset=eval_dataset,
        probe_dataset=probe_dataset,
        tokenizer=tokenizer,
        reward_funcs=reward_funcs,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    resume = config.resume_from_checkpoint if resume_from_checkpoint is None else resume_from_checkpoint
    # On CPU, flush float denormals: small models hit them constantly and run ~100x slower on them.
    on_cpu = trainer.accelerator.device.type == "cpu"
    with cpu_float_math() if on_cpu else contextlib.nullcontext():
        trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(config.output_dir)
    trainer.save_state()  # trainer_state.json: the whole log history, monitors included
    return trainer


# --- command line ----------------------------------------------------------------------------------


def run_cli(argv: list[str] | None = None) -> MonitoredGRPOTrainer | None:
    """Parse ``cft-rl grpo`` arguments and run :func:`train_grpo`; returns the trained trainer, or None
    when ``output_dir`` holds a finished run (skipped; see :mod:`cft_rl.resume`, which also makes a
    rerun resume from the last checkpoint).

    ``model_name_or_path`` is the warm start: a folder or a Hub id; ``dataset_name`` anything
    :func:`cft_rl.data.datasets.load_math_dataset` reads (the toy's ``DIR/data`` included); the probe prompts
    come from its ``probe_split``. ``use_peft`` and ``lora_*`` put a new LoRA adapter on the warm-start.
    """
    from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

    parser = TrlParser((ScriptArguments, GRPORunConfig, ModelConfig, OutputDirArguments))
    script, config, model_args, run_args = parser.parse_args_and_config(argv)
    if not model_args.model_name_or_path or not script.dataset_name:
        raise ValueError("set model_name_or_path and dataset_name (in the recipe or as --flags)")
    config.model_init_kwargs = model_init_kwargs(config, model_args)
    # A wrong model name fails now, before the output_dir is touched (--overwrite_output_dir clears it).
    resolve_model(model_args.model_name_or_path, config.model_init_kwargs.get("revision"))
    if not prepare_output_dir(config, run_args.overwrite_output_dir):
        return None
    train = load_math_dataset(script.dataset_name, split=script.dataset_train_split)
    evaluate = config.eval_strategy != "no"
    eval_data = load_math_dataset(script.dataset_name, split=script.dataset_test_split) if evaluate else None
    probe_name = config.probe_dataset or script.dataset_name
    probe = load_math_dataset(probe_name, split=config.probe_split) if config.probe_steps else None
    return train_grpo(
        config,
        model_args.model_name_or_path,
        train,
        eval_dataset=eval_data,
        probe_dataset=probe,
        peft_config=get_peft_config(model_args),
    )


def main(argv: list[str] | None = None) -> int:
    """``cft-rl grpo --config recipe.yaml [--field value ...]``: TRL-style flags override the YAML."""
    trainer = run_cli(argv)
    if trainer is None:  # a finished run, reported and skipped
        end_processes()
        return 0
    if trainer.accelerator.is_main_process:
        rewards = [e["reward"] for e in trainer.state.log_history if "reward" in e]
        if rewards:
            k = min(20, len(rewards))
            first, last = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
            print(f"mean training reward: first {k} steps {first:.3f}, last {k} steps {last:.3f}")
        print(f"GRPO policy saved to {trainer.args.output_dir}")
    end_processes()
    return 0
