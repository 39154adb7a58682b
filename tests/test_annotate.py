"""The annotation job: sharding, resume after a real SIGKILL, skipped rows, merge and the CLI.

Solutions are kept to a few tokens and continuations short: every solution token costs up to
``num_alternatives`` greedy continuations on CPU.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest

from cft_rl.annotate.job import AnnotateConfig, read_shard, run_annotation, shard_path, token_class
from cft_rl.cli import main

FAST = {"engine": "reference", "num_alternatives": 2, "max_continuation_tokens": 5, "source": "dataset"}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def good_rows(toy_dir, tmp_path_factory):
    """Three toy questions with short boxed solutions (correct for rows 0-1, wrong for row 2)."""
    train = datasets.load_from_disk(str(toy_dir / "data"))["train"]
    rows = []
    for i, r in enumerate(train.select(range(3))):
        answer = r["answer"] if i < 2 else str(int(r["answer"]) + 1)
        rows.append(
            {
                "id": r["id"],
                "question": r["question"],
                "answer": r["answer"],
                "solution": f"\\boxed{{{answer}}}",
            }
        )
    return _write_jsonl(tmp_path_factory.mktemp("data") / "good.jsonl", rows)


def _config(toy_dir, data, out, **overrides):
    return AnnotateConfig(model=str(toy_dir), dataset=str(data), out=str(out), **{**FAST, **overrides})


@pytest.fixture(scope="module")
def one_shard(toy_dir, good_rows, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    dataset = run_annotation(_config(toy_dir, good_rows, out, num_shards=1, shard_index=0))
    return datasets.load_from_disk(str(dataset)), json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize(
    "token, cls",
    [
        ("7", "digit"),
        (" 42", "digit"),
        ("+", "operator"),
        (" =", "operator"),
        (" ×", "operator"),
        ("x", "operator"),
        (")", "operator"),
        ("\\boxed", "format"),
        ("{", "format"),
        ("}.", "format"),
        ("$", "format"),
        ("\n", "format"),
        ("  ", "format"),
        ("<|im_end|>", "format"),
        ("</s>", "format"),
        (" apples", "word"),
        (".", "word"),
        ("²", "word"),  # isdigit() is true for it, but it is not a plain digit
    ],
)
def test_token_class(token, cls):
    assert token_class(token) == cls


def test_one_shard_output_rows(one_shard):
    ds, summary = one_shard
    assert len(ds) == 3 and summary["annotated"] == 3 and summary["skipped"] == {}
    assert ds["index"] == [0, 1, 2]
    assert summary["total_tokens"] == sum(ds["num_tokens"])
    assert summary["critical_tokens"] == sum(ds["num_critical"])
    assert sum(c["tokens"] for c in summary["by_class"].values()) == summary["total_tokens"]
    for row in ds:
        n = row["num_tokens"]
        assert all(
            len(row[k]) == n for k in ("tokens", "token_ids", "critical", "alternatives", "token_char_spans")
        )
        assert row["num_critical"] == sum(row["critical"])
        assert all(
            len(a) == len(b) for a, b in zip(row["alternatives"], row["alternative_answers"], strict=True)
        )


def test_critical_spans_map_back_to_the_solution(one_shard):
    ds, _ = one_shard
    for row in ds:
        solution = row["solution"]
        spans = row["critical_spans"]
        assert all(0 <= s < e <= len(solution) for s, e in spans)
        assert all(e1 < s2 for (_, e1), (s2, _) in zip(spans, spans[1:], strict=False))  # sorted, merged
        covered = "".join(solution[s:e] for s, e in spans)
        # The critical tokens' texts, in order, are exactly the characters the spans cover.
        critical_text = "".join(
            solution[s:e]
            for (s, e), flag in zip(row["token_char_spans"], row["critical"], strict=True)
            if flag
        )
        assert covered == critical_text
        for (s, e), token in zip(row["token_char_spans"][:-1], row["tokens"][:-1], strict=True):
            assert solution[s:e] == token  # the eos (last) has the empty span at the end


def test_two_shards_merge_to_the_one_shard_dataset(toy_dir, good_rows, one_shard, tmp_path):
    # Shard 1 first: shard 0 must wait for it and merge only once both are done.
    first = run_annotation(_config(toy_dir, good_rows, tmp_path, num_shards=2, shard_index=1))
    assert first == shard_path(tmp_path, 1, 2) and not (tmp_path / "dataset").exists()
    merged = run_annotation(_config(toy_dir, good_rows, tmp_path, num_shards=2, shard_index=0))
    assert datasets.load_from_disk(str(merged)).to_list() == one_shard[0].to_list()
    assert json.loads((tmp_path / "summary.json").read_text()) == one_shard[1]


def test_shard_zero_waits_for_the_others_under_a_launcher(toy_dir, good_rows, one_shard, tmp_path):
    import threading
    import time

    from cft_rl.annotate.job import run_shard

    def late_worker():
        time.sleep(1.0)
        run_shard(_config(toy_dir, good_rows, tmp_path, num_shards=2, shard_index=1))

    worker = threading.Thread(target=late_worker)
    worker.start()
    config = _config(toy_dir, good_rows, tmp_path, num_shards=2, shard_index=0, wait_for_shards=True)
    merged = run_annotation(config)
    worker.join()
    assert datasets.load_from_disk(str(merged)).to_list() == one_shard[0].to_list()


def test_bad_rows_are_counted_not_fatal(toy_dir, tmp_path):
    q = "Ann has 2 apples and buys 3 more. How many apples does Ann have now?"
    rows = [
        {"id": "empty-solution", "question": q, "answer": "5", "solution": ""},
        {"id": "empty-gold", "question": q, "answer": "", "solution": "no final answer"},
        {"id": "bad-gold", "question": q, "answer": "\\frac{", "solution": "So \\boxed{5}."},
        {
            "id": "too-long",
            "question": q,
            "answer": "5",
            "solution": "First 2 + 3 = 5, and so on. " * 3 + "\\boxed{5}",
        },
        {"id": "normal", "question": q, "answer": "5", "solution": "So \\boxed{5}."},
    ]
    data = _write_jsonl(tmp_path / "bad.jsonl", rows)
    out = run_annotation(_config(toy_dir, data, tmp_path / "out", max_solution_tokens=12))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["skipped"] == {"bad_gold": 1, "no_solution": 1, "too_long": 1, "unreadable": 1}
    assert summary["annotated"] == 1 and summary["total_rows"] == 5
    assert datasets.load_from_disk(str(out))["id"] == ["normal"]


def test_self_generated_solutions_are_verified(toy_dir, good_rows, tmp_path):
    # max_solution_tokens=1: a correct self-solution is skipped as too long, so nothing costly runs.
    run_annotation(
        _config(
            toy_dir, good_rows, tmp_path, source="self", limit=2, max_new_tokens=40, max_solution_tokens=1
        )
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["annotated"] == 0 and sum(summary["skipped"].values()) == 2
    assert set(summary["skipped"]) <= {"wrong_self_solution", "too_long", "empty_solution"}


def _complete_rows(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_bytes().split(b"\n")[:-1] if b'"index"' in line)


def test_sigkill_then_resume(toy_dir, good_rows, one_shard, tmp_path):
    out = tmp_path / "out"
    script = (
        "from cft_rl.annotate.job import AnnotateConfig, run_annotation; "
        f"run_annotation(AnnotateConfig(model={str(toy_dir)!r}, dataset={str(good_rows)!r}, out={str(out)!r}, "
        f"num_shards=1, shard_index=0, **{FAST!r}))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=Path(__file__).parents[1])
    shard = shard_path(out, 0, 1)
    deadline = time.monotonic() + 120
    while _complete_rows(shard) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before, done = read_shard(shard)
    assert 1 <= len(before) < 3 and done is None, "the worker must be killed mid-shard"
    with shard.open("ab") as handle:  # a torn write on top of whatever the kill left
        handle.write(b'{"index": 2, "id": "toy-tr')

    resumed = run_annotation(AnnotateConfig(model=str(toy_dir), dataset=str(good_rows), out=str(out), **FAST))
    assert datasets.load_from_disk(str(resumed)).to_list() == one_shard[0].to_list()
    after, done = read_shard(shard)
    assert done is not None
    assert sorted(r["index"] for r in after) == [0, 1, 2]  # each row exactly once: none redone
    assert after[: len(before)] == before  # rows finished before the kill were kept, not recomputed


def test_resume_refuses_changed_settings(toy_dir, good_rows, tmp_path):
    run_annotation(_config(toy_dir, good_rows, tmp_path, limit=0))
    with pytest.raises(ValueError, match="num_alternatives"):
        run_annotation(_config(toy_dir, good_rows, tmp_path, limit=0, num_alternatives=3))


def test_cli_unknown_yaml_key(tmp_path, capsys):
    config = tmp_path / "annotate.yaml"
    config.write_text("model: m\ndataset: d\nout: o\nnum_alternativs: 3\n")
    assert main(["annotate", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "num_alternativs" in err and "num_alternatives" in err


def test_cli_bad_source(tmp_path, capsys):
    argv = ["annotate", "--model", "m", "--dataset", "d", "--out", str(tmp_path), "--source", "bogus"]
    assert main([*argv, "--engine", "reference"]) == 2
    err = capsys.readouterr().err
    assert "source" in err and "self" in err and "dataset" in err and "bogus" in err


def test_config_validation():
    with pytest.raises(ValueError, match="engine must be one of reference, fast"):
        AnnotateConfig(model="m", dataset="d", out="o", engine="turbo")
    with pytest.raises(ValueError, match="shard_index"):
        AnnotateConfig(model="m", dataset="d", out="o", engine="reference", num_shards=2, shard_index=2)


def test_cli_render_prints_and_writes_html(one_shard, tmp_path, capsys):
    from cft_rl.cli import main

    rows, _ = one_shard
    rows.save_to_disk(str(tmp_path / "ann" / "dataset"))
    html = tmp_path / "page.html"
    assert main(["render", str(tmp_path / "ann"), "--limit", "1", "--no-color", "--html", str(html)]) == 0
    out = capsys.readouterr().out
    assert rows[0]["id"] in out and "critical" in out
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<mark") == sum(
        len(r) for r in rows["critical_spans"]
    )


def test_vllm_backend_loads_one_engine_for_solutions_and_branches(toy_dir, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from cft_rl.annotate.engine import VLLMBackend
    from cft_rl.annotate.judge import load_judge
    from cft_rl.eval.sampling import VLLMGenerator

    made = []
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=lambda **kw: made.append(kw) or "llm"))
    config = AnnotateConfig(model=str(toy_dir), dataset="x", out=str(tmp_path), backend="vllm")
    judge = load_judge(config)
    assert judge.model is None and made[0]["model"] == str(toy_dir) and made[0]["enable_prefix_caching"]
    assert isinstance(judge.backend, VLLMBackend) and isinstance(judge.generator, VLLMGenerator)
    assert judge.backend.llm == judge.generator.llm == "llm"
    with pytest.raises(ValueError, match="backend 'vllm' needs engine 'fast'"):
        AnnotateConfig(model="m", dataset="d", out="o", backend="vllm", engine="reference")
    with pytest.raises(ValueError, match="backend must be one of hf, vllm"):
        AnnotateConfig(model="m", dataset="d", out="o", backend="vlm")


def test_each_launcher_worker_loads_on_its_own_gpu(toy_dir, monkeypatch):
    import torch
    from transformers import PreTrainedModel

    from cft_rl.annotate.judge import load_model

    moved = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(PreTrainedModel, "to", lambda self, device: moved.append(device) or self)
    monkeypatch.setenv("LOCAL_RANK", "3")
    load_model(str(toy_dir))
    assert moved == ["cuda:3"]
