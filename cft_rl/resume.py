"""What a standalone ``cft-rl sft``/``cft-rl grpo`` does with an ``output_dir`` that already holds a run.

- a **finished** run (``trainer_state.json`` in ``output_dir`` itself, which the job writes with
  ``save_state`` after the final model) is reported and skipped;
- an **interrupted** run resumes from its last complete checkpoint (``checkpoint-N`` holding
  ``trainer_state.json``, which the trainer writes after the weights and optimizer, so one cut by a
  kill is passed over for the one before): the rule :mod:`cft_rl.pipeline.run` uses, so a stage the
  pipeline reruns and a job rerun by hand pick the same checkpoint;
- ``resume_from_checkpoint`` given explicitly (the pipeline passes it) is used as it is;
- ``--overwrite_output_dir`` trains from step 0; the old checkpoints and final state are removed
  first, since a later resume would otherwise pick a stale checkpoint of the old run.

And how such a run ends under a launcher: :func:`end_processes`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

STATE = "trainer_state.json"


@dataclass
class OutputDirArguments:
    """What to do with an ``output_dir`` that already holds a run (a script argument of ``sft``/``grpo``).

    Parameters:
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Train from step 0 even when ``output_dir`` holds a run: its checkpoints and final
            ``trainer_state.json`` are deleted first, and the final model is overwritten. Without it, a
            finished run is reported and skipped, and an interrupted one resumes from its last
            checkpoint. (``TrainingArguments`` of transformers 5 no longer has this field.)
    """

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train from step 0 even if output_dir holds a run (its checkpoints are deleted)."},
    )


def checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete ``checkpoint-N`` in ``folder``, by step."""
    folder = Path(folder)
    found = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else ():
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / STATE).is_file():
            found.append((int(step), path))
    return sorted(found)


def finished_step(folder: str | Path) -> int | None:
    """The final step of a finished run in ``folder``; None if it holds none."""
    state = Path(folder) / STATE
    if not state.is_file():
        return None
    try:
        return int(json.loads(state.read_text()).get("global_step", 0))
    except (json.JSONDecodeError, ValueError):  # cut by a kill while the run was finishing
        return None


@dataclass
class RunPlan:
    """``skip`` a finished run, or train with ``resume`` (a checkpoint path or None: from step 0);
    ``message`` says which and why (None: a fresh folder, nothing to say)."""

    skip: bool
    resume: str | bool | None
    message: str | None = None


def plan_run(output_dir: str | Path, resume_from_checkpoint=None, overwrite: bool = False) -> RunPlan:
    """What a run into ``output_dir`` does; see the module docstring. Reads only, deletes nothing."""
    done = finished_step(output_dir)
    if overwrite:
        if done is None and not checkpoints(output_dir):
            return RunPlan(False, None)
        return RunPlan(False, None, f"{output_dir}: --overwrite_output_dir, training from step 0")
    if done is not None:
        return RunPlan(
            True,
            None,
            f"{output_dir} holds a finished run (step {done}, {STATE}); skipped. Pass "
            "--overwrite_output_dir to train it again, or choose another output_dir",
        )
    if resume_from_checkpoint:
        return RunPlan(False, resume_from_checkpoint, f"resuming from {resume_from_checkpoint}")
    found = checkpoints(output_dir)
    if not found:
        return RunPlan(False, None)
    step, path = found[-1]
    return RunPlan(
        False,
        str(path),
        f"{output_dir} holds an interrupted run: resuming from its last checkpoint, {path.name} "
        f"(step {step}); pass --overwrite_output_dir to start again",
    )


def clear_run(output_dir: str | Path) -> None:
    """Delete the checkpoints and final state of the run in ``output_dir`` (for --overwrite_output_dir)."""
    for path in Path(output_dir).glob("checkpoint-*"):  # incomplete ones too
        if path.is_dir():
            shutil.rmtree(path)
    (Path(output_dir) / STATE).unlink(missing_ok=True)


def prepare_output_dir(args, overwrite: bool) -> bool:
    """Apply :func:`plan_run` to a trainer config ``args``: print what happens (main process), set
    ``args.resume_from_checkpoint``, clear the folder for an overwrite; returns False to skip the run."""
    from accelerate import PartialState  # pulls in torch: plan_run and the arguments stay light

    state = PartialState()
    plan = plan_run(args.output_dir, args.resume_from_checkpoint, overwrite)
    if plan.message and state.is_main_process:
        print(plan.message, flush=True)
    if plan.skip:
        return False
    # Every process has read the folder before the main one clears it.
    state.wait_for_everyone()
    if overwrite and state.is_main_process:
        clear_run(args.output_dir)
    state.wait_for_everyone()
    args.resume_from_checkpoint = plan.resume
    return True


def end_processes() -> None:
    """Tear down the process group at the end of a clean run under a launcher (no-op in one process).

    Left to interpreter shutdown, gloo's worker threads may still be releasing a finished collective's
    tensors, which needs the GIL, and the process aborts (pytorch/pytorch#190489); destroyed in that
    same window, the group deadlocks on the GIL (seen: the runloop thread waiting for it in
    ~AsyncAllgatherWork while the main thread joins it). So: a barrier, after which every collective
    is done, a pause that lets gloo's threads take the GIL to release them, then the teardown. Only
    after a clean run: a rank that failed must not wait on the others.
    """
    from accelerate import PartialState  # pulls in torch: plan_run and the arguments stay light

    state = PartialState()
    if state.num_processes > 1:
        state.wait_for_everyone()
        time.sleep(0.2)
    state.destroy_process_group()
