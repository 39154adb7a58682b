"""The process guard: per-job wall-clock limits that hold from any thread, and survival of crashes."""

import os
import signal
import threading
import time

import pytest

from cft_rl.verify.guard import CRASHED, TIMEOUT, GuardedPool


@pytest.fixture
def pool():
    p = GuardedPool("guard_jobs:sleep_then_echo", max_workers=2)
    p.warmup()
    yield p
    p.close()


def test_results_come_back_in_order_across_workers(pool):
    jobs = [(0.0, i) for i in range(50)]
    assert pool.map(jobs, timeout=5, workers=2) == list(range(50))


def _idle_processes(pool):
    return [w.proc for w in pool._idle]


def test_a_slow_job_times_out_and_the_rest_still_run(pool):
    jobs = [(0.0, "a"), (30.0, "slow"), (0.0, "b"), (0.0, "c")]
    before = _idle_processes(pool)
    out = pool.map(jobs, timeout=0.5, workers=1)
    assert out == ["a", TIMEOUT, "b", "c"]
    # The slow job was not waited for: its worker was killed at the limit and replaced, and b and c
    # ran on the replacement (whose start-up is not charged to them: they did not time out).
    busy = [p for p in before if p.poll() is not None]
    assert len(busy) == 1 and busy[0].returncode == -signal.SIGKILL
    assert len(pool._idle) == 2 and busy[0] not in _idle_processes(pool)


def test_the_timeout_fires_from_a_worker_thread(pool):
    """No signals involved: a job started from a thread that is not the main one is killed too."""
    out = []
    before = _idle_processes(pool)
    t = threading.Thread(target=lambda: out.extend(pool.map([(30.0, "x")], timeout=0.5)))
    t.start()
    t.join(25)  # a safety net only: the job itself would sleep 30 s
    assert out == [TIMEOUT]
    killed = [p for p in before if p.poll() is not None]
    assert len(killed) == 1 and killed[0].returncode == -signal.SIGKILL


def test_concurrent_threads_share_the_pool_without_mixing_results(pool):
    results = {}

    def run(k):
        results[k] = pool.map([(0.001, (k, i)) for i in range(20)], timeout=5, workers=2)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {k: [(k, i) for i in range(20)] for k in range(6)}


def test_a_crashing_job_is_reported_and_the_pool_recovers():
    p = GuardedPool("guard_jobs:die", max_workers=1)
    try:
        assert p.map([(3,)], timeout=5) == [CRASHED]
    finally:
        p.close()
    q = GuardedPool("guard_jobs:boom", max_workers=1)
    try:
        status, message = q.map([("bad row",)], timeout=5)[0]
        assert status == "error" and "RuntimeError: bad row" in message
    finally:
        q.close()


def test_a_worker_killed_from_outside_is_replaced():
    p = GuardedPool("guard_jobs:whoami", max_workers=1)
    try:
        first = p.map([()], timeout=5)[0]
        os.kill(first, signal.SIGKILL)
        time.sleep(0.2)
        second = p.map([()], timeout=10)[0]
        assert isinstance(second, int) and second != first
    finally:
        p.close()
