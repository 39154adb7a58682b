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


def test_a_slow_job_times_out_on_time_and_the_rest_still_run(pool):
    jobs = [(0.0, "a"), (30.0, "slow"), (0.0, "b"), (0.0, "c")]
    start = time.monotonic()
    out = pool.map(jobs, timeout=0.5, workers=1)
    elapsed = time.monotonic() - start
    assert out == ["a", TIMEOUT, "b", "c"]
    # the slow job is charged 0.5 s; the replacement worker's start-up is not charged to b and c
    assert elapsed < 0.5 + 10


def test_timeout_bound_holds_from_a_worker_thread(pool):
    out, took = [], []

    def run():
        start = time.monotonic()
        out.extend(pool.map([(30.0, "x")], timeout=0.5))
        took.append(time.monotonic() - start)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert out == [TIMEOUT]
    assert took[0] < 0.5 + 1.0


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
