"""The powered experiment's controls (recipes/toy/experiment.yaml): each arm has the property that
makes it the control it is, read from the stages the pipeline would run (nothing trains), and the
random arm's count matching holds row by row through the SFT preparation code.

Each property is a ``check_*`` function. It passes on the recipe as it is, and must fail on a copy
broken the way that control could be broken (:data:`BREAKS`): a check that cannot fail proves nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from cft_rl.pipeline.recipe import Recipe, Stage, plan

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "recipes" / "toy" / "experiment.yaml"
DEMO = ROOT / "recipes" / "toy" / "pipeline.yaml"
BASELINE, CFT, COUNT_CONTROL = "full", "critical", "random"
POSITIVE, NEGATIVE = "collapse", "full_replica"  # built to lose diversity / built to change nothing
MIN_SEEDS = 5
MIN_STEPS_RATIO = 5  # the collapse arm trains at least this many times full's optimizer steps
# What the collapse arm may change to train harder; everything else is full's.
COLLAPSE_KNOBS = {"num_train_epochs", "max_steps", "learning_rate"}


@dataclass
class Planned:
    recipe: Recipe
    stages: dict[str, Stage]

    def sft(self, arm: str, seed: int) -> dict:
        """The settings of the arm's SFT run for GRPO seed ``seed`` with every unset field at its config
        default, so that a value written out and the same value left to the default compare equal."""
        return {**_sft_defaults(), **self.stages[f"sft/{arm}/seed{seed}"].settings}

    def sft_runs(self) -> list[Stage]:
        return [s for s in self.stages.values() if s.kind == "sft"]

    def grpo_runs(self, arm: str) -> list[Stage]:
        return [s for s in self.stages.values() if s.kind == "grpo" and s.name.split("/")[1] == arm]


def _sft_defaults() -> dict:
    from cft_rl.sft.trainer import SelectiveSFTConfig

    defaults = {}
    for f in dataclasses.fields(SelectiveSFTConfig):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


def _raw() -> dict:
    return yaml.safe_load(EXPERIMENT.read_text())


def _planned(values: dict) -> Planned:
    recipe = Recipe.from_dict(values)
    return Planned(recipe, {s.name: s for s in plan(recipe)})


def _differing(a: dict, b: dict) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def optimizer_steps(settings: dict, rows: int) -> int:
    """Optimizer steps of one SFT run on ``rows`` examples (one process), as ``Trainer`` counts them:
    ``max_steps`` when set, else the epochs times the updates per epoch."""
    if settings["max_steps"] > 0:
        return settings["max_steps"]
    batches = math.ceil(rows / settings["per_device_train_batch_size"])
    per_epoch = max(batches // settings["gradient_accumulation_steps"], 1)
    return math.ceil(settings["num_train_epochs"] * per_epoch)


# --- the checks ------------------------------------------------------------------------------------


def check_arms(p: Planned) -> None:
    arms = p.recipe.arms()
    for arm in (BASELINE, CFT, COUNT_CONTROL, POSITIVE, NEGATIVE):
        assert arm in arms, f"the experiment needs the {arm!r} arm; it has {sorted(arms)}"
    assert p.recipe.compare.get("baseline", BASELINE) == BASELINE, "the verdict must compare against full"


def check_replica(p: Planned) -> None:
    for seed in p.recipe.seeds():
        full, replica = p.sft(BASELINE, seed), p.sft(NEGATIVE, seed)
        differing = _differing(full, replica) - {"output_dir"}
        assert differing == {"seed"}, (
            f"{NEGATIVE} must be {BASELINE} with another SFT seed and nothing else: at GRPO seed {seed} "
            f"it differs in {sorted(differing) or 'nothing: give it another seed'}"
        )


def check_no_shared_sft_seed(p: Planned) -> None:
    """No two SFT runs that differ only in seed share one: they would be one run twice, so the replica
    would match full by construction and an arm's seeds would not be independent warm starts. Arms
    that differ in more (critical against full) may share a seed: each GRPO seed pairs them."""
    seen: dict[str, str] = {}
    for stage in p.sft_runs():
        settings = {k: v for k, v in {**_sft_defaults(), **stage.settings}.items() if k != "output_dir"}
        same = json.dumps(settings, sort_keys=True, default=str)
        assert same not in seen, f"{stage.name} is {seen[same]} again (SFT seed {settings['seed']})"
        seen[same] = stage.name


def check_collapse(p: Planned) -> None:
    for seed in p.recipe.seeds():
        full, collapse = p.sft(BASELINE, seed), p.sft(POSITIVE, seed)
        assert collapse["strategy"] == "full", f"{POSITIVE} must train every token (strategy full)"
        other = _differing(full, collapse) - {"output_dir"} - COLLAPSE_KNOBS
        assert not other, f"{POSITIVE} may change only {sorted(COLLAPSE_KNOBS)}; it changes {sorted(other)}"
        assert collapse["learning_rate"] >= full["learning_rate"], f"{POSITIVE} must not train gentler"
        # The annotated rows are not known before annotation: every count it can yield must hold.
        for rows in range(1, (p.recipe.annotate.get("limit") or 1024) + 1):
            ratio = optimizer_steps(collapse, rows) / optimizer_steps(full, rows)
            assert ratio >= MIN_STEPS_RATIO, f"{POSITIVE}: {ratio:.1f}x full's steps on {rows} rows"


def check_random(p: Planned) -> None:
    for seed in p.recipe.seeds():
        critical, random = p.sft(CFT, seed), p.sft(COUNT_CONTROL, seed)
        assert random["strategy"] == "random"
        assert random["selection_fraction"] is None, (
            f"{COUNT_CONTROL} must match each row's critical count: remove selection_fraction"
        )
        other = _differing(critical, random) - {"output_dir", "strategy", "selection_seed"}
        assert not other, f"{COUNT_CONTROL} differs from {CFT} beyond which tokens: {sorted(other)}"


def check_grpo(p: Planned) -> None:
    """Every GRPO run has the baseline's first run's settings but for its warm start, seed and folder."""
    reference = p.grpo_runs(BASELINE)[0].settings
    for arm in p.recipe.arms():
        for stage in p.grpo_runs(arm):
            seed = int(stage.name.rsplit("seed", 1)[1])
            assert stage.settings["seed"] == seed, f"{stage.name} runs GRPO seed {stage.settings['seed']}"
            other = _differing(reference, stage.settings) - {"model_name_or_path", "output_dir", "seed"}
            assert not other, f"{stage.name}: GRPO settings differ from the baseline's in {sorted(other)}"


def check_warm_starts(p: Planned) -> None:
    """Each GRPO run of an arm starts from (and waits for) the arm's SFT run of its own seed, so the
    seeds are whole SFT -> GRPO replicates and their spread includes the warm start's."""
    for arm in p.recipe.arms():
        for stage in p.grpo_runs(arm):
            seed = stage.name.rsplit("/", 1)[1]
            sft = p.stages.get(f"sft/{arm}/{seed}")
            assert sft is not None, f"{stage.name} has no SFT run of its own (sft/{arm}/{seed})"
            assert stage.settings["model_name_or_path"] == sft.settings["output_dir"], (
                f"{stage.name} starts from {stage.settings['model_name_or_path']}, not {sft.name}"
            )
            assert [n for n in stage.inputs if n.startswith("sft/")] == [sft.name], stage.inputs


def check_seeds(p: Planned) -> None:
    seeds = p.recipe.seeds()
    assert len(seeds) >= MIN_SEEDS, f"{len(seeds)} seeds; the experiment needs at least {MIN_SEEDS}"
    for arm in p.recipe.arms():
        ran = sorted(s.settings["seed"] for s in p.grpo_runs(arm))
        assert ran == sorted(seeds), f"arm {arm!r} runs GRPO seeds {ran}, not {seeds}"


CHECKS = [
    check_arms,
    check_replica,
    check_no_shared_sft_seed,
    check_collapse,
    check_random,
    check_grpo,
    check_warm_starts,
    check_seeds,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_experiment_has_its_controls(check):
    check(_planned(_raw()))


def _demo_reused(demo: dict, experiment: dict) -> None:
    """Every stage of the demo but its report is a stage of the experiment with the same key, once the
    demo tries as many problems: the demo is the experiment made smaller, nothing else."""
    demo = copy.deepcopy(demo)
    demo["annotate"]["limit"] = experiment["annotate"]["limit"]
    ours = {s.name: s.key for s in plan(Recipe.from_dict(experiment))}
    theirs = {s.name: s.key for s in plan(Recipe.from_dict(demo)) if s.kind != "compare"}
    missing = sorted(n for n in theirs if n not in ours)
    assert not missing, f"the experiment lacks the demo's stages {missing}"
    changed = sorted(n for n, k in theirs.items() if ours[n] != k)
    assert not changed, f"the demo's stages {changed} differ from the experiment's: their settings differ"


def test_the_demo_is_the_experiment_made_smaller():
    demo = yaml.safe_load(DEMO.read_text())
    _demo_reused(demo, _raw())
    assert demo["output_dir"] == _raw()["output_dir"]
    assert demo["annotate"]["limit"] < _raw()["annotate"]["limit"]  # the demo is the smaller one
    for section, key, value in [
        ("annotate", "num_alternatives", 3),
        ("grpo", "learning_rate", 3e-5),
        ("sft", "seed", 7),
    ]:
        broken = copy.deepcopy(demo)
        broken[section][key] = value
        with pytest.raises(AssertionError, match="differ from the experiment's"):
            _demo_reused(broken, _raw())


# --- each check fails on a recipe broken its way ---------------------------------------------------


def _arm(values: dict, name: str) -> dict:
    """The ``sft.arms`` entry of ``name``, as a mapping (a plain name is rewritten in place)."""
    arms = values["sft"]["arms"]
    for i, entry in enumerate(arms):
        if entry == name or (isinstance(entry, dict) and entry.get("name") == name):
            if isinstance(entry, str):
                arms[i] = entry = {"name": name, "strategy": name}
            return entry
    raise KeyError(name)


def _drop_arm(values: dict, name: str) -> None:
    values["sft"]["arms"].remove(_arm(values, name))


def _set(name: str, **fields):
    return lambda values: _arm(values, name).update(fields)


def _unset(name: str, key: str):
    return lambda values: _arm(values, name).pop(key)


def _shared(section: str, **fields):
    return lambda values: values[section].update(fields)


def _grpo_stage(name: str, **fields):
    return lambda p: p.stages[name].settings.update(fields)


def _drop_stage(name: str):
    return lambda p: p.stages.pop(name)


def _start_from(name: str, sft: str):
    """GRPO stage ``name`` pointed at the SFT stage ``sft``'s folder (its inputs left as they were)."""
    return lambda p: p.stages[name].settings.update(model_name_or_path=p.stages[sft].settings["output_dir"])


def _wait_for(name: str, sft: str):
    """GRPO stage ``name`` made to wait for the SFT stage ``sft`` instead of its own."""
    return lambda p: p.stages[name].inputs.__setitem__(0, sft)


def _same_seed(name: str, other: str):
    return lambda p: p.stages[name].settings.update(seed=p.stages[other].settings["seed"])


# (what breaks, recipe edit, edit of the plan, the check that must catch it)
BREAKS = [
    ("replica changes the rate too", _set(NEGATIVE, learning_rate=2e-4), None, check_replica),
    ("replica keeps full's seed", _unset(NEGATIVE, "seed"), None, check_replica),
    ("replica writes full's seed out", _set(NEGATIVE, seed=42), None, check_replica),
    ("replica changes the batch order only", _set(NEGATIVE, seed=42, data_seed=7), None, check_replica),
    ("replica on full's next seeds", _set(NEGATIVE, seed=1042), None, check_no_shared_sft_seed),
    ("replica on full's seeds", _unset(NEGATIVE, "seed"), None, check_no_shared_sft_seed),
    (
        "an arm's seed run twice",
        None,
        _same_seed("sft/random/seed3", "sft/random/seed1"),
        check_no_shared_sft_seed,
    ),
    ("collapse trains only 2x", _set(POSITIVE, num_train_epochs=4), None, check_collapse),
    ("collapse at 4.9x", _set(POSITIVE, num_train_epochs=9.8), None, check_collapse),
    ("collapse in a few max_steps", _set(POSITIVE, max_steps=10), None, check_collapse),
    ("collapse on critical tokens", _set(POSITIVE, strategy="critical"), None, check_collapse),
    ("collapse with other batches", _set(POSITIVE, per_device_train_batch_size=4), None, check_collapse),
    ("collapse at a lower rate", _set(POSITIVE, learning_rate=1e-5), None, check_collapse),
    ("random at a fixed fraction", _set(COUNT_CONTROL, selection_fraction=0.2), None, check_random),
    ("a shared fixed fraction", _shared("sft", selection_fraction=0.2), None, check_random),
    ("random with its own rate", _set(COUNT_CONTROL, learning_rate=3e-4), None, check_random),
    ("three seeds", _shared("grpo", seeds=[0, 1, 2]), None, check_seeds),
    ("one GRPO run missing", None, _drop_stage("grpo/random/seed4"), check_seeds),
    ("one GRPO run's rate", None, _grpo_stage("grpo/critical/seed3", learning_rate=1e-3), check_grpo),
    ("one GRPO run's seed", None, _grpo_stage("grpo/collapse/seed2", seed=0), check_grpo),
    ("one SFT run for every seed", _shared("sft", seed_per_grpo_seed=False), None, check_warm_starts),
    (
        "GRPO from another seed's SFT",
        None,
        _start_from("grpo/critical/seed3", "sft/critical/seed0"),
        check_warm_starts,
    ),
    (
        "GRPO from another arm's SFT",
        None,
        _start_from("grpo/full/seed1", "sft/full_replica/seed1"),
        check_warm_starts,
    ),
    ("GRPO waits for another seed", None, _wait_for("grpo/full/seed2", "sft/full/seed1"), check_warm_starts),
    ("no replica", lambda v: _drop_arm(v, NEGATIVE), None, check_arms),
    ("no collapse", lambda v: _drop_arm(v, POSITIVE), None, check_arms),
    ("no random", lambda v: _drop_arm(v, COUNT_CONTROL), None, check_arms),
    ("another baseline", _shared("compare", baseline="critical"), None, check_arms),
]


@pytest.mark.parametrize("edit_recipe, edit_plan, check", [b[1:] for b in BREAKS], ids=[b[0] for b in BREAKS])
def test_each_check_catches_its_broken_recipe(edit_recipe, edit_plan, check):
    values = copy.deepcopy(_raw())
    if edit_recipe:
        edit_recipe(values)
    planned = _planned(values)
    if edit_plan:
        edit_plan(planned)
    with pytest.raises(AssertionError):
        check(planned)


# --- the random arm, row by row, through the SFT preparation ---------------------------------------


def _annotated_rows():
    """Four hand-made annotated rows with different critical counts (one with none)."""
    import datasets

    from cft_rl.data.prompts import build_prompt

    texts = [
        "Tom has 3 apples and buys 4 more, so 3 + 4 = 7.\n\nThe answer is \\boxed{7}.",
        "First 12 * 3 = 36, then 36 - 5 = 31.\n\nSo the final answer is \\boxed{31}.",
        "Ann gives away 2 of her 9 pens: 9 - 2 = 7.\n\nAnn ends up with \\boxed{7} pens.",
        "5 + 5 = 10.\n\nThe answer is \\boxed{10}.",
    ]
    spans = [[[0, 3]], [[6, 8], [16, 18], [30, 34]], [], [[0, len(texts[3])]]]
    return datasets.Dataset.from_list(
        [
            {"id": f"row{i}", "prompt": build_prompt("q"), "solution": t, "critical_spans": s}
            for i, (t, s) in enumerate(zip(texts, spans, strict=True))
        ]
    )


def _prepared(p: Planned, arm: str, rows, tokenizer, tmp_path, **overrides) -> dict[str, list[float]]:
    """{row id: completion weights} of ``arm``'s first SFT run's settings through ``prepare_dataset``."""
    from cft_rl.sft.prepare import prepare_dataset
    from cft_rl.sft.trainer import SelectiveSFTConfig

    fields = {f.name for f in dataclasses.fields(SelectiveSFTConfig)}
    stage = p.stages[f"sft/{arm}/seed{p.recipe.seeds()[0]}"]
    settings = {k: v for k, v in stage.settings.items() if k in fields}
    args = SelectiveSFTConfig(**{**settings, "output_dir": str(tmp_path / arm), **overrides})
    prepared, _ = prepare_dataset(rows, tokenizer, args)
    ids = [r for r, s in zip(rows["id"], rows["critical_spans"], strict=True) if s]  # kept rows
    return {
        i: [w for w, c in zip(row["loss_weights"], row["completion_mask"], strict=True) if c]
        for i, row in zip(ids, prepared, strict=True)
    }


def test_the_random_arm_selects_as_many_tokens_as_critical_in_every_row(toy_dir, tmp_path):
    from cft_rl.toy.tokenizer import load_tokenizer

    p, rows, tokenizer = _planned(_raw()), _annotated_rows(), load_tokenizer(toy_dir)
    critical = _prepared(p, CFT, rows, tokenizer, tmp_path)
    random = _prepared(p, COUNT_CONTROL, rows, tokenizer, tmp_path)
    assert sorted(random) == sorted(critical) == ["row0", "row1", "row3"]  # row2 trains nothing in both
    counts = {i: sum(w) for i, w in critical.items()}
    assert len(set(counts.values())) == 3  # the rows differ, so no fixed fraction could match them
    assert {i: sum(w) for i, w in random.items()} == counts
    assert any(random[i] != critical[i] for i in critical)  # the same number, other positions
    assert all(w[-1] == 0 for w in random.values())  # never the eos, which critical cannot select
    # The recipe broken the obvious way (a fixed fraction) no longer matches.
    fixed = _prepared(p, COUNT_CONTROL, rows.select([0, 1, 3]), tokenizer, tmp_path, selection_fraction=0.3)
    assert {i: sum(w) for i, w in fixed.items()} != counts
