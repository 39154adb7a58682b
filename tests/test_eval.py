"""`cft-rl eval`: metrics on hand-made samples and whole jobs on the tiny toy model."""

import json
import math

import pyarrow.parquet as pq
import pytest

from cft_rl.data.datasets import DataError, resolve_data_root
from cft_rl.eval.job import EvalConfig, load_eval_dataset, run_eval
from cft_rl.eval.scoring import score_groups
from cft_rl.eval.tables import accuracy_section, paper_table
from cft_rl.generation import HFGenerator, Sample


def _has_benchmark_data() -> bool:
    try:
        resolve_data_root()
    except DataError:
        return False
    return True


# The real benchmark files live beside the repository (../shared/data), not in it: a clone elsewhere
# skips the tests that read them, as tests/test_data.py does, instead of failing.
needs_benchmark_data = pytest.mark.skipif(
    not _has_benchmark_data(), reason="benchmark data not available (see README: ../shared/data)"
)


def _samples(*texts):
    return [Sample(t, 2, [0.5, 0.5]) for t in texts]


def test_score_groups_maj_at_k_splits_ties_and_matches_hand_counts():
    groups = [
        _samples(r"\boxed{4}", r"\boxed{4}", r"\boxed{5}", r"\boxed{5}"),  # 2-2 tie, gold 4: half credit
        _samples(r"\boxed{1}", r"\boxed{2}", r"\boxed{3}", "no answer here"),  # 3-way tie, gold 2: a third
    ]
    m, verdicts = score_groups(groups, ["4", "2"], ks=(1, 2, 4), maj_ks=(2, 4))
    assert m["maj@4"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    # maj@2 votes in disjoint pairs: q1 (4,4)->1, (5,5)->0; q2 (1,2)->1/2, (3,-)->0.
    assert m["maj@2"] == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    assert m["pass@2"] == pytest.approx((1 - 1 / 6 + 1 - 3 / 6) / 2)  # 1 - C(n-c,2)/C(4,2)
    assert m["pass@4"] == 1.0
    assert m["accuracy"] == m["pass@1"] == 3 / 8
    assert m["distinct_answers"] == 2.5
    assert m["answer_entropy"] == pytest.approx((math.log(2) + math.log(3)) / 2)
    assert m["frac_no_answer"] == 1 / 8
    assert m["entropy"] == 0.5 and m["num_questions"] == 2
    # Wilson interval over 2 questions with 0.5 + 0.25 successes.
    low, high = m["accuracy_ci95"]
    assert 0 < low < 3 / 8 < high < 1
    assert [v.extracted for v in verdicts[0]] == ["4", "4", "5", "5"]
    assert [v.status for v in verdicts[1]][3] == "no_answer"


def test_score_groups_without_maj_ks_reports_no_maj():
    m, _ = score_groups([_samples(r"\boxed{1}")], ["1"], ks=(1,))
    assert not any(k.startswith("maj@") for k in m) and m["accuracy"] == 1.0


def test_eval_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown suite"):
        EvalConfig(model="m", suite="nope")
    with pytest.raises(ValueError, match="nothing to evaluate"):
        EvalConfig(model="m")
    with pytest.raises(ValueError, match=r"ks has k=8, more than num_samples = 4"):
        EvalConfig(model="m", benchmarks=["svamp"], num_samples=4, ks=(8,))
    config = EvalConfig(model="m", suite="paper", benchmarks=["svamp", "aime24"], num_samples=6)
    assert config.benchmarks[:2] == ["svamp", "aime24"] and len(config.benchmarks) == 12  # svamp once
    assert config.ks == (1, 2, 4, 6) and config.maj_ks == (6,)


def test_unknown_benchmark_names_the_valid_ones(tmp_path):
    with pytest.raises(DataError, match="unknown benchmark 'gsm9k'.*gsm8k_test"):
        load_eval_dataset("gsm9k", EvalConfig(model="m", benchmarks=["gsm9k"]))


@needs_benchmark_data
def test_eval_job_on_the_toy_model_writes_summaries_and_samples_and_resumes(toy_dir, tmp_path):
    from cft_rl.toy.build import load_toy

    model, tokenizer, _ = load_toy(toy_dir)
    config = EvalConfig(
        model=str(toy_dir),
        benchmarks=[str(toy_dir), "gsm8k_test"],
        out=str(tmp_path / "eval"),
        limit=4,
        num_samples=2,
        max_new_tokens=24,
        batch_size=4,
        progress=False,
    )
    results = run_eval(config, backend=HFGenerator(model, tokenizer, batch_size=4))
    assert list(results) == ["toy-test", "gsm8k_test"]
    for label, summary in results.items():
        rows = pq.read_table(tmp_path / "eval" / f"{label}.parquet").to_pylist()
        assert len(rows) == 4 * (1 + 2)  # one greedy and two sampled completions per question
        assert {"prompt", "completion", "extracted", "status", "correct", "gold"} <= set(rows[0])
        greedy = [r["correct"] for r in rows if r["mode"] == "greedy"]
        assert summary["accuracy"] == summary["greedy"]["accuracy"] == sum(greedy) / 4
        assert set(summary["sampled"]) >= {"pass@1", "pass@2", "maj@2", "distinct_answers", "answer_entropy"}
        assert summary["accuracy_ci95"][0] <= summary["accuracy"] <= summary["accuracy_ci95"][1]
    assert "<|im_start|>" in rows[0]["prompt"]  # the chat-rendered training template
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert saved["benchmarks"]["toy-test"]["accuracy"] == results["toy-test"]["accuracy"]

    class NoGeneration:
        def generate(self, *args, **kwargs):
            raise AssertionError("a finished benchmark was evaluated again")

    assert run_eval(config, backend=NoGeneration()) == results  # resumed: nothing to do


def test_paper_table_layout_with_a_missing_benchmark():
    results = {"gsm8k_test": {"accuracy": 0.5}, "math500": {"accuracy": 0.25}}
    table = paper_table({"toy": results}).splitlines()
    assert table[0].startswith("| Model | GSM8K | MATH500 | SVAMP |") and table[0].endswith("| SAT | Avg. |")
    assert table[2] == "| toy | 50.0 | 25.0 |" + " - |" * 9 + " 37.5* |"


def test_accuracy_section_pools_sft_and_grpo_seeds(tmp_path):
    # The pipeline's table: eval/sft/<arm>/seed<s> (sft.seed_per_grpo_seed) pools as sft/<arm>, as GRPO
    # runs pool as grpo/<arm>; a model of one run (base, or sft/<arm> trained once) stays one row.
    accuracies = {
        "eval/base": 0.40,
        "eval/sft/full/seed0": 0.50,
        "eval/sft/full/seed1": 0.60,
        "eval/sft/critical": 0.45,
        "eval/grpo/full/seed0": 0.70,
        "eval/grpo/full/seed1": 0.80,
    }
    evals = {}
    for stage, accuracy in accuracies.items():
        folder = tmp_path / stage
        folder.mkdir(parents=True)
        summary = {"model": stage, "benchmarks": {"toy-test": {"accuracy": accuracy}}}
        (folder / "summary.json").write_text(json.dumps(summary))
        evals[stage] = str(folder)
    text = accuracy_section(evals)
    pooled, per_seed = text.split("## Accuracy per seed (greedy, %)")
    assert "| sft/full | 55.0 ± 7.1 (n=2) |" in pooled and "| grpo/full | 75.0 ± 7.1 (n=2) |" in pooled
    assert "| base | 40.0 |" in pooled and "| sft/critical | 45.0 |" in pooled
    assert "sft/full/seed" not in pooled
    for run in ("sft/full/seed0", "sft/full/seed1", "grpo/full/seed1"):
        assert f"| {run} |" in per_seed
    assert "| sft/critical |" not in per_seed and "| base |" not in per_seed


@needs_benchmark_data
def test_cli_eval_on_the_toy_model_and_a_benchmark_slice(toy_dir, tmp_path, capsys):
    from cft_rl.cli import main

    out = tmp_path / "cli"
    args = [
        "eval",
        str(toy_dir),
        "--suite",
        "paper",
        "--limit",
        "1",
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
    ]
    assert main([*args, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| Model | GSM8K |" in printed and (out / "paper_table.md").is_file()
    assert len(json.loads((out / "summary.json").read_text())["benchmarks"]) == 11
    assert main(["eval", "--table", str(out)]) == 0
    assert "| Model | GSM8K |" in capsys.readouterr().out
    assert main(["eval", str(toy_dir), "gsm9k", "--out", str(out)]) == 2
    assert "unknown benchmark 'gsm9k'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nowhere"), "svamp", "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def test_results_made_with_other_settings_are_kept_not_overwritten(toy_dir, tmp_path):
    from cft_rl.toy.build import load_toy

    model, tokenizer, _ = load_toy(toy_dir)
    backend = HFGenerator(model, tokenizer, batch_size=2)
    out = tmp_path / "eval"
    first = EvalConfig(
        model=str(toy_dir), benchmarks=[str(toy_dir)], out=str(out), limit=2, max_new_tokens=4, progress=False
    )
    run_eval(first, backend=backend)
    old = {name: (out / name).read_bytes() for name in ("toy-test.json", "toy-test.parquet")}
    changed = EvalConfig(**{**vars(first), "max_new_tokens": 6})
    new = run_eval(changed, backend=backend)["toy-test"]
    assert new["settings"]["max_new_tokens"] == 6
    assert json.loads((out / "toy-test.json").read_text())["settings"]["max_new_tokens"] == 6
    [kept] = (out / ".superseded").iterdir()
    assert kept.name.startswith("toy-test.")
    assert {name: (kept / name).read_bytes() for name in old} == old  # the old results, whole
    # Back to the first settings: the second results are kept in their turn, beside the first.
    run_eval(first, backend=backend)
    assert len(list((out / ".superseded").iterdir())) == 2
    # The same settings with overwrite redo the benchmark in place: nothing else to keep.
    run_eval(EvalConfig(**{**vars(first), "overwrite": True}), backend=backend)
    assert len(list((out / ".superseded").iterdir())) == 2
