"""Stages side by side (``lanes``, issue 17): the scheduler on fake processes (order, dependencies, lane
count, the sharded annotate stage, failures, Ctrl-C), each lane's thread share, the progress line read
from a log, the worker's exit codes, and the recipe key. The real thing, end to end, is in
tests/test_pipeline.py (``test_lanes_run_the_same_pipeline``)."""

from __future__ import annotations

import io
import json
import signal
import sys
from pathlib import Path

import pytest

import cft_rl.pipeline.lanes as lanes
import cft_rl.pipeline.threads as threads
from cft_rl.cpu import Load
from cft_rl.pipeline.lanes import LaneError, last_line, run_lanes
from cft_rl.pipeline.recipe import Recipe, RecipeError, Stage, plan

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "toy" / "pipeline_smoke.yaml"


class FakeProcess:
    """A stage's process that ends after ``ticks`` polls, with ``code``."""

    def __init__(self, ticks: int, code: int = 0):
        self.ticks, self.code, self.returncode, self.signals = ticks, code, None, []

    def poll(self):
        if self.returncode is None:
            self.ticks -= 1
            if self.ticks <= 0:
                self.returncode = self.code
        return self.returncode

    def send_signal(self, sig):
        self.signals.append(sig)
        self.returncode = -sig

    def wait(self, timeout=None):
        return self.returncode

    def kill(self):
        self.returncode = -9


class Clock:
    """Records what started when, and which stages were running at each start."""

    def __init__(self, ticks: dict[str, int] | None = None, fail: set[str] = frozenset()):
        self.ticks, self.fail = ticks or {}, fail
        self.started: list[tuple[str, int, int, str | None]] = []  # name, threads, running, launch
        self.finished_before: dict[str, set[str]] = {}  # stages seen finished when each started
        self.processes: dict[str, FakeProcess] = {}

    def launch(self, stage, root, threads_, lane):
        running = [n for n, p in self.processes.items() if p.returncode is None]
        self.finished_before[stage.name] = {n for n, p in self.processes.items() if p.returncode == 0}
        self.started.append((stage.name, threads_, len(running), stage.launch))
        process = FakeProcess(self.ticks.get(stage.name, 2), 1 if stage.name in self.fail else 0)
        self.processes[stage.name] = process
        return process

    def order(self) -> list[str]:
        return [name for name, *_ in self.started]


def _stage(name, kind="sft", inputs=()):
    return Stage(name, kind, {}, list(inputs))


DIAMOND = [
    _stage("toy", "toy"),
    _stage("annotate", "annotate", ["toy"]),
    _stage("sft/a", "sft", ["annotate"]),
    _stage("sft/b", "sft", ["annotate"]),
    _stage("eval/base", "eval", ["toy"]),
    _stage("grpo/a", "grpo", ["sft/a"]),
    _stage("grpo/b", "grpo", ["sft/b"]),
    _stage("compare", "compare", ["grpo/a", "grpo/b", "eval/base"]),
]


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(lanes, "POLL_S", 0.0)
    monkeypatch.setattr(lanes.time, "sleep", lambda s: None)


def _run(clock, stages=DIAMOND, n=2, done=(), setting=1, tmp_path=Path("/nonexistent")):
    lines = []
    seconds = run_lanes(stages, set(done), tmp_path, n, setting, lines.append, launch=clock.launch)
    return seconds, lines


def test_every_stage_starts_after_its_inputs_and_never_more_than_the_lanes():
    clock = Clock({"sft/a": 5, "grpo/a": 9})
    seconds, _ = _run(clock, n=2, setting=2)
    assert set(seconds) == {s.name for s in DIAMOND}
    for stage in DIAMOND:
        assert set(stage.inputs) <= clock.finished_before[stage.name], stage.name
    for name, _threads, running, _launch in clock.started:
        assert running < 2, f"{name} started with {running} stages running in 2 lanes"
    order = clock.order()
    assert order[:4] == ["toy", "annotate", "sft/a", "sft/b"]  # annotate first, though eval/base was ready
    assert order[-1] == "compare"
    # while sft/a and then grpo/a run long, the other lane takes grpo/b and eval/base
    assert set(order[4:6]) == {"grpo/b", "eval/base"} and order[6] == "grpo/a"


def test_the_annotate_stage_takes_every_free_lane_as_shards():
    clock = Clock()
    _, lines = _run(clock, n=2, setting=2)
    annotate = next(s for s in clock.started if s[0] == "annotate")
    assert annotate[1] == 2  # two lanes' threads, one per shard
    assert annotate[3].endswith("-m torch.distributed.run --standalone --nproc_per_node 2")
    assert annotate[2] == 0  # nothing ran beside it: eval/base waited although it was ready
    assert any("annotate started (2 lanes, 2 shards" in line for line in lines)
    others = [s for s in clock.started if s[0] != "annotate"]
    assert all(launch is None and threads_ == 1 for _, threads_, _, launch in others)


def test_a_stage_with_its_own_launcher_is_not_sharded():
    stages = [Stage("annotate", "annotate", {}, [], launch="accelerate launch --num_processes 4")]
    clock = Clock()
    _run(clock, stages, n=2)
    assert clock.started[0][3] == "accelerate launch --num_processes 4"


def test_one_lane_runs_in_plan_order_and_done_stages_are_skipped():
    clock = Clock()
    pending = [s for s in DIAMOND if s.name not in ("toy", "annotate")]
    _run(clock, pending, n=1, done={"toy", "annotate"})
    assert clock.order() == [s.name for s in pending]


def test_a_failed_stage_stops_new_starts_and_quotes_its_log(tmp_path):
    (tmp_path / "sft" / "a").mkdir(parents=True)
    (tmp_path / "sft" / "a" / "stage.log").write_text("loading\nValueError: sft/a: no rows to train on\n")
    clock = Clock({"sft/a": 1, "sft/b": 6}, fail={"sft/a"})
    with pytest.raises(LaneError) as error:
        _run(clock, n=2, tmp_path=tmp_path)
    message = str(error.value)
    assert "sft/a failed" in message and "no rows to train on" in message and "rerun" in message
    assert clock.order() == ["toy", "annotate", "sft/a", "sft/b"]  # nothing new after the failure
    assert clock.processes["sft/b"].returncode == 0  # the running one finished, its work kept


def test_ctrl_c_stops_every_lane(monkeypatch):
    clock = Clock({"toy": 1, "annotate": 1, "sft/a": 100, "sft/b": 100})
    calls = {"n": 0}

    def sleep(_):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(lanes.time, "sleep", sleep)
    with pytest.raises(KeyboardInterrupt):
        _run(clock, n=2)
    assert clock.processes["sft/a"].signals == [signal.SIGINT]
    assert clock.processes["sft/b"].signals == [signal.SIGINT]


# --- threads, progress, worker, recipe -------------------------------------------------------------


def test_each_lane_gets_an_equal_share_of_the_threads(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    assert threads.lane_threads(None, 2) == 4  # torch's default (every core), shared
    assert threads.lane_threads(5, 2) == 2
    assert threads.lane_threads(1, 4) == 1  # never below 1
    monkeypatch.setattr(threads, "measure_load", lambda: Load(4, 2.1, "/proc/stat"))
    assert threads.lane_threads("auto", 2) == 1  # 2.1 busy cores of another job: 2 free, 1 per lane
    assert threads.lane_threads("auto", 2, own=2) == 2  # the busy cores were our own lanes


def test_the_progress_line_is_the_last_bar_update(tmp_path):
    log = tmp_path / "stage.log"
    log.write_text(
        "loading\n 10%|#  | 5/50 [00:10<01:30, 2.0s/it]\r 12%|#  | 6/50 [00:12<01:28, 2.0s/it]\r"
        "\nUserWarning: something\n  warnings.warn(\n"
    )
    assert last_line(log) == "12%|#  | 6/50 [00:12<01:28, 2.0s/it]"
    log.write_text("loading\nstep one\n")
    assert last_line(log) == "step one"
    assert last_line(tmp_path / "missing.log") == ""


def test_the_worker_runs_each_job_into_its_log_and_survives_a_failure(monkeypatch, tmp_path):
    import cft_rl.pipeline.worker as worker

    seen = []

    def run_stage(stage, root, threads_, lane):
        seen.append((stage, root, threads_, lane))
        print(f"training {stage.name}")
        if stage.name == "bad":
            raise ValueError("bad: the dataset has no answer column")
        if stage.name == "bug":
            raise KeyError("oops")
        return 3.0

    monkeypatch.setattr(worker, "run_stage", run_stage)
    stage = Stage("sft/a", "sft", {"lr": 1}, ["annotate"], None, "abc")
    jobs = [
        {
            "stage": {**stage.__dict__, "name": name},
            "threads": 1,
            "lane": {"lanes": 2},
            "log": str(tmp_path / name),
        }
        for name in ("sft-a", "bad", "bug")
    ]
    stdin = "\n".join(json.dumps(job) for job in jobs) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    replies = io.StringIO()
    assert worker.main([str(tmp_path)], replies) == 0
    answers = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert answers == [
        {"name": "sft-a", "ok": True, "seconds": 3.0},
        {"name": "bad", "ok": False, "error": "bad: the dataset has no answer column"},
        {"name": "bug", "ok": False, "error": "KeyError: 'oops'"},
    ]
    assert seen[0] == (Stage(**jobs[0]["stage"]), tmp_path, 1, {"lanes": 2})
    assert (tmp_path / "sft-a").read_text() == "training sft-a\nsft-a done in 3 s\n"
    assert "bad failed: bad: the dataset has no answer column" in (tmp_path / "bad").read_text()
    assert "Traceback" in (tmp_path / "bug").read_text() and "KeyError" in (tmp_path / "bug").read_text()


def test_the_recipe_takes_a_lane_count(tmp_path):
    load = lambda *o: Recipe.load(SMOKE, [f"output_dir={tmp_path}", *o])  # noqa: E731
    assert load().lanes == 1 and load("lanes=3").lanes == 3
    assert [s.key for s in plan(load("lanes=3"))] == [s.key for s in plan(load())]  # reruns nothing
    with pytest.raises(RecipeError, match="lanes = 0: give at least 1"):
        load("lanes=0")
    with pytest.raises(RecipeError, match=r"lanes = 'two' \(str\) does not fit Recipe\.lanes"):
        load("lanes=two")
    for name in ("pipeline.yaml", "experiment.yaml"):  # the toy recipes run two lanes
        assert Recipe.load(ROOT / "recipes" / "toy" / name).lanes == 2


def test_an_interrupted_annotate_stage_resumes_with_its_shard_count(tmp_path, monkeypatch):
    # Its finished rows are in shard files named by the count: another count would redo them, and the
    # merge would refuse the mix. So it restarts with as many workers, in lanes or not.
    shards = tmp_path / "annotate" / "shards"
    shards.mkdir(parents=True)
    (shards / "shard-00001-of-00003.jsonl").write_text("")
    annotate = Stage("annotate", "annotate", {}, [])
    assert lanes.shards(annotate, tmp_path, 2) == 3
    assert lanes.shards(Stage("annotate", "annotate", {}, [], launch="accelerate launch"), tmp_path, 2) == 1
    assert lanes.shards(Stage("sft/a", "sft", {}, []), tmp_path, 2) == 1
    clock = Clock()
    _run(clock, [annotate], n=2, tmp_path=tmp_path)
    assert clock.started[0][3].endswith("--nproc_per_node 3")

    import cft_rl.pipeline.run as pipeline

    seen = {}
    monkeypatch.setattr(
        pipeline, "RUNNERS", dict.fromkeys(pipeline.RUNNERS, lambda s, r: seen.setdefault(s.name, s) and {})
    )
    recipe = Recipe.load(SMOKE, [f"output_dir={tmp_path}", "threads=null"])
    stage = next(s for s in plan(recipe) if s.name == "annotate")
    pipeline.write_manifest(tmp_path, stage, status="running")  # interrupted, same settings: resumes
    pipeline.run_pipeline(recipe, echo=lambda *_: None)
    assert seen["annotate"].launch.endswith("--nproc_per_node 3") and seen["sft/full"].launch is None
    (shards / "shard-00000-of-00001.jsonl").write_text("")
    with pytest.raises(ValueError, match="must hold the shards of one run; found counts \\[1, 3\\]"):
        lanes.shards(annotate, tmp_path, 2)


def test_the_demo_benchmark_counts_overlapping_stages_once(load_script):
    # scripts/bench_demo.py: the wall time is the union of the stages' spans (each ends at its
    # `finished` and lasted its `seconds`), so two lanes' stages side by side count once, and a pause
    # between two runs (the demo, then the experiment's remaining stages) not at all.
    busy_seconds = load_script("bench_demo").busy_seconds

    spans = [
        (10, "2026-12-07T10:00:10"),  # 10:00:00-10:00:10
        (5, "2026-12-07T10:00:08"),  # 10:00:03-10:00:08, inside the first
        (20, "2026-12-07T10:00:25"),  # 10:00:05-10:00:25, overlaps the first: union so far 25 s
        (30, "2026-12-07T11:00:30"),  # an hour later, alone: +30 s
    ]
    assert busy_seconds(spans) == 55.0
    assert busy_seconds([]) == 0.0


def test_the_demo_benchmark_tells_several_runs_from_one(load_script):
    # A pause with no stage running means the stages came from more than one run: the wall time then
    # must not be called a from-scratch time.
    bench = load_script("bench_demo")
    one_run = [(10, "2026-12-07T10:00:10"), (20, "2026-12-07T10:00:40")]  # a 10 s scheduling gap
    two_runs = [*one_run, (30, "2026-12-07T10:05:40")]  # starts 10:05:10, 270 s after the last finish
    assert bench.pauses(one_run) == []
    assert bench.pauses(two_runs) == [270.0]
    manifests = [{"seconds": s, "finished": f} for s, f in two_runs]
    assert "Not a from-scratch time" in bench.wall_sentence(manifests, 60.0, 90)
    assert "2 pipeline runs" in bench.wall_sentence(manifests, 60.0, 90)
    assert "From scratch" in bench.wall_sentence(manifests[:2], 30.0, 90)


def test_the_demo_benchmark_reads_only_the_stages_its_compare_read(load_script, tmp_path):
    # The demo run in the experiment's folder leaves the experiment's extra arms there: the benchmark
    # must count compare and what it read from, transitively, and nothing else.
    bench = load_script("bench_demo")

    def stage(name, inputs=(), status="done"):
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {
            "stage": name,
            "kind": name.split("/")[0],
            "status": status,
            "inputs": {i: i for i in inputs},
        }
        (folder / "manifest.json").write_text(json.dumps(manifest))

    stage("toy")
    stage("sft/full", ["toy"])
    stage("grpo/full", ["sft/full", "toy"])
    stage("eval/grpo/full", ["grpo/full"])
    stage("compare", ["grpo/full", "eval/grpo/full"])
    stage("sft/collapse", ["toy"])  # the experiment's leftover arm
    stage("grpo/collapse", ["sft/collapse", "toy"], status="running")  # and a stage it left unfinished
    assert [m["stage"] for m in bench.load_manifests(tmp_path)] == [
        "compare",
        "eval/grpo/full",
        "grpo/full",
        "sft/full",
        "toy",
    ]
    (tmp_path / "sft" / "full" / "manifest.json").unlink()
    with pytest.raises(SystemExit, match=r"grpo/full read from \['sft/full'\], whose manifests are gone"):
        bench.load_manifests(tmp_path)
    (tmp_path / "compare" / "manifest.json").unlink()
    with pytest.raises(SystemExit, match="no compare stage"):
        bench.load_manifests(tmp_path)


def test_benchmark_arms_take_turns_in_alternating_order():
    # cft_rl.reports.alternating: every benchmark script's rounds; each arm goes first every other round.
    from cft_rl.reports import alternating

    assert list(alternating(["a", "b"], 3)) == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]
    assert list(alternating(["a", "b"], 0)) == []
