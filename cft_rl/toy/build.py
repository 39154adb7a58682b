"""Build the toy world: problems, a tokenizer and a tiny pretrained Qwen2 base model, in one folder.

The folder loads like any Hub model (``AutoModelForCausalLM/AutoTokenizer.from_pretrained(DIR)``) and
also holds the task's splits (``DIR/data``, a ``DatasetDict`` in the benchmark record shape), so every
later stage treats the toy exactly like a real model and dataset.

Pretraining here is a plain PyTorch loop, not a TRL trainer: this is the "base model" that exists
before our method starts, and a lean loop is what fits the 5-minute CPU budget. Loss is on the
solution tokens only: the random numbers in a question are noise to a predictor, and the tiny model's
capacity is better spent on the arithmetic.

Builds are deterministic in their settings, atomic (built in a temporary folder, then renamed, so a
killed build leaves nothing half-written) and cached (same settings: return at once).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm

from cft_rl.cpu import cpu_float_math
from cft_rl.data.datasets import FEATURES
from cft_rl.data.prompts import build_prompt
from cft_rl.toy.task import ToyTaskConfig, generate_splits, sample_solutions, to_records
from cft_rl.toy.tokenizer import CHAT_TEMPLATE, EOS_TOKEN, load_tokenizer, train_tokenizer

logger = logging.getLogger(__name__)

MANIFEST = "toy_manifest.json"
BUILD_VERSION = 2  # bump when the build procedure changes what a given config produces


@dataclass(frozen=True)
class ToyBuildConfig:
    """Everything that decides a toy build. Each field is part of the cache key.

    Args:
        seed: drives problem generation, model init and data order.
        task: the problem generator's settings.
        n_pretrain / n_train / n_validation / n_test: problems per split (disjoint by construction).
        solutions_per_problem: pretraining texts per pretraining problem, each in its own style.
        vocab_size: BPE vocabulary, including 256 byte tokens and 3 special tokens.
        hidden_size / num_layers / num_heads / num_kv_heads / intermediate_size: the Qwen2 shape.
        steps / batch_size / learning_rate / warmup_steps: pretraining; cosine decay to 10%.
        noise_prob: chance that pretraining swaps a word or format token of a solution for a random
            word or format token, with no loss on the swapped token. The model learns to carry on after
            an odd word, as web-trained models do; without it a tiny model derails after any perturbation,
            and most of its tokens come out "critical". Digits and operators are never swapped: a wrong
            number must still change the answer.
        threads: torch CPU threads (fixed, because results depend on the reduction order).
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
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    steps: int = 740
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    noise_prob: float = 0.05
    threads: int = 2

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
        blob = json.dumps({"version": BUILD_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_keys(cls, values: dict, what: str) -> None:
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; valid settings: {sorted(valid)}")


def is_built(out_dir: str | Path, config: ToyBuildConfig) -> bool:
    manifest = Path(out_dir) / MANIFEST
    return manifest.is_file() and json.loads(manifest.read_text()).get("key") == config.key()


def build_toy(
    out_dir: str | Path, config: ToyBuildConfig = ToyBuildConfig(), progress: bool = True, rebuild: bool = False
) -> Path:
    """Build (or reuse) the toy world in ``out_dir``; returns the folder.

    Settings that match an embedded build (:mod:`cft_rl.toy.presets`) copy it, unless ``rebuild``:
    then the model is pretrained from scratch, as the embedded one was."""
    from cft_rl.toy.presets import embedded_build

    out = Path(out_dir)
    if is_built(out, config) and not rebuild:
        logger.info("toy world in %s is up to date (key %s)", out, config.key())
        return out
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise FileExistsError(f"{out} exists and is not a toy build; choose an empty or new --out folder")
    tmp = out.with_name(f".{out.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)  # debris of a killed build
    embedded = None if rebuild else embedded_build(config)
    if embedded is not None:
        logger.info("copying the embedded toy build %s (key %s)", embedded.name, config.key())
        shutil.copytree(embedded, tmp)
        return _replace(tmp, out)
    tmp.mkdir(parents=True)
    start = time.perf_counter()
    splits = generate_splits(
        {
            "pretrain": config.n_pretrain,
            "train": config.n_train,
            "validation": config.n_validation,
            "test": config.n_test,
        },
        seed=config.seed,
        cfg=config.task,
    )
    _save_datasets(tmp / "data", splits, config)
    corpus = _pretraining_corpus(splits["pretrain"], config)

    tokenizer = train_tokenizer([p + c for p, c in corpus[:4000]], vocab_size=config.vocab_size)
    model = _pretrain(_make_model(config, tokenizer), tokenizer, corpus, config, progress)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    manifest = {
        "key": config.key(),
        "config": dataclasses.asdict(config),
        "build_seconds": round(time.perf_counter() - start, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return _replace(tmp, out)


def _replace(tmp: Path, out: Path) -> Path:
    """Move the finished build into place: a killed build never leaves a half-written ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _save_datasets(path: Path, splits: dict, config: ToyBuildConfig) -> None:

    dd = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_list(
                to_records(problems, name, config.seed, config.task), features=FEATURES
            )
            for name, problems in splits.items()
            if name != "pretrain"
        }
    )
    dd.save_to_disk(str(path))


def _pretraining_corpus(problems: list, config: ToyBuildConfig) -> list[tuple[str, str]]:
    """(chat prompt, solution + end of turn) pairs, several styles per problem."""
    from jinja2 import Template

    template = Template(CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", ""))
    pairs = []
    for problem in problems:
        prompt = template.render(messages=build_prompt(problem.question), add_generation_prompt=True)
        for solution in sample_solutions(problem, config.solutions_per_problem, config.seed, config.task):
            pairs.append((prompt, solution + EOS_TOKEN))
    random.Random(config.seed).shuffle(pairs)
    return pairs


def _make_model(config: ToyBuildConfig, tokenizer):
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(config.seed)
    model_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(model_config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    return model


def swap_tokens(ids, labels, swappable, prob: float, generator):
    """Swap each label-carrying token whose id is ``swappable`` with chance ``prob`` for a random
    swappable id, and drop the swapped positions from the loss; returns new ``(ids, labels)``.

    ``swappable`` is a bool tensor over the vocabulary. The tokens after a swap keep their labels: that
    is what teaches the model to continue the solution past an odd token.
    """
    pool = swappable.nonzero().squeeze(1)
    eligible = (labels != -100) & swappable[ids]
    hit = eligible & (torch.rand(ids.shape, generator=generator) < prob)
    replacement = pool[torch.randint(len(pool), ids.shape, generator=generator)]
    return torch.where(hit, replacement, ids), torch.where(hit, torch.full_like(labels, -100), labels)


def _swappable(tokenizer) -> torch.Tensor:
    """Word and format tokens, special tokens excluded: the tokens a solution may swap."""
    from cft_rl.token_classes import ENTROPY_CLASSES, token_class_table

    table = token_class_table(tokenizer)
    swappable = table != ENTROPY_CLASSES.index("numeric")
    swappable[tokenizer.all_special_ids] = False
    return swappable


def _batches(tokenizer, corpus: list[tuple[str, str]], config: ToyBuildConfig):
    """Length-bucketed batches of (input_ids, labels): labels only on solution tokens, -100 elsewhere,
    with ``config.noise_prob`` of the solution's word and format tokens swapped (:func:`swap_tokens`)."""
    batch_size = config.batch_size
    prompts = tokenizer([p for p, _ in corpus], add_special_tokens=False)["input_ids"]
    completions = tokenizer([c for _, c in corpus], add_special_tokens=False)["input_ids"]
    rows = [(p + c, [-100] * len(p) + c) for p, c in zip(prompts, completions, strict=True)]
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    swappable = _swappable(tokenizer)
    while True:  # epochs: shuffle, sort within chunks of 50 batches to cut padding, shuffle the batches
        rng.shuffle(rows)
        chunk = batch_size * 50
        batches = []
        for i in range(0, len(rows), chunk):
            part = sorted(rows[i : i + chunk], key=lambda r: len(r[0]))
            batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
        rng.shuffle(batches)
        for batch in batches:
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id)
            labels = torch.full((len(batch), width), -100)
            for k, (x, y) in enumerate(batch):
                ids[k, : len(x)], labels[k, : len(y)] = torch.tensor(x), torch.tensor(y)
            if config.noise_prob > 0:
                ids, labels = swap_tokens(ids, labels, swappable, config.noise_prob, generator)
            yield ids, labels


def _pretrain(model, tokenizer, corpus, config: ToyBuildConfig, progress: bool):
    with cpu_float_math(config.threads):
        return _pretrain_loop(model, tokenizer, corpus, config, progress)


def _pretrain_loop(model, tokenizer, corpus, config: ToyBuildConfig, progress: bool):
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, betas=(0.9, 0.95), weight_decay=0.01
    )
    model.train()
    batches = _batches(tokenizer, corpus, config)
    bar = tqdm(range(config.steps), desc="pretrain toy model", disable=not progress)
    for step in bar:
        warm = min(1.0, (step + 1) / config.warmup_steps)
        cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * warm * cosine
        ids, labels = next(batches)
        # Batches are right-padded, so under causal attention no real token ever sees a pad: no mask is
        # needed, and without one SDPA takes its fused causal path (about 1.5x faster here). Pads carry
        # label -100, so they add nothing to the loss.
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return model


def load_toy(path: str | Path):
    """``(model, tokenizer, DatasetDict)`` of a built toy world, loaded the way users load Hub models."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(
            f"{path} is not a toy build (no {MANIFEST}); run `cft-rl toy build --out {path}`"
        )
    model = AutoModelForCausalLM.from_pretrained(path)
    return model, load_tokenizer(path), datasets.load_from_disk(str(path / "data"))


def main(argv: list[str] | None = None) -> int:
    """``cft-rl toy build --out DIR [--preset NAME] [--rebuild] [--field value] [--set key=value ...]``:
    every ``ToyBuildConfig`` field is a flag (``--task`` takes a YAML mapping) on top of the preset's
    settings (``default``; ``--tiny`` is ``--preset tiny``, the seconds-long variant the tests use)."""
    import sys

    import yaml

    from cft_rl.config_types import config_from_flags, config_parser, parse_flags, unknown_key
    from cft_rl.toy.presets import PRESETS, preset

    argv = sys.argv[1:] if argv is None else list(argv)
    description = "build (or reuse) the toy task, tokenizer and base model in --out"
    parser = config_parser(ToyBuildConfig, "cft-rl toy build", description)
    parser.add_argument("--out", required=True, help="folder to build into; loads with from_pretrained(DIR)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override settings")
    parser.add_argument("--preset", default="default", choices=list(PRESETS), help="settings to start from")
    parser.add_argument("--tiny", action="store_true", help="same as --preset tiny")
    parser.add_argument(
        "--rebuild", action="store_true", help="pretrain from scratch even if an embedded build matches"
    )
    known, _ = parser.parse_known_args(argv)
    base = dataclasses.asdict(preset("tiny" if known.tiny else known.preset))
    args = parse_flags(parser, ToyBuildConfig, argv, base=base)
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        if problem := unknown_key([key], {f.name for f in dataclasses.fields(ToyBuildConfig)}, "", "--set"):
            raise ValueError(problem)
        setattr(args, key, yaml.safe_load(value))
    config = config_from_flags(ToyBuildConfig, args)
    out = build_toy(args.out, config, rebuild=args.rebuild)
    print(f"toy world ready in {out} (key {config.key()})")
    return 0
