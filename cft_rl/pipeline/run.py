"""``cft-rl pipeline recipe.yaml``: the CFT paper's RL experiment as one resumable job.

The stages, in order, each in its own folder under ``output_dir`` with a ``manifest.json``::

    toy                  build the toy world (only when the recipe has a ``toy:`` section)
    annotate             critical tokens of the base model's own correct greedy solutions
    sft/<arm>            one warm start per arm (at least full and critical), all on those solutions
                         (sft/<arm>/seed<s>: one per arm and GRPO seed, with sft.seed_per_grpo_seed)
    grpo/<arm>/seed<s>   GRPO from each warm start: identical RL settings, several seeds
    eval/...             the base model, each warm start and each GRPO policy on the benchmarks
    compare              every arm's curves (seeds as bands) and the accuracy table

A stage's key hashes its settings and its inputs' keys (:func:`cft_rl.pipeline.recipe.stage_key`),
so editing one section reruns that stage and everything downstream of it, and nothing else. A
manifest left ``running`` means the stage was interrupted: it runs again, and resumes, because every
job resumes by itself (annotation shards, the trainers' last checkpoint, finished benchmarks). The
folder of a stage whose settings changed is moved to ``output_dir/.superseded/``, never deleted.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from cft_rl.outputs import supersede as keep
from cft_rl.outputs import write_json
from cft_rl.pipeline.lanes import run_lanes, sharded, shards
from cft_rl.pipeline.recipe import Recipe, RecipeError, Stage, plan
from cft_rl.pipeline.threads import stage_threads
from cft_rl.resume import checkpoints

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"


class StageError(ValueError):  # a ValueError, so `cft-rl` prints it without a traceback
    """A stage's job failed; the message names the stage and the command that failed."""


# --- manifests -------------------------------------------------------------------------------------


def manifest_path(root: Path, stage: Stage) -> Path:
    return root / stage.name / MANIFEST


def read_manifest(root: Path, stage: Stage) -> dict | None:
    path = manifest_path(root, stage)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:  # a manifest cut by a kill: treat the stage as interrupted
        return {"status": "running", "key": stage.key}


def write_manifest(root: Path, stage: Stage, **fields) -> None:
    path = manifest_path(root, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "stage": stage.name,
        "kind": stage.kind,
        "key": stage.key,
        "settings": stage.settings,
        "inputs": {name: str(root / name) for name in stage.inputs},
        **fields,
    }
    write_json(path, data)  # atomic: a kill leaves the old manifest or the new one


def status(root: Path, stage: Stage) -> str:
    """``done`` (skip), ``resume`` (interrupted, same settings), ``rerun`` (settings changed) or ``new``."""
    manifest = read_manifest(root, stage)
    if manifest is None:
        return "new"
    if manifest.get("key") != stage.key:
        return "rerun"
    return "done" if manifest.get("status") == "done" else "resume"


def supersede(root: Path, stage: Stage) -> Path:
    """Move a stage folder whose settings changed out of the way (kept, so no result is lost)."""
    old = read_manifest(root, stage) or {}
    return keep(root, root / stage.name, stage.name, old.get("key", "unknown"))


def stale_parents(root: Path, stages: list[Stage]) -> list[tuple[str, Path, str]]:
    """``(name, folder, key)`` of old stage folders that now hold planned stages: ``sft/full`` of a run
    made before ``sft.seed_per_grpo_seed``, in whose folder ``sft/full/seed0`` would otherwise be
    written, mixing two layouts (and old results counted as new by whatever globs the folder)."""
    planned = {s.name for s in stages}
    found = {}
    for stage in stages:
        parts = stage.name.split("/")
        for depth in range(1, len(parts)):
            name = "/".join(parts[:depth])
            manifest = root / name / "manifest.json"
            if name in planned or name in found or not manifest.is_file():
                continue
            old = json.loads(manifest.read_text())
            if old.get("stage") == name:
                found[name] = (name, root / name, old.get("key", "unknown"))
    return list(found.values())


# --- the jobs --------------------------------------------------------------------------------------


# The job of each launched stage kind: its package (``python -m`` under a launcher) and its main.
JOBS = {
    "annotate": ("cft_rl.annotate", "cft_rl.annotate.job"),
    "sft": ("cft_rl.sft", "cft_rl.sft.run"),
    "grpo": ("cft_rl.grpo", "cft_rl.grpo.run"),
}


def _launched(stage: Stage, root: Path, extra: list[str] = ()) -> None:
    """Run the stage's job with ``--config <stage>/config.yaml``: under the stage's launcher as
    ``<launch> -m cft_rl.<kind>``, or without one through the job's ``main`` in this process."""
    folder = root / stage.name
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(stage.settings, sort_keys=False))
    package, module = JOBS[stage.kind]
    argv = ["--config", str(config), *extra]
    if stage.launch:  # e.g. accelerate launch --config_file recipes/accelerate_configs/zero2.yaml
        cmd = [*shlex.split(stage.launch), "-m", package, *argv]
        logger.info("running %s", shlex.join(cmd))
        if subprocess.run(cmd).returncode != 0:
            raise StageError(f"{stage.name}: `{shlex.join(cmd)}` failed (its output is above)")
        return
    try:
        code = importlib.import_module(module).main(argv)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:  # the job's own clear errors
        raise StageError(f"{stage.name}: `python -m {package} {shlex.join(argv)}` failed: {exc}") from exc
    if code != 0:
        raise StageError(
            f"{stage.name}: `python -m {package} {shlex.join(argv)}` failed (the error is above)"
        )


def _last_checkpoint(folder: Path) -> list[str]:
    """``--resume_from_checkpoint`` flags for an interrupted trainer's last complete checkpoint.

    A kill can land while a checkpoint is being written; the trainer writes ``trainer_state.json``
    after the weights and optimizer, so a checkpoint without it is skipped for the one before (the rule
    of :func:`cft_rl.resume.checkpoints`, which a standalone rerun follows too)."""
    found = checkpoints(folder)
    return ["--resume_from_checkpoint", str(found[-1][1])] if found else []


def run_toy(stage: Stage, root: Path) -> dict:
    from cft_rl.toy.build import ToyBuildConfig, build_toy

    world = build_toy(root / stage.name / "world", ToyBuildConfig.from_dict(stage.settings))
    return {"model": str(world), "data": str(world / "data")}


def run_annotate(stage: Stage, root: Path) -> dict:
    _launched(stage, root)
    summary = json.loads((root / stage.name / "summary.json").read_text())
    return {"dataset": str(root / stage.name / "dataset"), "summary": summary}


def run_trainer(stage: Stage, root: Path) -> dict:
    """An SFT arm or a GRPO run; resumes from the folder's last checkpoint if it was interrupted."""
    folder = root / stage.name
    resume = _last_checkpoint(folder)
    if resume:
        logger.info("%s: resuming from %s", stage.name, resume[1])
    _launched(stage, root, resume)
    outputs: dict = {"checkpoint": str(folder), "resumed_from": resume[1] if resume else None}
    state = folder / "trainer_state.json"
    if state.is_file():
        history = json.loads(state.read_text()).get("log_history", [])
        rewards = [e["reward"] for e in history if "reward" in e]
        outputs["steps"] = max((e.get("step", 0) for e in history), default=0)
        if rewards:
            k = min(20, len(rewards))
            outputs["reward_first"], outputs["reward_last"] = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
    return outputs


def run_eval_stage(stage: Stage, root: Path) -> dict:
    from cft_rl.eval.job import EvalConfig, run_eval

    settings = {**stage.settings, "out": str(root / stage.name)}
    results = run_eval(EvalConfig(**settings))
    return {"accuracy": {name: r["accuracy"] for name, r in results.items()}}


def run_compare(stage: Stage, root: Path) -> dict:
    from cft_rl.compare.analysis import CompareConfig, build_report
    from cft_rl.compare.report import write_report
    from cft_rl.eval.tables import accuracy_section

    settings = {k: v for k, v in stage.settings.items() if k != "evals"}
    config = CompareConfig(**settings)
    accuracy = accuracy_section(stage.settings["evals"])
    out = write_report(build_report(config), config, sections=[accuracy])
    return {"report": str(out / "report.html"), "markdown": str(out / "report.md")}


RUNNERS = {
    "toy": run_toy,
    "annotate": run_annotate,
    "sft": run_trainer,
    "grpo": run_trainer,
    "eval": run_eval_stage,
    "compare": run_compare,
}


# --- the run ---------------------------------------------------------------------------------------


@dataclass
class StageResult:
    name: str
    status: str  # what was found before running: done / resume / rerun / new
    seconds: float = 0.0
    outputs: dict | None = None


def run_stage(stage: Stage, root: Path, threads=None, lane: dict | None = None) -> float:
    """Run one stage in this process under ``threads`` (:mod:`cft_rl.pipeline.threads`), its manifest
    ``running`` until it ends, then ``done`` with its outputs; returns its seconds. A sequential run calls
    this for each stage; with lanes, each stage's worker process does (:mod:`cft_rl.pipeline.worker`),
    with ``lane`` (the recipe's lanes and threads setting) added to the manifest's thread record."""
    start = time.time()
    with stage_threads(threads, stage.name, stage.kind, stage.launch) as chosen:
        if chosen and lane:
            chosen |= lane
        extra = {"threads": chosen} if chosen else {}  # the count chosen: see cft_rl.pipeline.threads
        write_manifest(root, stage, status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S"), **extra)
        outputs = RUNNERS[stage.kind](stage, root)
    seconds = time.time() - start
    finished = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_manifest(
        root, stage, status="done", seconds=round(seconds, 1), outputs=outputs, finished=finished, **extra
    )
    return seconds


def describe_plan(stages: list[Stage], states: dict[str, str], root: Path, threads=None, lanes=1) -> str:
    """The plan as a table: what each stage will do, its key and its folder."""
    verbs = {"done": "skip (done)", "resume": "resume", "rerun": "rerun (settings changed)", "new": "run"}
    width = max(len(s.name) for s in stages)
    lines = [f"pipeline in {root}: {len(stages)} stages"]
    if threads is not None:
        how = "fitted to the free cores as each starts" if threads == "auto" else "fixed"
        lines[0] += f"; torch threads of the annotate/sft/grpo/eval stages: {threads} ({how})"
    if lanes > 1:
        lines[0] += f"; up to {lanes} stages at once, one per lane, each lane a process (lanes: {lanes})"
    for i, s in enumerate(stages, 1):
        how = f" via `{s.launch}`" if s.launch and s.kind in ("annotate", "sft", "grpo") else ""
        lines.append(f"  [{i:>2}] {s.name:<{width}}  {verbs[states[s.name]]:<25} key {s.key}{how}")
    return "\n".join(lines)


def run_pipeline(recipe: Recipe, dry_run: bool = False, echo=print) -> list[StageResult]:
    """Run (or, with ``dry_run``, only print) every stage that is not done; returns what happened."""
    root = Path(recipe.output_dir)
    stages = plan(recipe)
    for name, folder, key in stale_parents(root, stages):
        if dry_run:
            echo(f"{name}: a stage of an older plan; running would move it to {root / '.superseded'}")
        else:
            echo(f"{name}: a stage of an older plan; moved to {keep(root, folder, name, key)}")
    states = {s.name: status(root, s) for s in stages}
    echo(describe_plan(stages, states, root, recipe.threads, recipe.lanes))
    if dry_run:
        return [StageResult(s.name, states[s.name]) for s in stages]
    start = time.time()
    for stage in stages:
        if states[stage.name] == "rerun":
            echo(f"{stage.name}: settings changed; the old folder moved to {supersede(root, stage)}")
    if recipe.lanes > 1:
        pending = [s for s in stages if states[s.name] != "done"]
        done = {s.name for s in stages if states[s.name] == "done"}
        seconds = run_lanes(pending, done, root, recipe.lanes, recipe.threads, echo)
    else:
        seconds = {}
        for i, stage in enumerate(stages, 1):
            if states[stage.name] != "done":
                how = "resuming" if states[stage.name] == "resume" else "running"
                echo(f"\n==> [{i}/{len(stages)}] {stage.name} ({how})")
                resumed = sharded(stage, shards(stage, root, 1))  # an interrupted annotate: its shards
                seconds[stage.name] = run_stage(resumed, root, recipe.threads)
                echo(f"<== {stage.name} done in {seconds[stage.name]:.0f} s")
    results = [
        StageResult(
            s.name, states[s.name], seconds.get(s.name, 0.0), (read_manifest(root, s) or {}).get("outputs")
        )
        for s in stages
    ]
    echo(summary(results, root, time.time() - start))
    return results


def summary(results: list[StageResult], root: Path, wall: float) -> str:
    ran = [r for r in results if r.status != "done"]
    total = sum(r.seconds for r in ran)
    lines = [
        f"\npipeline finished in {wall / 60:.1f} min: {len(ran)} stages ran ({total / 60:.1f} min of stage "
        f"time), {len(results) - len(ran)} were done"
    ]
    report = next((r.outputs for r in results if r.name == "compare" and r.outputs), None)
    if report:
        lines.append(f"report:      {report['report']}\n             {report['markdown']}")
    for r in results:
        if r.outputs and r.outputs.get("checkpoint"):
            extra = ""
            if "reward_first" in r.outputs:
                extra = f"  (reward {r.outputs['reward_first']:.3f} -> {r.outputs['reward_last']:.3f})"
            lines.append(f"checkpoint:  {r.outputs['checkpoint']}{extra}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``cft-rl pipeline RECIPE [--dry-run] [--set section.key=value ...]``. The recipe is the config:
    its sections are checked against each stage's config dataclass (:mod:`cft_rl.pipeline.recipe`)."""
    import argparse

    p = argparse.ArgumentParser(prog="cft-rl pipeline", description=__doc__.splitlines()[0])
    p.add_argument("recipe", help="pipeline recipe YAML (e.g. recipes/toy/pipeline.yaml)")
    p.add_argument("--dry-run", action="store_true", help="print the plan: what runs, resumes or is skipped")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="override recipe settings"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    recipe = Recipe.load(args.recipe, args.set)
    with contextlib.suppress(KeyboardInterrupt):
        # flushed: a pipeline's output usually goes to a log or through tee, and its progress must show
        run_pipeline(recipe, dry_run=args.dry_run, echo=lambda line: print(line, flush=True))
        return 0
    print("\ninterrupted: rerun the same command to resume", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Recipe", "RecipeError", "StageError", "plan", "run_pipeline", "status"]
