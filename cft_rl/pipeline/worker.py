"""One lane of the pipeline (:mod:`cft_rl.pipeline.lanes`): a process that runs stage after stage.

    python -m cft_rl.pipeline.worker OUTPUT_DIR

Each line on stdin is a job, ``{"stage": {...}, "threads": N, "lane": {...}, "log": PATH}``: the stage
(a :class:`cft_rl.pipeline.recipe.Stage`, keyed by the parent's plan) runs through
:func:`cft_rl.pipeline.run.run_stage` as in a sequential run (same manifest, same resumption), its
output (this process's stdout and stderr, file descriptors included, so its jobs' subprocesses and
progress bars too) appended to ``log``; ``lane`` is what its manifest records of the lane. For each job
one line comes back on stdout: ``{"name": ..., "ok": true|false, "seconds"|"error": ...}``. A failed
stage (its traceback in its log) does not end the worker; the end of stdin or Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from cft_rl.pipeline.recipe import Stage
from cft_rl.pipeline.run import run_stage


@contextlib.contextmanager
def output_to(log: str):
    """Point file descriptors 1 and 2 (what subprocesses and C code write to) and ``sys.stdout`` and
    ``sys.stderr`` (Python's prints, wherever they pointed) at ``log``, appending, then back."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a", buffering=1) as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_job(job: dict, root: Path) -> dict:
    stage = Stage(**job["stage"])
    with output_to(job["log"]):
        try:
            seconds = run_stage(stage, root, job["threads"], job.get("lane"))
        except KeyboardInterrupt:
            print(f"{stage.name}: interrupted; rerun the pipeline to resume it", file=sys.stderr)
            raise
        except (ValueError, OSError) as exc:  # the jobs' own clear errors (StageError is a ValueError)
            print(f"{stage.name} failed: {exc}", file=sys.stderr)
            return {"name": stage.name, "ok": False, "error": str(exc)}
        except Exception as exc:  # a bug: its traceback goes to the log, and the lane goes on
            traceback.print_exc()
            return {"name": stage.name, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(f"{stage.name} done in {seconds:.0f} s")
    return {"name": stage.name, "ok": True, "seconds": seconds}


def main(argv: list[str] | None = None, replies=None) -> int:
    (root,) = argv if argv is not None else sys.argv[1:]
    # Replies go to the original stdout, which the jobs' output never reaches (it is pointed at logs).
    if replies is None:
        replies = os.fdopen(os.dup(1), "w", buffering=1)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        for line in sys.stdin:
            if line.strip():
                replies.write(json.dumps(run_job(json.loads(line), Path(root))) + "\n")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
