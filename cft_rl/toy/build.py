"""Build the toy world: problems, a tokenizer and a tiny pretrained Qwen2 base model, in one folder.

The folder loads like any Hub model (``AutoModelForCausalLM/AutoTokenizer.from_pretrained(DIR)``) and
also holds the task's splits (``DIR/data``, a ``DatasetDict`` in the benchmark record shape), so every
later stage treats the toy exactly like a real model and dataset.

How the model is pretrained (a plain PyTorch loop) is :mod:`cft_rl.toy.pretrain`; what it is trained on
(solution tokens only, few of the hard problems, a few swapped words) is :mod:`cft_rl.toy.corpus`.

The default build ships inside the package (``EMBEDDED``): see :func:`embedded_build`.

Builds are deterministic in their settings, atomic (built in a temporary folder, then renamed, so a
killed build leaves nothing half-written), resumable (the pretraining's checkpoint, :mod:`~cft_rl.toy.pretrain`)
and cached (same settings: return at once).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import datasets

from cft_rl.cpu import cpu_float_math
from cft_rl.data.datasets import FEATURES
from cft_rl.toy.config import ToyBuildConfig
from cft_rl.toy.corpus import pretraining_corpus, pretraining_problems
from cft_rl.toy.pretrain import checkpoint_path, make_model, pretrain_loop
from cft_rl.toy.task import generate_splits, to_records
from cft_rl.toy.tokenizer import load_tokenizer, train_tokenizer

logger = logging.getLogger(__name__)

MANIFEST = "toy_manifest.json"


# ---------------------------------------------------------------------------------------------------
# Presets, and the base model shipped inside the package
# ---------------------------------------------------------------------------------------------------
# Why ship a model at all: the default toy base model comes out of tens of minutes of CPU pretraining, and
# its float rounding depends on the CPU: the same settings gave 26% greedy accuracy on one machine and 48%
# on another when the build sat near an accuracy cliff. The default preset's build is therefore embedded
# in the package (``cft_rl/toy/embedded/default``, about 4 MB), and building the default settings copies
# it instead of training. Every machine then starts the demo and the experiment from the same weights.
#
# The builder is kept, and is the only way the embedded folder is made::
#
#     cft-rl toy build --preset default --rebuild --out /tmp/default   # trains from scratch
#     rm -rf cft_rl/toy/embedded/default && cp -r /tmp/default cft_rl/toy/embedded/default
#
# A test checks that the embedded manifest's settings key is the default preset's key, so a change to the
# defaults, the task or the build procedure (``cft_rl.toy.config.BUILD_VERSION``) cannot ship a stale model.

EMBEDDED = Path(__file__).parent / "embedded"

# name -> settings. "default" is the demo's (and the embedded) base model; "tiny" builds in seconds, for tests.
PRESETS: dict[str, Callable[[], ToyBuildConfig]] = {"default": ToyBuildConfig, "tiny": ToyBuildConfig.tiny}


def preset(name: str) -> ToyBuildConfig:
    """The settings of preset ``name``; an unknown name is an error listing the presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown toy preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


def embedded_build(config: ToyBuildConfig) -> Path | None:
    """The embedded build made with exactly these settings, or None."""
    for folder in sorted(EMBEDDED.glob("*")) if EMBEDDED.is_dir() else []:
        manifest = folder / MANIFEST
        if manifest.is_file() and json.loads(manifest.read_text()).get("key") == config.key():
            return folder
    return None


def is_built(out_dir: str | Path, config: ToyBuildConfig) -> bool:
    manifest = Path(out_dir) / MANIFEST
    return manifest.is_file() and json.loads(manifest.read_text()).get("key") == config.key()


def build_toy(
    out_dir: str | Path,
    config: ToyBuildConfig = ToyBuildConfig(),
    progress: bool = True,
    rebuild: bool = False,
    at_steps: dict | None = None,
) -> Path:
    """Build (or reuse) the toy world in ``out_dir``; returns the folder.

    Settings that match an embedded build (``EMBEDDED``) copy it, unless ``rebuild``:
    then the model is pretrained from scratch, as the embedded one was. ``at_steps`` (step -> function
    of the model and tokenizer) watches a from-scratch run as :func:`~cft_rl.toy.pretrain.pretrain_loop` describes;
    what the functions do (say, measure accuracy) leaves the saved model as it would be without them."""
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
    tokenizer, corpus = prepare_world(tmp, config)
    # A watched run (``at_steps``) keeps its measurements in memory, which a resume would lose.
    checkpoint = None if at_steps else checkpoint_path(out, config)
    model = make_model(config, tokenizer)
    model = _pretrain(model, tokenizer, corpus, config, progress, at_steps, checkpoint)
    save_model(tmp, model, tokenizer, config, time.perf_counter() - start)
    return _replace(tmp, out, checkpoint)


def world_problems(config: ToyBuildConfig) -> dict:
    """The build's problems by split (``Problem`` objects, which know more than the saved records: for
    instance whether a problem is ``hard``), regenerated from its settings."""
    sizes = {
        "pretrain": config.n_pretrain,
        "train": config.n_train,
        "validation": config.n_validation,
        "test": config.n_test,
    }
    return generate_splits(sizes, seed=config.seed, cfg=config.task)


def prepare_world(folder: Path, config: ToyBuildConfig):
    """Write the task's splits into ``folder``; returns the trained tokenizer and the pretraining corpus."""
    splits = world_problems(config)
    _save_datasets(folder / "data", splits, config)
    corpus = pretraining_corpus(pretraining_problems(splits["pretrain"], config.pretrain_hard_share), config)
    tokenizer = train_tokenizer([p + c for p, c in corpus[:4000]], vocab_size=config.vocab_size)
    return tokenizer, corpus


def save_model(folder: Path, model, tokenizer, config: ToyBuildConfig, seconds: float) -> None:
    """The model, its tokenizer and the manifest (written last: a folder with it is a finished build)."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    manifest = {
        "key": config.key(),
        "config": dataclasses.asdict(config),
        "build_seconds": round(seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def build_lengths(folders: dict[int, str | Path], config: ToyBuildConfig, progress: bool = True) -> None:
    """Build ``config`` at each step count of ``folders`` (steps -> folder) from one run of the longest.

    Under a ``"constant"`` schedule a build of N steps is exactly the first N steps of a longer one
    (same data order, same learning rates, same average), so one run saves every length as it passes
    it: the same weights as separate builds, for the cost of the longest. Lengths already built are
    skipped; each folder is written atomically, like :func:`build_toy`'s."""
    if config.lr_schedule != "constant":
        raise ValueError(
            f"build_lengths needs lr_schedule='constant' (got {config.lr_schedule!r}): under a schedule "
            "that depends on the planned steps, a shorter build is not a prefix of a longer one"
        )
    todo = {n: Path(f) for n, f in folders.items() if not is_built(f, dataclasses.replace(config, steps=n))}
    if not todo:
        return
    longest = dataclasses.replace(config, steps=max(todo))
    world = Path(todo[max(todo)]).with_name(f".{longest.key()}.lengths")
    shutil.rmtree(world, ignore_errors=True)
    world.mkdir(parents=True)
    start = time.perf_counter()
    tokenizer, corpus = prepare_world(world, longest)

    def saver(steps: int, out: Path):
        def save(model, tokenizer):
            tmp = out.with_name(f".{out.name}.building")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(world / "data", tmp / "data")
            length = dataclasses.replace(config, steps=steps)
            save_model(tmp, model, tokenizer, length, time.perf_counter() - start)
            _replace(tmp, out)

        return save

    at_steps = {steps: saver(steps, out) for steps, out in todo.items()}
    checkpoint = checkpoint_path(todo[max(todo)], longest)
    _pretrain(make_model(longest, tokenizer), tokenizer, corpus, longest, progress, at_steps, checkpoint)
    shutil.rmtree(world)
    checkpoint.unlink(missing_ok=True)


def _replace(tmp: Path, out: Path, checkpoint: Path | None = None) -> Path:
    """Move the finished build into place (a killed build never leaves a half-written ``out``), then
    drop the checkpoint it could have resumed from."""
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
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


def _pretrain(model, tokenizer, corpus, config: ToyBuildConfig, progress: bool, at_steps=None,
              checkpoint=None):  # fmt: skip
    with cpu_float_math(config.threads):
        return pretrain_loop(model, tokenizer, corpus, config, progress, at_steps, checkpoint)


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
