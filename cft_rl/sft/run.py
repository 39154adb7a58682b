"""Running selective SFT: :func:`train_sft` (one run, or the SFTKey schedule) and ``cft-rl sft``.

The trainer and its config are :mod:`cft_rl.sft.trainer`; this module runs them: it trains one strategy,
or SFTKey's two stages in turn, saves the checkpoint and ``selection.json``, and marks the run finished
(:mod:`cft_rl.resume`). :func:`main` is the command line: TRL's parser over the recipe and the flags.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from cft_rl.models import load_tokenizer
from cft_rl.sft import SelectionError
from cft_rl.sft.trainer import SelectiveSFTConfig, SelectiveSFTTrainer

# --- the Python API: one run, or the SFTKey schedule -----------------------------------------------


@dataclass
class SFTResult:
    """Where the checkpoint went, each stage's selection summary, and each stage's train metrics."""

    output_dir: Path
    selection: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


def train_sft(
    args: SelectiveSFTConfig, model, train_dataset, eval_dataset=None, tokenizer=None, peft_config=None
) -> SFTResult:
    """Train ``model`` (a path or a model) with ``args``; save to ``args.output_dir``.

    ``peft_config`` (a peft ``LoraConfig``) trains a LoRA adapter instead of the full model. For
    ``strategy="sftkey"`` the first stage (``full``) is saved to ``output_dir/stage1`` and the second
    (``answer``) continues from it, adapter included, into ``output_dir``.
    """
    if args.strategy != "sftkey":
        trainer = _train_stage(args, model, train_dataset, eval_dataset, tokenizer, peft_config)
        return _finish(args, {args.strategy: trainer})
    # A resume point names a checkpoint of the final output_dir, i.e. of stage 2: stage 1 reruns.
    stage1 = dataclasses.replace(
        args, strategy="full", output_dir=str(Path(args.output_dir) / "stage1"), resume_from_checkpoint=None
    )
    first = _train_stage(stage1, model, train_dataset, eval_dataset, tokenizer, peft_config)
    stage2 = dataclasses.replace(
        args,
        strategy="answer",
        num_train_epochs=args.sftkey_stage2_epochs,
        max_steps=args.sftkey_stage2_max_steps,
        learning_rate=args.sftkey_stage2_learning_rate or args.learning_rate,
    )
    # The stage-1 model (a PeftModel under LoRA) goes on training: no second adapter is made.
    second = _train_stage(stage2, first.model, train_dataset, eval_dataset, first.processing_class, None)
    return _finish(args, {"full": first, "answer": second})


def _train_stage(args, model, train_dataset, eval_dataset, tokenizer, peft_config) -> SelectiveSFTTrainer:
    trainer = SelectiveSFTTrainer(
        model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    return trainer


def _finish(args: SelectiveSFTConfig, trainers: dict) -> SFTResult:
    result = SFTResult(Path(args.output_dir))
    for stage, trainer in trainers.items():
        result.selection[stage] = trainer.selection
        result.metrics[stage] = [entry for entry in trainer.state.log_history if "loss" in entry]
    if trainers[next(iter(trainers))].accelerator.is_main_process:
        (result.output_dir / "selection.json").write_text(json.dumps(result.selection, indent=2))
    # Last: output_dir/trainer_state.json marks the run finished (cft_rl.resume), and holds its log.
    list(trainers.values())[-1].save_state()
    return result


# --- command line ----------------------------------------------------------------------------------


def load_sft_dataset(name: str, split: str):
    """A split of an ``annotate --out`` folder, a ``save_to_disk`` folder, a JSON/Parquet file or a Hub id.

    The columns are kept as they are: unlike :func:`cft_rl.data.datasets.load_math_dataset`, the annotation
    columns (``critical_spans``) must survive.
    """
    import datasets

    path = Path(name).expanduser()
    if (path / "dataset").is_dir() and (path / "summary.json").is_file():
        path = path / "dataset"  # the folder `cft-rl annotate --out` wrote
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise SelectionError(
                    f"{path} has splits {sorted(loaded)}, not {split!r}; set dataset_train_split"
                )
            loaded = loaded[split]
        return loaded
    if path.is_file():
        kind = "parquet" if path.suffix == ".parquet" else "json"
        return datasets.load_dataset(kind, data_files=str(path), split="train")
    return datasets.load_dataset(name, split=split)


def main(argv: list[str] | None = None) -> int:
    """``cft-rl sft --config recipe.yaml [--field value ...]``: TRL-style flags override the YAML.

    A rerun into an ``output_dir`` that holds a run resumes or skips it (:mod:`cft_rl.resume`)."""
    from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

    from cft_rl.models import model_init_kwargs
    from cft_rl.resume import OutputDirArguments, end_processes, prepare_output_dir

    parser = TrlParser((ScriptArguments, SelectiveSFTConfig, ModelConfig, OutputDirArguments))
    script, args, model_args, run_args = parser.parse_args_and_config(argv)
    if not model_args.model_name_or_path or not script.dataset_name:
        raise SelectionError("set model_name_or_path and dataset_name (in the recipe or as --flags)")
    args.model_init_kwargs = model_init_kwargs(args, model_args)
    # Resolved and its tokenizer loaded before anything else: a wrong model name fails at once.
    tokenizer = load_tokenizer(
        model_args.model_name_or_path,
        revision=args.model_init_kwargs.get("revision"),
        trust_remote_code=args.model_init_kwargs.get("trust_remote_code", False),
    )
    if not prepare_output_dir(args, run_args.overwrite_output_dir):
        return 0
    train = load_sft_dataset(script.dataset_name, script.dataset_train_split)
    evaluate = args.eval_strategy != "no"
    eval_dataset = load_sft_dataset(script.dataset_name, script.dataset_test_split) if evaluate else None
    result = train_sft(
        args, model_args.model_name_or_path, train, eval_dataset, tokenizer, get_peft_config(model_args)
    )
    print(f"SFT ({args.strategy}) checkpoint saved to {result.output_dir}")
    for stage, summary in result.selection.items():
        print(f"{stage}: {json.dumps(summary.get('train', {}))}")
    end_processes()
    return 0
