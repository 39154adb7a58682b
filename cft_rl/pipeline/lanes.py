"""Independent stages side by side: the recipe's ``lanes: N`` runs up to N stages at once.

Why: on a small CPU most of a toy stage's time is per-token Python and kernel-launch overhead, which a
second torch thread does not share. Measured on 2 cores (docs/benchmarks.md, section ``lanes``): one
GRPO run on two threads against two GRPO runs side by side on one thread each. The plan has plenty of
independent work (every arm's SFT runs, every GRPO seed, every eval), so running it in lanes is the
cheapest speed-up there is.

How: each lane is a worker process, ``python -m cft_rl.pipeline.worker``, that runs stage after stage
through :func:`cft_rl.pipeline.run.run_stage`, as a sequential run does (the same manifests,
resumption and threads record), each stage's output going to ``<stage folder>/stage.log``. A stage
starts once every stage it reads from is done, in plan order. Each lane gets an equal share of the
torch threads (:func:`cft_rl.pipeline.threads.lane_threads`). The annotate stage splits its rows
across every lane free when it starts (it shards by ``RANK``/``WORLD_SIZE``,
:mod:`cft_rl.annotate.job`), under torch's own launcher, since every other stage waits for it anyway.

A stage that fails stops new stages from starting; the ones running finish (their work is kept), and
the error quotes the end of the failed stage's log. Ctrl-C stops every lane; the rerun resumes them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cft_rl.pipeline.recipe import Stage
from cft_rl.pipeline.threads import lane_threads

LOG = "stage.log"
POLL_S = 0.5
HEARTBEAT_S = 60.0  # how often the state of every running stage is printed
SHARDED_KINDS = ("annotate",)  # jobs that split their rows across processes by RANK/WORLD_SIZE


class LaneError(ValueError):  # a ValueError, so `cft-rl` prints it without a traceback
    """A stage failed in its lane; the message names it and quotes the end of its log."""


@dataclass
class Running:
    stage: Stage
    process: Job
    log: Path
    started: float
    width: int  # lanes it takes: 1, or the annotate stage's shards
    threads: int


def log_path(root: Path, stage: Stage) -> Path:
    return root / stage.name / LOG


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PROGRESS = re.compile(r"\d+(\.\d+)?/\d+(\.\d+)? ?\w* ?\[")  # a progress bar's "12/50 [" or "3.0/6 rows ["


def last_line(path: Path, size: int = 8192) -> str:
    """What a stage is doing, from the end of its log: the last progress-bar update if there is one
    (carriage-return updates counted as lines), else the last non-empty line."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    text = ANSI.sub("", text).replace("\r", "\n")  # nested bars move the cursor with escape codes
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    bars = [line for line in lines if PROGRESS.search(line)]
    return (bars or lines or [""])[-1]


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").replace("\r", "\n").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def shards(stage: Stage, root: Path, free: int) -> int:
    """The processes a stage runs in: 1, except for an annotate stage with no launcher of its own, which
    takes the ``free`` lanes; or, if it was interrupted, as many as it started with, since its finished
    rows resume only under that count (:func:`cft_rl.annotate.job.shard_count`)."""
    if stage.kind not in SHARDED_KINDS or stage.launch:
        return 1
    from cft_rl.annotate.job import shard_count

    return shard_count(root / stage.name) or free


def sharded(stage: Stage, shards: int) -> Stage:
    """The annotate stage under torch's launcher, one process per shard (it shards by ``RANK`` and
    ``WORLD_SIZE``); unchanged for one shard. ``launch`` is not keyed, so this reruns nothing."""
    if shards < 2:
        return stage
    python = shlex.quote(sys.executable)  # the launcher is split as a shell line
    launch = f"{python} -m torch.distributed.run --standalone --nproc_per_node {shards}"
    return dataclasses.replace(stage, launch=launch)


class Job:
    """A stage running in a worker: ``poll()`` is None until it ends, then 0 (done) or 1 (failed)."""

    def __init__(self, worker: Worker, name: str):
        self.worker, self.name, self.returncode = worker, name, None

    def poll(self) -> int | None:
        if self.returncode is None:
            reply = self.worker.reply()
            if reply is not None:
                self.returncode = 0 if reply.get("ok") else 1
                self.worker.job = None
            elif self.worker.process.poll() is not None:  # the worker died (killed, out of memory)
                self.returncode = self.worker.process.returncode or 1
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.worker.process.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        return self.worker.process.wait(timeout)

    def kill(self) -> None:
        self.worker.process.kill()


class Worker:
    """One lane's process, ``python -m cft_rl.pipeline.worker``, kept for stage after stage: importing
    torch, transformers and TRL takes seconds, which a short stage (an eval) would otherwise pay
    again each time. Stages get a line of JSON on its stdin and answer one on its stdout; their own
    output goes to their logs. A sequential run puts every stage through one process too."""

    def __init__(self, root: Path, threads: int):
        cmd = [sys.executable, "-m", "cft_rl.pipeline.worker", str(root)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
        )
        self.job: Job | None = None

    def submit(self, stage: Stage, threads: int, lane: dict, log: Path) -> Job:
        message = {"stage": dataclasses.asdict(stage), "threads": threads, "lane": lane, "log": str(log)}
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        self.job = Job(self, stage.name)
        return self.job

    def reply(self) -> dict | None:
        """The worker's answer if it has written one (never blocks)."""
        ready, _, _ = select.select([self.process.stdout], [], [], 0)
        line = self.process.stdout.readline() if ready else ""
        return json.loads(line) if line.strip() else None


class Workers:
    """Up to ``lanes`` workers, started as needed; :meth:`launch` hands a stage to an idle one."""

    def __init__(self, lanes: int):
        self.lanes, self.workers = lanes, []

    def launch(self, stage: Stage, root: Path, threads: int, lane: dict) -> Job:
        log = log_path(root, stage)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as handle:  # appended: a rerun keeps the earlier attempts' output
            handle.write(f"\n===== {time.strftime('%Y-%m-%dT%H:%M:%S')} {stage.name}: {threads} thread(s)\n")
        self.workers = [w for w in self.workers if w.process.poll() is None]
        idle = next((w for w in self.workers if w.job is None), None)
        if idle is None:
            idle = Worker(root, threads)
            self.workers.append(idle)
        return idle.submit(stage, threads, lane, log)

    def close(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.stdin.close()  # end of input: the worker exits
        for worker in self.workers:
            try:
                worker.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.process.kill()


def _ready(pending: list[Stage], done: set[str], failed: bool) -> Stage | None:
    if failed:
        return None
    return next((s for s in pending if all(name in done for name in s.inputs)), None)


def _stop(running: list[Running]) -> None:
    """Ctrl-C: pass it on to every lane (a signal to this process alone would not reach them), then wait."""
    for lane in running:
        if lane.process.poll() is None:
            lane.process.send_signal(signal.SIGINT)
    deadline = time.time() + 30
    for lane in running:
        try:
            lane.process.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            lane.process.kill()


class Schedule:
    """The state of a run in lanes: what waits, what runs, what is done or failed."""

    def __init__(self, pending, done, root, lanes, threads_setting, echo, launch):
        self.pending, self.done, self.running = list(pending), set(done), []
        self.root, self.lanes, self.threads_setting = Path(root), lanes, threads_setting
        self.echo, self.launch = echo, launch
        self.seconds: dict[str, float] = {}
        self.failures: list[str] = []
        self.total, self.beat = len(self.pending), time.time()

    def start_next(self) -> bool:
        """Start the first waiting stage whose inputs are done, if a lane is free; False if none could."""
        free = self.lanes - sum(lane.width for lane in self.running)
        stage = _ready(self.pending, self.done, bool(self.failures)) if free > 0 else None
        if stage is None:
            return False
        self.pending.remove(stage)
        width = shards(stage, self.root, free)
        own = sum(r.threads for r in self.running)
        threads = lane_threads(self.threads_setting, self.lanes, own) * width
        stage = sharded(stage, width)
        lane = {"lanes": self.lanes, "recipe_threads": self.threads_setting}  # for the manifest
        job = self.launch(stage, self.root, threads, lane)
        log = log_path(self.root, stage)
        self.running.append(Running(stage, job, log, time.time(), width, threads))
        how = f"{width} lanes, {width} shards" if width > 1 else "1 lane"
        self.echo(f"==> {stage.name} started ({how}, {threads} torch thread(s)); log {log}")
        return True

    def reap(self) -> None:
        """Take in the stages that ended."""
        for lane in [r for r in self.running if r.process.poll() is not None]:
            self.running.remove(lane)
            took, name = time.time() - lane.started, lane.stage.name
            if lane.process.returncode == 0:
                self.done.add(name)
                self.seconds[name] = took
                count = self.total - len(self.pending) - len(self.running)
                self.echo(f"<== {name} done in {took:.0f} s ({count} of {self.total} stages done)")
            else:
                self.failures.append(name)
                self.echo(f"!!! {name} failed (exit {lane.process.returncode}); log {lane.log}")

    def heartbeat(self) -> None:
        """Every HEARTBEAT_S, each running stage's progress line from its log."""
        if time.time() - self.beat < HEARTBEAT_S or not self.running:
            return
        self.beat = time.time()
        for lane in self.running:
            took = time.time() - lane.started
            self.echo(f"... {lane.stage.name} ({took:.0f} s): {last_line(lane.log)[:160]}")

    def run(self) -> None:
        while self.pending or self.running:
            if self.start_next():
                continue  # fill every free lane before waiting
            if not self.running:  # nothing can start: inputs that failed, or never planned
                break
            time.sleep(POLL_S)
            self.reap()
            self.heartbeat()


def run_lanes(
    pending: list[Stage],
    done: set[str],
    root: Path,
    lanes: int,
    threads_setting,
    echo: Callable[[str], None] = print,
    launch: Callable[..., Job] | None = None,
) -> dict[str, float]:
    """Run ``pending`` (in plan order) in up to ``lanes`` processes at once, each once its inputs are in
    ``done``; returns each stage's seconds. Raises :class:`LaneError` once the lanes have drained if a
    stage failed. ``launch``: how a stage starts (tests); by default, in :class:`Workers`."""
    workers = Workers(lanes) if launch is None else None
    schedule = Schedule(pending, done, root, lanes, threads_setting, echo, launch or workers.launch)
    try:
        schedule.run()
    except KeyboardInterrupt:
        _stop(schedule.running)
        raise
    finally:
        if workers is not None:
            workers.close()
    if schedule.failures:
        log = Path(root) / schedule.failures[0] / LOG
        raise LaneError(
            f"{', '.join(schedule.failures)} failed; stages waiting on them did not start. The end of "
            f"{log}:\n{tail(log)}\nfix the cause and rerun the same command: finished stages are kept"
        )
    return schedule.seconds
