"""Run untrusted-time work (sympy on model output) with a hard wall-clock limit, from any thread.

math-verify's own timeout uses ``signal.alarm``: it works only in the main thread, and a hang in a
worker thread (TRL's async rewards, a thread pool, a web server) can never be interrupted because
Python threads cannot be killed. Processes can. So every job runs in a small pool of long-lived
worker processes; a job that overruns its limit gets its worker SIGKILLed and replaced, and the caller
gets a ``TIMEOUT`` result on time. The replacement starts at once, so its start-up (the job module's
imports) overlaps with whatever the caller does next.

The same code path serves one job and a batch: a batch spreads over several workers and keeps a few
jobs in flight per worker so the pipe round-trip overlaps with work. POSIX only (socket pairs and
``pass_fds``), like the trainers this serves.
"""

from __future__ import annotations

import atexit
import collections
import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait

TIMEOUT = "__timeout__"  # result of a job that overran its limit
CRASHED = "__crashed__"  # result of a job whose worker died (segfault, OOM kill)
READY = "__ready__"  # first message of a booted worker
BOOT_LIMIT_S = 120.0  # a worker that cannot import its module within this is broken, not slow
PIPELINE_DEPTH = 4  # jobs queued per worker: enough to hide the pipe latency, few to requeue on a kill


def _resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _orphan_watchdog(parent: int) -> None:
    """Exit when the parent dies, even while a job spins in sympy (the pipe read is not reached)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _worker_main(fd: int, target: str, parent: int) -> None:
    """Worker loop: import the job function once, then answer jobs in order until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which then kills us
    threading.Thread(target=_orphan_watchdog, args=(parent,), daemon=True).start()
    conn = Connection(fd)
    fn = _resolve(target)
    conn.send(READY)
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            result = fn(*args)
        except Exception as exc:  # a job must never take its worker down
            result = ("error", f"{type(exc).__name__}: {exc}"[:500])
        conn.send(result)


class _Worker:
    """One worker process, started as ``python -m cft_rl.verify.guard`` on a socket pair.

    A fresh interpreter rather than multiprocessing's spawn/forkserver: those re-run the user's
    ``__main__`` module in the child, which breaks scripts without an ``if __name__`` guard and
    re-executes training scripts' top-level code.
    """

    def __init__(self, target: str):
        ours, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        cmd = [sys.executable, "-m", "cft_rl.verify.guard", target, str(theirs.fileno()), str(os.getpid())]
        self.proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.ready = False
        self.started_at = time.monotonic()
        self.inflight: collections.deque[int] = collections.deque()  # job indices, in send order
        self.head_since = 0.0  # when the oldest in-flight job started running

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        finally:
            self.conn.close()


class GuardedPool:
    """A pool of worker processes running ``target`` (``"module:function"``) under a per-job limit.

    Thread-safe: concurrent callers check workers out, so no two callers share a pipe.
    """

    def __init__(self, target: str, max_workers: int | None = None):
        self.target = target
        self.max_workers = max_workers or default_workers()
        self._idle: list[_Worker] = []
        self._count = 0
        self._cond = threading.Condition()
        self._pid = os.getpid()

    # -- checking workers in and out ------------------------------------------------------------
    def _checkout(self, wanted: int) -> list[_Worker]:
        with self._cond:
            while not self._idle and self._count >= self.max_workers:
                self._cond.wait()
            self._tidy_idle()
            taken = self._idle[:wanted]
            del self._idle[:wanted]
            while len(taken) < wanted and self._count < self.max_workers:
                taken.append(self._spawn())
            return taken

    def _tidy_idle(self) -> None:
        """Drop idle workers that died since (OOM killer, a stray kill), and put booted ones first:
        a replacement still importing its module after a kill must not delay the next caller while
        an idle, booted worker is at hand. Called with the lock held."""
        for w in list(self._idle):
            try:
                alive = w.proc.poll() is None
                if alive and not w.ready and w.conn.poll(0):
                    w.ready = w.conn.recv() == READY
            except (EOFError, OSError):
                alive = False
            if not alive:
                self._idle.remove(w)
                w.conn.close()
                self._count -= 1
        self._idle.sort(key=lambda w: not w.ready)

    def _spawn(self) -> _Worker:
        self._count += 1
        return _Worker(self.target)

    def _checkin(self, workers: Sequence[_Worker]) -> None:
        with self._cond:
            self._idle.extend(workers)
            self._cond.notify_all()

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        with self._cond:
            self._count -= 1
            self._cond.notify_all()

    def warmup(self, n: int | None = None) -> None:
        """Start ``n`` workers now and wait until they are ready, so later limits exclude start-up."""
        workers = self._checkout(n or self.max_workers)
        try:
            for w in workers:
                if not w.ready and w.conn.poll(BOOT_LIMIT_S) and w.conn.recv() == READY:
                    w.ready = True
        finally:
            self._checkin([w for w in workers if w.ready])
            for w in workers:
                if not w.ready:
                    self._retire(w)

    def close(self) -> None:
        with self._cond:
            workers, self._idle = self._idle, []
        for w in workers:
            self._retire(w)

    # -- running jobs -----------------------------------------------------------------------------
    def map(self, jobs: Sequence[tuple], timeout: float, workers: int = 1) -> list:
        """Run every job; each result is the function's return value, ``TIMEOUT`` or ``CRASHED``.

        ``timeout`` bounds each job's own running time; time spent queued behind other jobs of the
        same call is not charged to it, and neither is a worker's one-off start.
        """
        if not jobs:
            return []
        results: list = [None] * len(jobs)
        pending = collections.deque(range(len(jobs)))
        crew = self._checkout(max(1, min(workers, len(jobs))))
        try:
            while pending or any(w.inflight for w in crew):
                for w in crew:
                    self._feed(w, jobs, pending)
                self._collect(crew, results, pending, timeout)
        finally:
            self._checkin([w for w in crew if not w.inflight])
            for w in crew:
                if w.inflight:  # interrupted mid-call (KeyboardInterrupt): its pipe is out of step
                    self._retire(w)
        return results

    def _feed(self, w: _Worker, jobs: Sequence[tuple], pending: collections.deque) -> None:
        while pending and len(w.inflight) < PIPELINE_DEPTH:
            i = pending.popleft()
            if not w.inflight:
                w.head_since = time.monotonic()
            w.inflight.append(i)
            try:
                w.conn.send(jobs[i])
            except OSError:  # the worker died while idle (killed from outside): retry elsewhere
                self._replace(w, pending, drop_head=False)
                return

    def _collect(self, crew: list[_Worker], results: list, pending: collections.deque, timeout: float):
        busy = [w for w in crew if w.inflight]
        now = time.monotonic()
        deadlines = [self._deadline(w, timeout) for w in busy]
        ready = wait([w.conn for w in busy], timeout=max(0.0, min(deadlines) - now))
        for slot, w in enumerate(busy):
            if w.conn in ready:
                self._receive(w, results, pending)
            elif time.monotonic() >= deadlines[slot]:
                results[w.inflight[0]] = TIMEOUT if w.ready else CRASHED
                self._replace(w, pending, drop_head=True)

    def _deadline(self, w: _Worker, timeout: float) -> float:
        return w.head_since + timeout if w.ready else w.started_at + BOOT_LIMIT_S

    def _receive(self, w: _Worker, results: list, pending: collections.deque) -> None:
        try:
            message = w.conn.recv()
        except (EOFError, OSError):  # the worker died under its current job
            results[w.inflight[0]] = CRASHED
            self._replace(w, pending, drop_head=True)
            return
        if message == READY:
            w.ready = True
        else:
            results[w.inflight.popleft()] = message
        w.head_since = time.monotonic()

    def _replace(self, w: _Worker, pending: collections.deque, drop_head: bool) -> None:
        """Kill ``w`` and start a fresh worker in its slot; its unanswered jobs go back to the front
        of the queue, except the culprit (``drop_head``), which already has its result."""
        inflight = list(w.inflight)[1:] if drop_head else list(w.inflight)
        pending.extendleft(reversed(inflight))
        w.inflight.clear()
        w.kill()
        fresh = _Worker(self.target)  # same slot: the pool's count is unchanged
        for attr in ("conn", "proc", "ready", "started_at", "inflight", "head_since"):
            setattr(w, attr, getattr(fresh, attr))


def default_workers() -> int:
    """One worker per core, shared among the processes of one machine under ``accelerate launch``."""
    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, (os.cpu_count() or 1) // max(1, local_procs))


_POOLS: dict[str, GuardedPool] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(target: str) -> GuardedPool:
    """One pool per job function per process (a forked child gets its own, never its parent's)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(target)
        if pool is None or pool._pid != os.getpid():
            pool = _POOLS[target] = GuardedPool(target)
        return pool


def close_shared_pool(target: str) -> None:
    """Stop the shared pool's workers (their caches go with them); the next use starts fresh ones."""
    with _POOLS_LOCK:
        pool = _POOLS.pop(target, None)
    if pool is not None and pool._pid == os.getpid():
        pool.close()


@atexit.register
def _close_pools() -> None:
    for pool in list(_POOLS.values()):
        if pool._pid == os.getpid():
            pool.close()


if __name__ == "__main__":
    _worker_main(int(sys.argv[2]), sys.argv[1], int(sys.argv[3]))
