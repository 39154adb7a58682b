"""The pipeline recipe: one YAML file for the whole experiment, checked key by key, turned into stages.

A recipe has a few top-level settings and one section per stage kind::

    output_dir: outputs/pipeline/toy
    toy: {steps: 300}                 # optional: build the toy world and use it as model and data
    model_name_or_path: Qwen/...      # the base model (default: the toy build)
    dataset_name: gsm8k_train         # annotation and RL prompts (default: the toy build's data)
    launch: accelerate launch ...     # optional: run annotate/sft/grpo jobs under this launcher
    threads: auto                     # optional: torch CPU threads per stage, or auto (free cores)
    lanes: 2                          # optional: stages run at once, each lane a worker process
    annotate: {...}                   # AnnotateConfig fields
    sft: {arms: [full, critical], ...}   # SelectiveSFTConfig/ModelConfig fields shared by every arm
    grpo: {seeds: [0, 1, 2], ...}     # GRPORunConfig/ModelConfig fields shared by every arm and seed
    eval: {benchmarks: [...], ...}    # EvalConfig fields
    compare: {...}                    # CompareConfig fields

Why check keys here rather than let each job fail: a typo in the GRPO section would otherwise surface
only after annotation and SFT have run for hours. Every key of every section, and its value's type,
is checked against the config class that will receive it before anything runs (or moves), and the
error names the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from cft_rl.pipeline.sections import (
    EVAL_MODELS,
    PIPELINE_KEYS,
    REQUIRED_ARMS,
    SFT_SEED_STRIDE,
    pipeline_keys,
)

SECTIONS = ("toy", "annotate", "sft", "grpo", "eval", "compare")
TOP_LEVEL = ("output_dir", "model_name_or_path", "dataset_name", "dataset_train_split", "launch")
TOP_LEVEL += ("threads", "lanes", *SECTIONS)
# Keys the pipeline sets itself: each stage's paths, and the per-arm/per-seed fields.
RESERVED = {
    "annotate": {"model", "dataset", "out", "num_shards", "shard_index"},
    "sft": {"output_dir", "model_name_or_path", "dataset_name", "strategy"},
    "grpo": {"output_dir", "model_name_or_path", "dataset_name", "seed"},
    "eval": {"model", "out"},
    "compare": {"runs", "labels", "out"},
}


# Settings that do not change a stage's results; left out of its key so changing them reruns nothing.
UNKEYED = {
    "launch",
    "report_to",
    "disable_tqdm",
    "logging_dir",
    "dataloader_num_workers",
    "resume_from_checkpoint",
    "batch_size",  # annotate/eval: prompts per forward pass, not results
    "eager_alternatives",
    "wait_for_shards",
    "progress",
    "overwrite",
    "data_root",
    "push_to_hub",
    "vllm_gpu_memory_utilization",
}


class RecipeError(ValueError):
    """A recipe that cannot run: the message names the key or value and says how to fix it."""


def _config_classes(section: str) -> tuple[type, ...]:
    """The dataclasses of ``section``'s keys: the pipeline's own, then the job's config classes."""
    own = (PIPELINE_KEYS[section],) if section in PIPELINE_KEYS else ()
    return own + _job_classes(section)


def _job_classes(section: str) -> tuple[type, ...]:
    """The config classes that receive ``section``'s keys (heavy imports happen only here)."""
    if section == "toy":
        from cft_rl.toy.build import ToyBuildConfig

        return (ToyBuildConfig,)
    if section == "annotate":
        from cft_rl.annotate.job import AnnotateConfig

        return (AnnotateConfig,)
    if section in ("sft", "grpo"):
        from trl import ModelConfig, ScriptArguments

        if section == "sft":
            from cft_rl.sft.trainer import SelectiveSFTConfig as Config
        else:
            from cft_rl.grpo.run import GRPORunConfig as Config
        return (ScriptArguments, Config, ModelConfig)
    if section == "eval":
        from cft_rl.eval.job import EvalConfig

        return (EvalConfig,)
    from cft_rl.compare.analysis import CompareConfig

    return (CompareConfig,)


def section_keys(section: str) -> set[str]:
    """Every key the recipe's ``section`` accepts."""
    valid = {f.name for cls in _config_classes(section) for f in dataclasses.fields(cls)}
    return valid - RESERVED.get(section, set())


def _unknown(keys, valid, where: str) -> None:
    from cft_rl.config_types import unknown_key

    if problem := unknown_key(keys, valid, where):
        raise RecipeError(problem)


def _reserved(section: str, values: dict) -> None:
    for key in sorted(RESERVED.get(section, set()) & set(values)):
        what = "the arm's strategy: list it under sft.arms" if key == "strategy" else "set by the pipeline"
        raise RecipeError(f"{section}.{key} is {what}; remove it from the recipe")


def _check_types(section: str | None, values: dict, where: str) -> None:
    """Every value against its config field's type (None: the recipe's own top-level fields), so a
    bad value fails here, before any stage runs or any folder moves, rather than when its job starts.
    TRL's configs are parsed from the YAML the pipeline writes, so text there is read as a flag; the
    pipeline's own keys are read as they are (the text "false" would be true), so they are not."""
    from cft_rl.config_types import check_values

    classes = (Recipe,) if section is None else _config_classes(section)
    own = pipeline_keys(section)
    try:
        check_values({k: v for k, v in values.items() if k in own}, classes, where)
        rest = {k: v for k, v in values.items() if k not in own}
        check_values(rest, classes, where, from_text=section in ("sft", "grpo"))
    except ValueError as exc:
        raise RecipeError(f"{exc}; fix it in the recipe or the --set value") from exc


@dataclass
class Recipe:
    """A checked recipe. Sections are plain dicts of the fields their config classes take.

    Parameters:
        threads (`int`, `"auto"` or `None`, *optional*, defaults to `None`): torch CPU threads of the
            annotate, sft, grpo and eval stages, their launcher's processes together. ``auto``: fitted to
            the cores free when each stage starts (:mod:`cft_rl.pipeline.threads`), so that a busy
            machine slows a stage gracefully rather than several times over. ``None``: torch's default
            (every core). Not part of any stage key; recorded in each stage's manifest.
        lanes (`int`, *optional*, defaults to `1`): stages run at once, each lane a process with an equal
            share of the threads (:mod:`cft_rl.pipeline.lanes`); 1: one after another, in this process.
            For CPU runs of small models; on a GPU leave 1, or the lanes share it. Not in any stage key.
    """

    output_dir: str
    model_name_or_path: str | None = None
    dataset_name: str | None = None
    dataset_train_split: str = "train"
    launch: str | None = None
    threads: int | Literal["auto"] | None = None
    lanes: int = 1
    toy: dict | None = None
    annotate: dict = field(default_factory=dict)
    sft: dict = field(default_factory=dict)
    grpo: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    compare: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict) -> Recipe:
        values = dict(values or {})
        _unknown(values, TOP_LEVEL, "")
        _check_types(None, values, "")
        if not values.get("output_dir"):
            raise RecipeError("the recipe needs output_dir: the folder every stage writes under")
        if isinstance(values.get("threads"), int) and values["threads"] < 1:
            raise RecipeError(f"threads = {values['threads']}: give a count of at least 1, or auto")
        if values.get("lanes", 1) < 1:
            raise RecipeError(f"lanes = {values['lanes']}: give at least 1 (1 runs one stage at a time)")
        for section in SECTIONS:
            body = values.get(section)
            if body is None:
                continue
            if not isinstance(body, dict):
                raise RecipeError(f"{section} must be a mapping of settings, got {type(body).__name__}")
            _reserved(section, body)
            valid = section_keys(section)
            _unknown(body, valid, f"{section}.")
            _check_types(section, body, f"{section}.")
            if section == "toy":
                from cft_rl.toy.build import ToyBuildConfig

                try:  # checks the nested task settings too
                    ToyBuildConfig.from_dict(body)
                except (TypeError, ValueError) as exc:
                    raise RecipeError(f"toy: {exc}") from exc
        recipe = cls(**values)
        if recipe.toy is None and not (recipe.model_name_or_path and recipe.dataset_name):
            raise RecipeError(
                "set model_name_or_path and dataset_name, or add a toy: section to build the toy world"
            )
        recipe.arms()  # checks the arms
        recipe.seeds()
        _unknown(recipe.eval.get("models", EVAL_MODELS), EVAL_MODELS, "eval.models entry ")
        return recipe

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> Recipe:
        """Read a YAML recipe and apply ``section.key=value`` overrides (values parsed as YAML)."""
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"no recipe at {path}; see recipes/*/pipeline.yaml for examples")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise RecipeError(f"{path} must hold a mapping of settings")
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep:
                raise RecipeError(f"--set expects section.key=value, got {item!r}")
            *parents, leaf = key.split(".")
            node = values
            for part in parents:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise RecipeError(f"--set {key}: {part} is not a section")
            node[leaf] = yaml.safe_load(raw)
        return cls.from_dict(values)

    def arms(self) -> dict[str, dict]:
        """{arm name: SFT overrides incl. ``strategy``}. An entry is a strategy name, or a mapping
        with ``name``, ``strategy`` and any SFT field (e.g. ``{name: dft, strategy: full, loss_type: dft}``)."""
        from cft_rl.sft.selection import STRATEGIES

        arms = {}
        valid = section_keys("sft") - pipeline_keys("sft") | {"name", "strategy", "launch"}
        for entry in self.sft.get("arms", list(REQUIRED_ARMS)):
            entry = {"name": entry, "strategy": entry} if isinstance(entry, str) else dict(entry)
            if "seed_per_grpo_seed" in entry:
                raise RecipeError("sft.seed_per_grpo_seed applies to every arm: set it in sft, not in an arm")
            _unknown(entry, valid, "sft.arms entry ")
            _check_types("sft", entry, f"sft.arms entry {entry.get('name', entry.get('strategy'))!r}: ")
            name = entry.pop("name", entry.get("strategy"))
            entry.setdefault("strategy", name)
            if entry["strategy"] not in (*STRATEGIES, "sftkey"):
                raise RecipeError(f"sft arm {name!r}: unknown strategy {entry['strategy']!r}")
            if name in arms:
                raise RecipeError(f"sft arm {name!r} is listed twice; give one of them another name")
            arms[str(name)] = entry
        missing = [a for a in REQUIRED_ARMS if a not in arms]
        if missing:
            raise RecipeError(f"sft.arms must include {missing}: the comparison is CFT against full SFT")
        return arms

    def seeds(self) -> list[int]:
        seeds = self.grpo.get("seeds", [0])
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise RecipeError(f"grpo.seeds must be a non-empty list of integers, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise RecipeError(f"grpo.seeds lists a seed twice: {seeds}")
        return seeds


# --- stages ----------------------------------------------------------------------------------------


@dataclass
class Stage:
    """One job of the plan. ``name`` is also its folder under ``output_dir``."""

    name: str
    kind: str  # toy | annotate | sft | grpo | eval | compare
    settings: dict  # what the job runs with, input paths included
    inputs: list[str]  # upstream stage names
    launch: str | None = None
    key: str = ""  # hash of the keyed settings and the inputs' keys


def stage_key(stage: Stage, keys: dict[str, str], root: str) -> str:
    """What decides a stage's results: its settings (minus :data:`UNKEYED`) and its inputs' keys.

    The root folder is masked so that moving a whole pipeline folder does not rerun it."""
    settings = {k: v for k, v in stage.settings.items() if k not in UNKEYED}
    keyed = {"kind": stage.kind, "settings": settings, "inputs": {n: keys[n] for n in stage.inputs}}
    if stage.kind == "toy":
        # The recipe names a preset's changes, not the preset: ``toy: {}`` stays the same text when the
        # default preset (and its embedded model) changes, so the build's own key decides instead.
        from cft_rl.toy.build import ToyBuildConfig

        keyed["build"] = ToyBuildConfig.from_dict(settings).key()
    blob = json.dumps(
        keyed,
        sort_keys=True,
        default=str,
    ).replace(root, "$OUTPUT_DIR")
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _sft_seed(recipe: Recipe, overrides: dict) -> int:
    """The arm's SFT seed: its own ``seed``, else the shared ``sft.seed``, else the config's default."""
    from cft_rl.sft.trainer import SelectiveSFTConfig

    default = next(f.default for f in dataclasses.fields(SelectiveSFTConfig) if f.name == "seed")
    return int(overrides.get("seed", recipe.sft.get("seed", default)))  # int: "43" passed as a flag


def _sft_stage(recipe: Recipe, name: str, overrides: dict, model, seed: int | None = None) -> Stage:
    """One SFT run of an arm into ``name``; ``seed`` replaces the arm's SFT seed when given."""
    root = Path(recipe.output_dir)
    overrides = dict(overrides)
    launch = overrides.pop("launch", recipe.sft.get("launch", recipe.launch))
    sft = {k: v for k, v in recipe.sft.items() if k not in pipeline_keys("sft")}
    sft |= {**overrides, "model_name_or_path": model, "dataset_name": str(root / "annotate")}
    if seed is not None:
        sft["seed"] = seed
    sft["output_dir"] = str(root / name)
    return Stage(name, "sft", sft, ["annotate"], launch)


def _grpo_stage(recipe: Recipe, name: str, seed: int, warm_start: str, data, upstream: list[str]) -> Stage:
    """GRPO run ``name`` at ``seed`` from the SFT stage ``warm_start``."""
    root = Path(recipe.output_dir)
    grpo = {k: v for k, v in recipe.grpo.items() if k not in pipeline_keys("grpo")}
    grpo.setdefault("dataset_train_split", recipe.dataset_train_split)
    grpo |= {"model_name_or_path": str(root / warm_start), "dataset_name": data}
    grpo |= {"seed": seed, "output_dir": str(root / name)}
    return Stage(name, "grpo", grpo, [warm_start, *upstream], recipe.grpo.get("launch", recipe.launch))


def _training_stages(recipe: Recipe, model, data, upstream: list[str]) -> tuple[list[Stage], list]:
    """The SFT arms, then GRPO per seed and arm; and the (arm, GRPO stage name) pairs. With
    ``sft.seed_per_grpo_seed``, each seed's SFT runs come just before its GRPO runs."""
    arms, per_seed = recipe.arms(), recipe.sft.get("seed_per_grpo_seed", False)
    stages = [] if per_seed else [_sft_stage(recipe, f"sft/{arm}", o, model) for arm, o in arms.items()]
    grpo_runs = []
    # Seeds outside, arms inside: a pipeline stopped early still has every arm at the first seeds.
    for seed in recipe.seeds():
        for arm, overrides in arms.items() if per_seed else ():
            sft_seed = _sft_seed(recipe, overrides) + SFT_SEED_STRIDE * seed
            stages.append(_sft_stage(recipe, f"sft/{arm}/seed{seed}", overrides, model, sft_seed))
        for arm in arms:
            name, warm_start = f"grpo/{arm}/seed{seed}", f"sft/{arm}/seed{seed}" if per_seed else f"sft/{arm}"
            stages.append(_grpo_stage(recipe, name, seed, warm_start, data, upstream))
            grpo_runs.append((arm, name))
    return stages, grpo_runs


def plan(recipe: Recipe) -> list[Stage]:
    """The stages in run order, each keyed."""
    root = Path(recipe.output_dir)
    stages: list[Stage] = []
    model, data = recipe.model_name_or_path, recipe.dataset_name
    launch = recipe.launch
    upstream: list[str] = []
    if recipe.toy is not None:
        stages.append(Stage("toy", "toy", dict(recipe.toy), []))
        world = root / "toy" / "world"
        model, data, upstream = model or str(world), data or str(world / "data"), ["toy"]

    annotate = {k: v for k, v in recipe.annotate.items() if k not in pipeline_keys("annotate")}
    annotate |= {"model": model, "dataset": data, "out": str(root / "annotate")}
    annotate.setdefault("split", recipe.dataset_train_split)
    stages.append(Stage("annotate", "annotate", annotate, upstream, recipe.annotate.get("launch", launch)))

    eval_common = {k: v for k, v in recipe.eval.items() if k not in pipeline_keys("eval")}
    if recipe.toy is not None:
        eval_common.setdefault("benchmarks", [str(root / "toy" / "world")])
    which = recipe.eval.get("models", EVAL_MODELS)
    evals = [Stage("eval/base", "eval", {**eval_common, "model": model}, upstream)] if "base" in which else []
    trained, grpo_runs = _training_stages(recipe, model, data, upstream)
    for stage in trained:
        stages.append(stage)
        if stage.kind in which:  # eval/sft/<arm>, eval/grpo/<arm>/seed<s>
            model_dir = stage.settings["output_dir"]
            evals.append(
                Stage(f"eval/{stage.name}", "eval", {**eval_common, "model": model_dir}, [stage.name])
            )
    stages += evals
    compare = {
        **recipe.compare,
        "runs": [str(root / name) for _, name in grpo_runs],
        "labels": [arm for arm, _ in grpo_runs],
        "out": str(root / "compare"),
        "evals": {s.name: str(root / s.name) for s in evals},
    }
    stages.append(Stage("compare", "compare", compare, [n for _, n in grpo_runs] + [s.name for s in evals]))

    keys: dict[str, str] = {}
    for stage in stages:
        stage.settings = {k: v for k, v in stage.settings.items() if v is not None}
        stage.key = keys[stage.name] = stage_key(stage, keys, str(root))
    return stages
