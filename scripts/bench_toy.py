"""The toy world's base model over build seeds: is it in the paper's regime, and robustly so?

Builds the toy once per ``--seeds`` seed (and each ``--steps-seeds`` seed, by default the first, again
with its pretraining steps scaled by each ``--steps-scale``, to show the build is away from an accuracy
cliff), then measures each build: greedy accuracy on the train split (the prompts the annotator and
GRPO use), on its easy and its hard problems apart, and on the held-out test split; pass@1, pass@k,
distinct completions and answers of k samples, and token entropy at T=1 on test; and the critical
fraction, by token class, of the model's own correct greedy train solutions, as the pipeline's annotate
stage marks them (its settings come from recipes/toy/pipeline.yaml).

Writes the `toy` section of docs/benchmarks.md: a table with a row per build, the mean and spread over
seeds, the accuracy along each run that ``scripts/bench_toy_curve.py`` recorded (if it made the build),
and the acceptance checks of issue 17 computed from those figures (the table and the checks live in
``scripts/toy_checks.py``).

    python scripts/bench_toy.py [--seeds 0 1 2] [--steps-scale 0.9 1.1] [--steps-seeds 0 1 2] [--out DIR]
        [--problems N] [--steps-problems N] [--annotate N] [--set key=json ...] [--tiny] [--json PATH] [--no-write]

The steps builds are measured for what they are there to show, and with the power it needs: greedy
accuracy on ``--steps-problems`` train problems (default 2,000), each problem paired with the seed
build's answer to it, as ``scripts/bench_toy_steps.py`` does (the change, its SE and 95% interval).

Builds go in ``DIR/seed{s}`` and ``DIR/seed{s}-steps{n}``, annotations in ``DIR/annotations`` and the
other measurements in ``DIR/measurements``; all are reused when their settings match, so a rerun with
more seeds only builds and measures the new ones. Under ``--set lr_schedule='"constant"'`` a seed's
builds of every length come from one run of the longest (``cft_rl.toy.build.build_lengths``: the same
weights as separate builds), so the steps builds cost no more than the longest of them; builds of
different seeds can run as separate processes into the same DIR, and a last run over all the seeds
then only measures and writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import yaml
from bench_toy_curve import by_difficulty, greedy_accuracy, read_curve, train_greedy
from bench_toy_steps import measure as steps_measure
from bench_toy_steps import paired_change
from toy_checks import CLASSES, MAX_STEPS_SHIFT, OUTSIDE_BOX, acceptance, render

from cft_rl.outputs import settings_key
from cft_rl.reports import bench_command, write_section
from cft_rl.toy.build import MANIFEST, ToyBuildConfig, build_lengths, build_toy, load_toy

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "toy" / "pipeline.yaml"


def parse_overrides(pairs: list[str]) -> dict:
    fields = {f.name for f in dataclasses.fields(ToyBuildConfig)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=json, got {pair!r} (e.g. --set steps=800)")
        if key not in fields:
            raise SystemExit(f"unknown ToyBuildConfig field {key!r}; valid: {sorted(fields)}")
        if key == "seed":
            raise SystemExit("set build seeds with --seeds, not --set seed=...")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SystemExit(
                f"--set {key}: {value!r} is not JSON ({exc}); quote strings: {key}='\"x\"'"
            ) from exc
    return out


def plan_builds(args) -> list[dict]:
    """``{"name", "seed", "scale", "config"}`` of every build: one per seed, then the steps builds."""
    base = dataclasses.asdict(ToyBuildConfig.tiny()) if args.tiny else {}
    overrides = parse_overrides(args.set)
    builds = []
    if len(set(args.seeds)) < len(args.seeds):
        raise SystemExit(f"--seeds lists a seed twice: {args.seeds}")
    for seed in args.seeds:
        config = ToyBuildConfig.from_dict({**base, **overrides, "seed": seed})
        builds.append({"name": f"seed{seed}", "seed": seed, "scale": None, "config": config})
    # One seed's steps builds can differ from it by build noise alone (seeds spread by up to 10 pt), so
    # the steps builds of several seeds tell a slope in the steps from that noise.
    steps_seeds = args.steps_seeds or args.seeds[:1]
    if not set(steps_seeds) <= set(args.seeds):
        raise SystemExit(f"--steps-seeds {steps_seeds} must be among --seeds {args.seeds}")
    for seed in steps_seeds:
        own = next(b["config"] for b in builds if b["seed"] == seed)
        for scale in args.steps_scale:
            config = dataclasses.replace(own, steps=round(own.steps * scale))
            name = f"seed{seed}-steps{config.steps}"
            builds.append({"name": name, "seed": seed, "scale": scale, "config": config})
    return builds


def refuse_other_settings(folder: Path, config: ToyBuildConfig) -> None:
    """Stop if ``folder`` holds a toy build made with other settings: a rerun never replaces it."""
    manifest = folder / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("key") != config.key():
        raise SystemExit(
            f"{folder} holds a toy build with other settings (not key {config.key()}): "
            "pass another --out, or delete that folder to rebuild it"
        )


def build(folder: Path, config: ToyBuildConfig) -> dict:
    """Build (or reuse) one toy; refuse to replace a build made with other settings. Returns its manifest."""
    refuse_other_settings(folder, config)
    build_toy(folder, config)
    return json.loads((folder / MANIFEST).read_text())


def measure(folder: Path, args) -> dict:
    """Greedy accuracy on train and test, and the sampled metrics of ``args.samples`` at T=1 on test."""
    from cft_rl.cpu import cpu_float_math
    from cft_rl.eval.scoring import score_groups
    from cft_rl.generation import generate

    model, tokenizer, data = load_toy(folder)
    test = data["test"].select(range(min(args.problems, len(data["test"]))))
    out = {}
    config = ToyBuildConfig.from_dict(json.loads((folder / MANIFEST).read_text())["config"])
    with cpu_float_math():
        train = train_greedy(model, tokenizer, data, config, args.problems, args.max_new_tokens)
        out["train_difficulty"] = by_difficulty(train["correct"], train["hard"])
        out["train_greedy"] = out["train_difficulty"]["all"]
        out["test_greedy"] = greedy_accuracy(model, tokenizer, test, args.max_new_tokens)
        groups = generate(
            model, tokenizer, test["prompt"], n=args.samples, temperature=1.0,
            max_new_tokens=args.max_new_tokens, batch_size=8,
        )  # fmt: skip
    metrics, _ = score_groups(groups, test["answer"], ks=(1, args.samples))
    out |= {
        key: metrics.get(key) for key in ("pass@1", f"pass@{args.samples}", "distinct_answers", "entropy")
    }
    out["distinct_completions"] = sum(len({s.text for s in g}) for g in groups) / max(1, len(groups))
    out["problems"] = {"train": len(train["correct"]), "test": len(test)}
    return out


def demo_recipe_section(name: str) -> dict:
    """Section ``name`` of the demo recipe (recipes/toy/pipeline.yaml), whose settings this measures with."""
    return yaml.safe_load(RECIPE.read_text()).get(name) or {}


def demo_eval_budget() -> int:
    """The demo recipe's generation budget (its eval stage's ``max_new_tokens``): the default here."""
    return demo_recipe_section("eval")["max_new_tokens"]


def cached_measure(folder: Path, key: str, out: Path, args) -> dict:
    """:func:`measure`, kept in ``out/measurements`` under the build's key and the measuring settings, so
    a rerun with more seeds measures only the new builds (and a rebuilt model is measured again)."""
    settings = {"problems": args.problems, "samples": args.samples, "max_new_tokens": args.max_new_tokens}
    path = out / "measurements" / f"{folder.name}-{key}-{settings_key(settings)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    found = measure(folder, args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(found, indent=2) + "\n")
    return found


def annotation_settings(limit: int) -> dict:
    """The pipeline's annotate settings (recipes/toy/pipeline.yaml), on the model's own solutions."""
    from cft_rl.annotate.job import AnnotateConfig

    section = demo_recipe_section("annotate")
    fields = {f.name for f in dataclasses.fields(AnnotateConfig)}
    return {k: v for k, v in section.items() if k in fields} | {"source": "self", "limit": limit}


def annotate(folder: Path, key: str, out: Path, args) -> dict:
    """The annotate job's summary for the first ``args.annotate`` train problems of one build.

    The folder is named by the build's key and the limit, so a rebuilt model or another limit never
    resumes (or trips over) annotations made with other settings.
    """
    from cft_rl.annotate.job import AnnotateConfig, run_annotation

    job = out / "annotations" / f"{folder.name}-{key}-n{args.annotate}"
    settings = annotation_settings(args.annotate)
    config = AnnotateConfig(
        model=str(folder), dataset=str(folder / "data"), out=str(job), split="train", **settings
    )
    run_annotation(config)
    return {"settings": settings, **json.loads((job / "summary.json").read_text())}


def critical_by_class(summary: dict) -> dict:
    """Critical fraction overall and per token class (None where no token of the class was annotated)."""
    by_class = summary.get("by_class", {})
    fractions = {cls: by_class[cls]["fraction"] if cls in by_class else None for cls in CLASSES}
    # The final box's braces decide which number is the answer: format tokens outside it, apart.
    outside = summary.get("outside_answer", {}).get("format")
    return {
        "overall": summary.get("critical_fraction"),
        **fractions,
        OUTSIDE_BOX: outside and outside["fraction"],
    }


def build_constant_lengths(specs: list[dict], out: Path) -> None:
    """Under a constant learning rate, the builds of one seed that differ only in steps come from one run
    (:func:`~cft_rl.toy.build.build_lengths`): each length is saved as the run passes it."""
    groups: dict[ToyBuildConfig, dict[int, Path]] = {}
    for spec in specs:
        config = spec["config"]
        if config.lr_schedule == "constant":
            refuse_other_settings(out / spec["name"], config)
            shape = dataclasses.replace(config, steps=1)  # steps aside, the settings the builds share
            groups.setdefault(shape, {})[config.steps] = out / spec["name"]
    for shape, folders in groups.items():
        build_lengths(folders, shape)


def run_builds(args) -> list[dict]:
    """Build every planned toy, then measure each: the seed builds in full, the steps builds paired."""
    out = Path(args.out)
    specs = plan_builds(args)
    build_constant_lengths(specs, out)
    results = []
    for spec in specs:
        folder = out / spec["name"]
        print(f"== {spec['name']}: build and measure ({folder})", file=sys.stderr, flush=True)
        manifest = build(folder, spec["config"])
        result = {k: v for k, v in spec.items() if k != "config"}
        result |= {
            "steps": spec["config"].steps,
            "lr_schedule": spec["config"].lr_schedule,
            "dir": str(folder),
            "key": manifest["key"],
            "build_seconds": manifest["build_seconds"],
            "parameters": manifest["parameters"],
        }
        if spec["scale"] is None:
            result |= measure_seed_build(folder, manifest["key"], out, args)
        else:
            result["paired"] = measure_steps_build(folder, out / f"seed{spec['seed']}", args)
        results.append(result)
    return results


def measure_seed_build(folder: Path, key: str, out: Path, args) -> dict:
    summary = annotate(folder, key, out, args)
    return {
        **cached_measure(folder, key, out, args),
        "annotated": summary["annotated"],
        "critical": critical_by_class(summary),
        "annotation": summary,
        "curve": read_curve(folder, key),
    }


def measure_steps_build(folder: Path, reference: Path, args) -> dict:
    """A steps build only needs its accuracy against its seed's build, and a few points of it are the
    question: so it is measured greedily on ``args.steps_problems`` train problems and paired with the
    reference problem by problem (``scripts/bench_toy_steps.py``, whose cache beside each build it shares)."""
    ref = steps_measure(reference, args.steps_problems, args.max_new_tokens)
    found = steps_measure(folder, args.steps_problems, args.max_new_tokens)
    return paired_change(ref, found, bound=100 * MAX_STEPS_SHIFT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="build seeds")
    # The steps builds show the seed build is away from an accuracy cliff; `--steps-scale` alone: none.
    parser.add_argument(
        "--steps-scale", type=float, nargs="*", default=[0.9, 1.1], help="steps builds, as step multiples"
    )
    parser.add_argument(
        "--steps-seeds",
        type=int,
        nargs="*",
        default=None,
        help="seeds with steps builds (default: the first)",
    )
    parser.add_argument(
        "--out", default="outputs/bench_toy", help="folder of the builds (reused when present)"
    )
    parser.add_argument("--problems", type=int, default=200, help="train and test problems to evaluate")
    parser.add_argument(
        "--steps-problems", type=int, default=2000,
        help="train problems on which each steps build is compared with its seed's build",
    )  # fmt: skip
    parser.add_argument("--samples", type=int, default=8, help="samples per problem at T=1")
    parser.add_argument("--annotate", type=int, default=128, help="train problems tried by the annotator")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="generation budget (default: the demo recipe's eval budget)",
    )
    parser.add_argument("--set", nargs="*", default=[], help="ToyBuildConfig overrides, key=json")
    parser.add_argument(
        "--tiny", action="store_true", help="start from ToyBuildConfig.tiny() (a quick check)"
    )
    parser.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument(
        "--section",
        default="toy",
        help="docs/benchmarks.md section to write (another name keeps the default build's section)",
    )
    args = parser.parse_args()
    args.max_new_tokens = args.max_new_tokens or demo_eval_budget()
    if args.samples < 2:
        parser.error("--samples must be at least 2: pass@1 and pass@k at T=1 need k > 1 samples")
    results = run_builds(args)
    checks = acceptance(results, args.samples)
    body = render(results, checks, args)
    print(body)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"builds": results, "checks": checks}, indent=2) + "\n")
    if not args.no_write:
        command = bench_command("scripts/bench_toy.py")
        print("wrote", write_section(args.section, body, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
