"""Every recipe under recipes/ parses offline into the config classes that will run it.

No model is loaded and nothing is downloaded: the recipes are parsed the way their jobs parse them
(TRL's parser for SFT/GRPO, ``AnnotateConfig.from_dict``, ``Recipe.load`` and ``plan``), and a typo'd
key must fail naming that key. Real-model recipes set ``bf16: true``, which ``TrainingArguments``
refuses on a CPU-only machine, so the parse here overrides bf16/fp16 off and use_cpu on.
"""

import enum
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
CPU_FLAGS = ["--use_cpu", "true", "--bf16", "false", "--fp16", "false"]
OVERRIDDEN = {"use_cpu", "bf16", "fp16"}


def _discover(*patterns: str) -> list[Path]:
    return sorted({p for pattern in patterns for p in RECIPES.glob(pattern)})


SFT_RECIPES = _discover("**/sft*.yaml", "**/sft/*.yaml")
GRPO_RECIPES = _discover("**/grpo*.yaml", "**/grpo/*.yaml")
ANNOTATE_RECIPES = _discover("**/annotate*.yaml")
PIPELINE_RECIPES = _discover("**/pipeline*.yaml", "**/experiment*.yaml")
ACCELERATE_CONFIGS = _discover("accelerate_configs/*.yaml")
MODEL_DIRS = sorted(p.parent for p in RECIPES.glob("*/pipeline.yaml") if p.parent.name != "toy")


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _write(tmp_path: Path, values: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def _trl_parse(path: Path, config_class):
    from trl import ModelConfig, ScriptArguments, TrlParser

    parser = TrlParser((ScriptArguments, config_class, ModelConfig))
    return parser.parse_args_and_config(["--config", str(path), *CPU_FLAGS])


def _sft_parse(path: Path):
    from cft_rl.sft.trainer import SelectiveSFTConfig

    return _trl_parse(path, SelectiveSFTConfig)


def _grpo_parse(path: Path):
    from cft_rl.grpo.run import GRPORunConfig

    return _trl_parse(path, GRPORunConfig)


def _plain(value):
    """A parsed value in the YAML's terms: enums by their value, tuples as lists."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _assert_parsed_like_yaml(values: dict, parsed: tuple) -> None:
    for key, expected in values.items():
        if key in OVERRIDDEN:
            continue
        owners = [obj for obj in parsed if hasattr(obj, key)]
        assert owners, f"{key} reached no config class"
        got = _plain(getattr(owners[0], key))
        if isinstance(expected, list) and isinstance(got, str):  # e.g. lora_target_modules: [x] -> "x"
            got = [got]
        if isinstance(expected, str) and isinstance(got, list):  # report_to: none -> [], x -> [x]
            expected = [] if expected == "none" else [expected]
        assert got == expected, f"{key}: parsed {got!r}, recipe says {expected!r}"


# --- SFT, GRPO, annotate ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", SFT_RECIPES, ids=_ids(SFT_RECIPES))
def test_sft_recipe_parses(path):
    values = _load(path)
    parsed = _sft_parse(path)
    _assert_parsed_like_yaml(values, parsed)
    _, args, model_args = parsed
    assert args.strategy == values.get("strategy", "full")
    assert args.learning_rate == pytest.approx(float(values.get("learning_rate", args.learning_rate)))
    assert model_args.model_name_or_path == values.get("model_name_or_path")


@pytest.mark.parametrize("path", GRPO_RECIPES, ids=_ids(GRPO_RECIPES))
def test_grpo_recipe_parses(path):
    values = _load(path)
    parsed = _grpo_parse(path)
    _assert_parsed_like_yaml(values, parsed)
    _, config, _ = parsed
    assert config.learning_rate == pytest.approx(float(values.get("learning_rate", config.learning_rate)))
    assert config.num_generations == values.get("num_generations", config.num_generations)
    if config.probe_steps:
        assert config.probe_steps % config.logging_steps == 0


@pytest.mark.parametrize("path", ANNOTATE_RECIPES, ids=_ids(ANNOTATE_RECIPES))
def test_annotate_recipe_parses(path, monkeypatch):
    from cft_rl.annotate.job import AnnotateConfig

    for name in ("RANK", "WORLD_SIZE"):  # a launcher's environment would shard the config
        monkeypatch.delenv(name, raising=False)
    values = _load(path)
    config = AnnotateConfig.from_dict(values)
    for key, expected in values.items():
        assert getattr(config, key) == expected, key
    assert (config.num_shards, config.shard_index) == (1, 0)


@pytest.mark.parametrize("model_dir", MODEL_DIRS, ids=_ids(MODEL_DIRS))
def test_model_recipes_chain(model_dir):
    """annotate -> sft -> grpo: each step reads the folder the previous one writes, for one base model."""
    from cft_rl.data.datasets import BENCHMARKS

    annotate, sft, grpo = (_load(model_dir / f"{name}.yaml") for name in ("annotate", "sft", "grpo"))
    pipeline = _load(model_dir / "pipeline.yaml")
    assert annotate["model"] == sft["model_name_or_path"] == pipeline["model_name_or_path"]
    assert annotate["dataset"] == grpo["dataset_name"] == pipeline["dataset_name"] == "gsm8k_train"
    assert sft["dataset_name"] == annotate["out"]
    assert grpo["model_name_or_path"] == sft["output_dir"]
    assert annotate["source"] == "self" and sft["strategy"] == "critical"
    assert grpo["probe_dataset"] == pipeline["grpo"]["probe_dataset"] == "gsm8k_test"
    assert {"gsm8k_train", "gsm8k_test"} <= set(BENCHMARKS)
    for recipe in (sft, grpo):
        assert recipe["bf16"] is True and recipe["gradient_checkpointing"] is True
        assert recipe["report_to"] == ["tensorboard"]
    assert grpo["use_vllm"] is True and grpo["vllm_mode"] == "colocate"
    assert pipeline["eval"]["backend"] == "vllm" and pipeline["eval"]["suite"] == "paper"


@pytest.mark.parametrize("model_dir", MODEL_DIRS, ids=_ids(MODEL_DIRS))
def test_model_recipe_headers_name_real_files(model_dir):
    """The launch commands in the comments point at files that exist (and each file has a header)."""
    for path in sorted(model_dir.glob("*.yaml")):
        text = path.read_text()
        assert text.startswith("#"), f"{path.name} has no header comment"
        assert "8 GPUs" in text and "1 GPU" in text, f"{path.name} lacks the 1- and 8-GPU commands"
        for ref in re.findall(r"(?:recipes|scripts)/[\w./-]+\.(?:yaml|py)", text):
            assert (ROOT / ref).is_file(), f"{path.name} mentions {ref}, which does not exist"


# --- pipelines -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PIPELINE_RECIPES, ids=_ids(PIPELINE_RECIPES))
def test_pipeline_recipe_plans(path):
    from cft_rl.pipeline.recipe import RESERVED, Recipe, plan

    raw = _load(path)
    for section, reserved in RESERVED.items():
        assert not reserved & set(raw.get(section) or {}), f"{section} sets a key the pipeline sets"
    recipe = Recipe.load(path)
    stages = plan(recipe)
    by_name = {s.name: s for s in stages}
    arms = recipe.arms()
    assert {"full", "critical"} <= set(arms)
    assert len({s.name for s in stages}) == len(stages)
    grpo = [s for s in stages if s.kind == "grpo"]
    assert len(grpo) == len(arms) * len(recipe.seeds())
    per_seed = recipe.sft.get("seed_per_grpo_seed", False)
    for stage in grpo:
        _, arm, seed = stage.name.split("/")
        sft = by_name[f"sft/{arm}/{seed}" if per_seed else f"sft/{arm}"]
        assert stage.settings["model_name_or_path"] == sft.settings["output_dir"]
        assert sft.name in stage.inputs
        assert sft.settings["strategy"] == arms[arm]["strategy"]
    assert len([s for s in stages if s.kind == "sft"]) == len(arms) * (len(recipe.seeds()) if per_seed else 1)
    assert stages[-1].kind == "compare"


@pytest.mark.parametrize("path", PIPELINE_RECIPES, ids=_ids(PIPELINE_RECIPES))
def test_pipeline_recipe_without_seed_per_grpo_seed_plans_as_with_it_off(path):
    """The option's default is the plan of before it: a recipe that leaves it out keeps every stage and key."""
    from cft_rl.pipeline.recipe import Recipe, plan

    def planned(raw: dict, **sft) -> list[tuple]:
        return [(s.name, s.key, s.settings, s.inputs) for s in plan(Recipe.from_dict({**raw, "sft": sft}))]

    raw = _load(path)
    sft = {k: v for k, v in (raw.get("sft") or {}).items() if k != "seed_per_grpo_seed"}
    without = planned(raw, **sft)
    assert planned(raw, **sft, seed_per_grpo_seed=False) == without
    assert [name for name, *_ in without if name.startswith("sft/")] == [
        f"sft/{arm}" for arm in Recipe.from_dict({**raw, "sft": sft}).arms()
    ]


@pytest.mark.parametrize("path", PIPELINE_RECIPES, ids=_ids(PIPELINE_RECIPES))
def test_pipeline_stage_configs_parse(path, tmp_path, monkeypatch):
    """Each stage's settings, as the pipeline would hand them to its job, parse in that job's config."""
    from cft_rl.annotate.job import AnnotateConfig
    from cft_rl.compare.analysis import CompareConfig
    from cft_rl.eval.job import EvalConfig
    from cft_rl.pipeline.recipe import Recipe, plan

    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for stage in plan(Recipe.load(path)):
        settings = dict(stage.settings)
        if stage.kind == "annotate":
            AnnotateConfig.from_dict(settings)
        elif stage.kind in ("sft", "grpo"):
            config_file = _write(tmp_path, settings, stage.name.replace("/", "_") + ".yaml")
            parsed = (_sft_parse if stage.kind == "sft" else _grpo_parse)(config_file)
            _assert_parsed_like_yaml(settings, parsed)
        elif stage.kind == "eval":
            for key in ("ks", "maj_ks"):
                if settings.get(key) is not None:
                    settings[key] = tuple(settings[key])
            EvalConfig(**settings, out=str(tmp_path / "eval"))
        elif stage.kind == "compare":
            CompareConfig(**{k: v for k, v in settings.items() if k != "evals"})


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=_ids(ACCELERATE_CONFIGS))
def test_accelerate_config_loads(path):
    values = _load(path)
    assert values.get("distributed_type"), f"{path.name} has no distributed_type"
    assert isinstance(values.get("num_processes"), int)


# --- typos fail naming the key ---------------------------------------------------------------------

MODEL = "Qwen2.5-Math-1.5B"


def _renamed(values: dict, old: str, new: str) -> dict:
    values = dict(values)
    values[new] = values.pop(old)
    return values


def test_sft_typo_names_the_key(tmp_path):
    values = _renamed(_load(RECIPES / MODEL / "sft.yaml"), "learning_rate", "learning_rat")
    with pytest.raises(ValueError, match=re.escape("'--learning_rat'")):
        _sft_parse(_write(tmp_path, values))


def test_grpo_typo_names_the_key(tmp_path):
    values = _renamed(_load(RECIPES / MODEL / "grpo.yaml"), "probe_steps", "probe_stpes")
    with pytest.raises(ValueError, match="probe_stpes"):
        _grpo_parse(_write(tmp_path, values))


def test_annotate_typo_names_the_key():
    from cft_rl.annotate.job import AnnotateConfig

    values = _renamed(_load(RECIPES / MODEL / "annotate.yaml"), "max_new_tokens", "max_new_tokns")
    with pytest.raises(ValueError, match="max_new_tokns"):
        AnnotateConfig.from_dict(values)


def _bad_pipeline(tmp_path: Path, where: str) -> tuple[Path, str]:
    values = _load(RECIPES / MODEL / "pipeline.yaml")
    if where == "top":
        return _write(tmp_path, _renamed(values, "dataset_name", "dataset_nmae")), "dataset_nmae"
    values["grpo"] = _renamed(values["grpo"], "learning_rate", "lerning_rate")
    return _write(tmp_path, values), "lerning_rate"


@pytest.mark.parametrize("where", ["top", "grpo"])
def test_pipeline_typo_names_the_key(tmp_path, where):
    from cft_rl.pipeline.recipe import Recipe, RecipeError

    path, key = _bad_pipeline(tmp_path, where)
    with pytest.raises(RecipeError, match=key):
        Recipe.load(path)


def test_pipeline_refuses_a_key_it_sets(tmp_path):
    from cft_rl.pipeline.recipe import Recipe, RecipeError

    values = _load(RECIPES / MODEL / "pipeline.yaml")
    values["sft"]["strategy"] = "critical"
    with pytest.raises(RecipeError, match="sft.strategy"):
        Recipe.load(_write(tmp_path, values))


@pytest.mark.parametrize("where", ["top", "grpo"])
def test_pipeline_cli_dry_run_reports_the_typo(tmp_path, capsys, where):
    from cft_rl.cli import main

    path, key = _bad_pipeline(tmp_path, where)
    assert main(["pipeline", str(path), "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert key in captured.err
    assert "pipeline in" not in captured.out  # refused before planning


def test_pipeline_cli_dry_run_prints_the_plan(capsys):
    from cft_rl.cli import main

    assert main(["pipeline", str(RECIPES / MODEL / "pipeline.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for stage in ("annotate", "sft/full", "sft/critical", "grpo/critical/seed2", "eval/base", "compare"):
        assert stage in out


def test_annotate_script_is_the_cli(monkeypatch, capsys):
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", ["scripts/annotate.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts" / "annotate.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert "--num-shards" in capsys.readouterr().out
