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

from cft_rl.annotate.job import AnnotateConfig, read_shard, run_annotation, shard_path
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


def test_self_generated_solutions_run_end_to_end(toy_dir, good_rows, tmp_path):
    # The real generator writes the solutions (which reason applies to each is then unknown: that is
    # tested with scripted solutions in test_each_self_solution_is_skipped_for_its_own_reason).
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
    from cft_rl.generation import VLLMGenerator

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


# --- no lost work (issue 15) -----------------------------------------------------------------------


def _unreadable_rows(path: Path) -> Path:
    q = "Ann has 2 apples and buys 3 more. How many apples does Ann have now?"
    return _write_jsonl(path, [{"id": f"no-gold-{i}", "question": q, "answer": ""} for i in range(2)])


@pytest.mark.parametrize("case", ["limit 0", "every row unreadable"])
def test_nothing_left_to_annotate_with_the_fast_engine(toy_dir, good_rows, tmp_path, case):
    # The fast engine is the default; with no row to annotate no model is loaded, and none is needed.
    data = good_rows if case == "limit 0" else _unreadable_rows(tmp_path / "bad.jsonl")
    limit = 0 if case == "limit 0" else None
    config = AnnotateConfig(model=str(toy_dir), dataset=str(data), out=str(tmp_path / "out"), limit=limit)
    dataset = datasets.load_from_disk(str(run_annotation(config)))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(dataset) == 0 and summary["annotated"] == 0
    assert summary["total_rows"] == (0 if case == "limit 0" else 2)


@pytest.fixture(scope="module")
def all_skipped(toy_dir, tmp_path_factory):
    """An annotation whose every row was skipped, run through the CLI (fast engine): (out, console)."""
    import contextlib
    import io

    q = "Ann has 2 apples and buys 3 more. How many apples does Ann have now?"
    rows = [
        {"id": "no-solution", "question": q, "answer": "5", "solution": ""},
        {"id": "bad-gold", "question": q, "answer": "\\frac{", "solution": "So \\boxed{5}."},
        {"id": "no-solution-2", "question": q, "answer": "7", "solution": " "},
    ]
    tmp = tmp_path_factory.mktemp("skipped")
    data, out = _write_jsonl(tmp / "rows.jsonl", rows), tmp / "out"
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        argv = ["annotate", "--model", str(toy_dir), "--dataset", str(data), "--out", str(out)]
        assert main([*argv, "--source", "dataset"]) == 0
    return out, console.getvalue()


def test_an_all_skipped_annotation_says_why(all_skipped):
    out, console = all_skipped
    assert "0 of 3 rows annotated; skipped: 1 bad_gold, 2 no_solution" in console


def test_an_all_skipped_annotation_loads_with_every_column(all_skipped, one_shard):
    from cft_rl.annotate.rows import record_features

    out, _ = all_skipped
    empty = datasets.load_from_disk(str(out / "dataset"))
    assert len(empty) == 0
    # The declared columns are exactly those of a real annotation, types included.
    assert empty.features == record_features() == one_shard[0].features


def test_render_reads_an_all_skipped_annotation(all_skipped, tmp_path, capsys):
    out, _ = all_skipped
    html = tmp_path / "page.html"
    assert main(["render", str(out), "--no-color", "--html", str(html)]) == 0
    printed = capsys.readouterr().out
    assert "holds no annotated rows (0 of 3 rows annotated; skipped: 1 bad_gold, 2 no_solution)" in printed
    assert "No rows." in html.read_text()


def test_sft_reads_an_all_skipped_annotation_and_refuses_clearly(all_skipped, toy_dir, tmp_path):
    from cft_rl.models import load_tokenizer
    from cft_rl.sft import SelectionError
    from cft_rl.sft.prepare import prepare_dataset
    from cft_rl.sft.run import load_sft_dataset
    from cft_rl.sft.trainer import SelectiveSFTConfig

    out, _ = all_skipped
    train = load_sft_dataset(str(out), "train")
    assert len(train) == 0 and "critical_spans" in train.column_names
    args = SelectiveSFTConfig(output_dir=str(tmp_path), strategy="critical", use_cpu=True, bf16=False)
    with pytest.raises(SelectionError, match="selects no token in any of the 0 rows"):
        prepare_dataset(train, load_tokenizer(str(toy_dir)), args)


def _scripted_solutions(monkeypatch, texts: dict[str, str]):
    """The judge writes ``texts[question]`` as its own solution instead of generating (the real model
    and verifier stay: only what the model says is fixed, so every skip reason is known in advance)."""
    from types import SimpleNamespace

    import cft_rl.annotate.judge as models

    real = models.load_judge

    class Scripted:
        def generate(self, prompts, **_):
            questions = [next(q for q in texts if q in prompt[-1]["content"]) for prompt in prompts]
            return [[SimpleNamespace(text=texts[question])] for question in questions]

    monkeypatch.setattr(
        models,
        "load_judge",
        lambda config: SimpleNamespace(**{**vars(real(config)), "generator": Scripted()}),
    )


def test_each_self_solution_is_skipped_for_its_own_reason(toy_dir, tmp_path, monkeypatch):
    # One self-solution per reason: right but too long (max_solution_tokens=1), wrong, empty. The
    # verdicts then depend on both the verifier and the length check: without the verifier the wrong
    # one would pass as too long, without the length check the right one would be annotated.
    texts = {"2 apples": "So \\boxed{5}.", "4 pears": "So \\boxed{7}.", "6 plums": "  "}
    _scripted_solutions(monkeypatch, texts)
    rows = [
        {"id": "right", "question": "Ann has 2 apples and buys 3 more. How many?", "answer": "5"},
        {"id": "wrong", "question": "Bob has 4 pears and buys 2 more. How many?", "answer": "6"},
        {"id": "empty", "question": "Cy has 6 plums and eats 1. How many?", "answer": "5"},
    ]
    for row in rows:
        row["solution"] = f"\\boxed{{{row['answer']}}}"  # the dataset's solution, unused with source=self
    data = _write_jsonl(tmp_path / "rows.jsonl", rows)
    run_annotation(_config(toy_dir, data, tmp_path / "out", source="self", max_solution_tokens=1))
    records, _ = read_shard(shard_path(tmp_path / "out", 0, 1))
    reasons = {r["id"]: r.get("skipped") for r in records}
    assert reasons == {"right": "too_long", "wrong": "wrong_self_solution", "empty": "empty_solution"}


def test_skips_are_on_disk_as_they_are_decided(toy_dir, tmp_path, monkeypatch):
    # Rows 0 and 1 are skipped, row 2 goes to the engine, which dies (a kill mid-decode) before it
    # finishes any row: the two skips must already be on disk, and the rerun must not decide them again.
    import cft_rl.annotate.rows as annotate_rows

    q = "Ann has 2 apples and buys 3 more. How many apples does Ann have now?"
    rows = [
        {"id": "bad-gold", "question": q, "answer": "\\frac{", "solution": "So \\boxed{5}."},
        {"id": "no-solution", "question": q, "answer": "5", "solution": " "},
        {"id": "normal", "question": q, "answer": "5", "solution": "\\boxed{5}"},
    ]
    data, out = _write_jsonl(tmp_path / "rows.jsonl", rows), tmp_path / "out"
    config = AnnotateConfig(model=str(toy_dir), dataset=str(data), out=str(out), source="dataset")
    config.max_continuation_tokens = 5

    def dies_mid_decode(model, tokenizer, examples, *args, **kwargs):
        list(examples)  # the engine has read every row it was given (and so the skips were decided)
        raise RuntimeError("killed")
        yield  # a generator, as the real engine

    real_engine = annotate_rows.annotate_many  # the engine, as the rows module calls it
    monkeypatch.setattr(annotate_rows, "annotate_many", dies_mid_decode)
    with pytest.raises(RuntimeError, match="killed"):
        run_annotation(config)
    records, done = read_shard(shard_path(out, 0, 1))
    assert done is None and {r["id"]: r["skipped"] for r in records} == {
        "bad-gold": "bad_gold",
        "no-solution": "no_solution",
    }

    monkeypatch.setattr(annotate_rows, "annotate_many", real_engine)
    prepared = []
    real_prepare = annotate_rows.prepare_row
    monkeypatch.setattr(
        annotate_rows,
        "prepare_row",
        lambda config, judge, row, index, *rest: (
            prepared.append(index) or real_prepare(config, judge, row, index, *rest)
        ),
    )
    dataset = datasets.load_from_disk(str(run_annotation(config)))
    assert prepared == [2] and dataset["id"] == ["normal"]  # only the row in flight was redone


def test_a_run_that_failed_before_any_row_does_not_lock_its_out(toy_dir, good_rows, tmp_path):
    out = tmp_path / "out"
    with pytest.raises((OSError, ValueError), match="no-such-model"):
        run_annotation(_config(tmp_path / "no-such-model", good_rows, out, limit=1))
    assert _complete_rows(shard_path(out, 0, 1)) == 0
    # Fixed model, and other settings too: nothing was written, so there is nothing to protect.
    dataset = run_annotation(_config(toy_dir, good_rows, out, limit=1, num_alternatives=1))
    assert len(datasets.load_from_disk(str(dataset))) == 1


def test_relative_and_absolute_paths_are_the_same_run(toy_dir, good_rows, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_annotation(_config(toy_dir, good_rows, out, limit=0))
    monkeypatch.chdir(toy_dir.parent)
    relative = (Path(toy_dir.name), Path(os.path.relpath(good_rows, toy_dir.parent)))
    run_annotation(_config(*relative, out, limit=0))  # the same files: it resumes, no refusal
    with pytest.raises(ValueError, match=r"other \['limit'\]"):  # a real change is still refused
        run_annotation(_config(toy_dir, good_rows, out, limit=1))


def test_shard_progress_moves_before_any_row_finishes(toy_dir, good_rows, tmp_path, monkeypatch):
    # The bar counts rows, but a row under annotation counts the share of its positions judged so far:
    # with several rows decoded together, whole rows finish only near the end of the run.
    import tqdm.auto

    seen = []

    class Recording(tqdm.auto.tqdm):
        def update(self, n=1):
            super().update(n)
            seen.append(self.n)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    config = _config(toy_dir, good_rows, tmp_path, engine="fast", batch_size=2, limit=2)
    run_annotation(config)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(2)
    assert any(0 < n < 1 for n in seen), f"the bar moved only by whole rows: {seen}"


def test_summary_splits_off_the_final_box():
    """Hand-made rows: the critical fractions outside the last \\boxed{...} leave its braces out."""
    from cft_rl.annotate.job import summarize

    text = "So 12 is \\boxed{12}."
    pieces = ["So", " ", "1", "2", " is", " \\", "boxed", "{", "1", "2", "}", "."]
    spans, at = [], 0
    for piece in pieces:
        spans.append((at, at + len(piece)))
        at += len(piece)
    assert "".join(pieces) == text
    critical = [False, True, True, False, False, True, False, True, True, True, True, False]
    row = {"solution": text, "tokens": pieces, "critical": critical, "token_char_spans": spans}
    summary = summarize([row], [row])
    assert summary["by_class"]["format"] == {"tokens": 4, "critical": 4, "fraction": 1.0}
    # Outside the box: "So", " ", "1", "2", " is", "." -- the blank is the only format token.
    assert summary["outside_answer"]["format"] == {"tokens": 1, "critical": 1, "fraction": 1.0}
    assert summary["outside_answer"]["digit"] == {"tokens": 2, "critical": 1, "fraction": 0.5}
    assert summary["outside_answer"]["word"]["tokens"] == 3  # "So", " is", "."


def test_last_box_extent_covers_the_command_and_both_braces():
    from cft_rl.answers import last_box_extent

    text = "a \\boxed{1} b \\boxed{x^{2}} c"
    start, end = last_box_extent(text)
    assert text[start:end] == "\\boxed{x^{2}}"
    assert last_box_extent("no box") is None and last_box_extent("\\boxed{open") is None
