"""cft_rl.data.datasets: every benchmark file loads into the record shape with the right gold answers.

Reads the real files under the data root (../shared/data by default); the module is skipped, with the
reason, where that folder is absent.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import datasets
import pytest

from cft_rl.data import datasets as data
from cft_rl.data.datasets import (
    BENCHMARKS,
    PAPER_SUITE,
    DataError,
    clean_gsm8k_solution,
    format_number,
    last_boxed_content,
    load_benchmark,
    load_math_dataset,
    read_benchmark_records,
    resolve_data_root,
    strip_math_delimiters,
)
from cft_rl.data.prompts import BOXED_INSTRUCTION, build_prompt

try:
    DATA_ROOT = resolve_data_root()
except DataError as exc:
    pytest.skip(f"benchmark data not available: {exc}", allow_module_level=True)

# Row counts from ../shared/README.md, and the gold of one known row (read off the raw files).
EXPECTED = {
    "gsm8k_train": (7473, "gsm8k_train-0", "72"),
    "gsm8k_test": (1319, "gsm8k_test-0", "18"),
    "math500": (500, "test/precalculus/807.json", r"\left( 3, \frac{\pi}{2} \right)"),
    "svamp": (1000, "chal-777", "145"),
    "asdiv": (2215, "asdiv-0", "9"),
    "mawps": (2065, "mawps-0", "43"),
    "carp_en": (976, "carp_en-0", "b ^ { 2 } - 9 a ^ { 2 }"),
    "minerva_math": (272, "minerva_math-0", "1.6"),
    "gaokao2023en": (385, "gaokao2023en-0", r"\{x|-2\leq x < 1\}"),
    "olympiadbench": (675, "olympiadbench-1606", "2"),
    "college_math": (2818, "college_math.Beginning_and_Intermediate_Algebra/exercise.0.4.61", "10-4 n"),
    "aime24": (30, "aime24-60", "204"),
    "amc23": (40, "amc23-0", "27"),
    "sat_math": (32, "sat_math-0", "A"),
}


@pytest.fixture(scope="module")
def records() -> dict[str, list[dict]]:
    return {name: read_benchmark_records(name)[0] for name in BENCHMARKS}


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {row["id"]: row for row in rows}


def test_registry_names():
    assert set(BENCHMARKS) == set(EXPECTED)
    assert len(PAPER_SUITE) == 11 and set(PAPER_SUITE) <= set(BENCHMARKS)
    assert not {"aime24", "amc23", "gsm8k_train"} & set(PAPER_SUITE)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_benchmark_loads(name, records):
    rows, skipped = read_benchmark_records(name, errors="skip")
    count, known_id, known_gold = EXPECTED[name]
    assert len(rows) == count and not skipped
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids)
    for row in rows:
        assert row["question"].strip() and row["answer"].strip(), row["id"]
        assert row["answer"] == row["answer"].strip()
        assert row["source"] == name
        assert row["prompt"][0]["role"] == "user"
        assert row["prompt"][0]["content"].endswith("\n" + BOXED_INSTRUCTION)
    assert by_id(rows)[known_id]["answer"] == known_gold


def test_ids_are_unique_across_benchmarks(records):
    ids = [row["id"] for rows in records.values() for row in rows]
    assert len(set(ids)) == len(ids)


def test_load_benchmark_returns_dataset():
    ds = load_benchmark("minerva_math", limit=5)
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == list(data.COLUMNS) and len(ds) == 5
    assert ds[0]["prompt"] == build_prompt(ds[0]["question"])


def test_prompt_is_the_qwen_math_prompt():
    assert build_prompt("What is 1+1? Use {braces}.") == [
        {
            "role": "user",
            "content": "What is 1+1? Use {braces}.\n"
            "Please reason step by step, and put your final answer within \\boxed{}.",
        }
    ]


# --- gold normalisation quirks found in the data ---------------------------------------------------


def test_gsm8k_gold_and_solution(records):
    rows = records["gsm8k_train"]
    assert rows[0]["solution"].endswith("#### 72") and "<<48/2=24>>" in rows[0]["solution"]
    assert rows[345]["answer"] == "1080"  # written "#### 1,080"
    assert clean_gsm8k_solution(rows[0]["solution"]).startswith("Natalia sold 48/2 = 24 clips in May.")


def test_svamp_question_gets_a_full_stop(records):
    question = by_id(records["svamp"])["chal-777"]["question"]
    assert "into 93 groups. How big is each group of bananas?" in question


def test_asdiv_units_and_odd_answers(records):
    rows = by_id(records["asdiv"])
    assert rows["asdiv-1007"]["answer"] == "14"  # "14  (seats)"
    assert rows["asdiv-1313"]["answer"] == "-(1/3)"  # parentheses without a unit stay
    assert rows["asdiv-849"]["answer"] == "5:6"  # a ratio
    assert rows["asdiv-29"]["answer"] == "Mrs. Hilt"  # a comparison answered with a name
    assert rows["asdiv-0"]["question"] == (
        "Seven red apples and two green apples are in the basket. How many apples are in the basket?"
    )


def test_gaokao_repairs(records):
    rows = by_id(records["gaokao2023en"])
    assert rows["gaokao2023en-107"]["answer"] == "145"  # "$145$solution:"
    # Two rows had an empty answer and the gold at the end of the question: moved out, not leaked.
    assert rows["gaokao2023en-167"]["answer"] == r"\frac{3}{10}"
    assert rows["gaokao2023en-167"]["question"].endswith("at least one saddle point.")
    assert rows["gaokao2023en-192"]["answer"] == "A"
    assert "Answer" not in rows["gaokao2023en-192"]["question"]


def test_numeric_and_list_answers(records):
    assert by_id(records["aime24"])["aime24-67"]["answer"] == "25"  # "025"
    assert by_id(records["mawps"])["mawps-206"]["answer"] == "1.84"
    assert by_id(records["olympiadbench"])["olympiadbench-1664"]["answer"] == "69,84"  # "$69$,$84$"
    assert records["sat_math"][0]["question"].endswith(
        "\nA) $f(-6)=0$ B) $f(6)=-6$ C) $f(-6)=6$ D) $f(0)=-6$"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("$10-4 n$", "10-4 n"),
        ("$$x^2$$", "x^2"),
        (r"\(x+1\)", "x+1"),
        (r"\[y\]", "y"),
        (r"$\$ 3040$", r"\$ 3040"),  # escaped dollar inside is currency, not a delimiter
        ("$48$, $384$", "48, 384"),
        ("$2$ or $-2$", "$2$ or $-2$"),  # words between segments: leave it
        (r"$(-\infty, 0) \cup\{1\}$.", r"(-\infty, 0) \cup\{1\}"),
        (r"\$36", r"\$36"),
        ("20 $cm^{2}$", "20 $cm^{2}$"),
    ],
)
def test_strip_math_delimiters(raw, expected):
    assert strip_math_delimiters(raw) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(145.0, "145"), (0.5, "0.5"), (1.84, "1.84"), (-3.0, "-3"), (7, "7"), (22090603.0, "22090603")],
)
def test_format_number(value, expected):
    assert format_number(value) == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "12"])
def test_format_number_rejects_non_numbers(value):
    with pytest.raises(ValueError):
        format_number(value)


# --- last_boxed_content --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{\left\{ x \right.}", r"\left\{ x \right."),  # escaped brace does not count
        (r"$\fbox{42}$", "42"),
        (r"$\boxed 5$", "5"),
        (r"\boxed{}", ""),
        (r"\boxed{a{b}", None),  # unbalanced
        ("no box here", None),
        ("", None),
    ],
)
def test_last_boxed_content(text, expected):
    assert last_boxed_content(text) == expected


def _python_lines(function, *args) -> int:
    """How many Python lines ``function(*args)`` executes: a count of its work that no clock or
    machine load changes."""
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        function(*args)
    finally:
        sys.settrace(previous)
    return count


def test_last_boxed_content_is_linear():
    def deep(n):
        return "\\boxed{" + "{" * n + "x" + "}" * n + "}"

    def unbalanced(n):
        return "\\boxed{" + "{" * n

    def many_boxes(n):
        return " ".join(["\\boxed{1}"] * n)  # a brace search per box would be quadratic

    assert last_boxed_content(deep(10_000)) == "{" * 10_000 + "x" + "}" * 10_000
    assert last_boxed_content(unbalanced(200_000)) is None
    for text in (deep, unbalanced, many_boxes):
        small, large = (_python_lines(last_boxed_content, text(n)) for n in (2_000, 8_000))
        assert large <= 4.4 * small + 100, (text.__name__, small, large)  # 4x the input, ~4x the work


# --- bad input -----------------------------------------------------------------------------------


@pytest.fixture
def bad_root(tmp_path):
    """A data root whose GSM8K train file has a malformed line (2) and a row without an answer (4)."""
    (tmp_path / "gsm8k").mkdir()
    lines = [
        json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"}),
        '{"question": "broken", "answer": ',
        json.dumps({"question": "2+2?", "answer": "#### 4"}),
        json.dumps({"question": "no answer here"}),
        json.dumps({"question": "3+3?", "answer": "6, no hashes"}),
    ]
    (tmp_path / "gsm8k" / "train.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_bad_rows_raise_with_file_and_line(bad_root, tmp_path):
    with pytest.raises(DataError, match=r"train\.jsonl, line 2: malformed JSON line.*errors=\"skip\""):
        load_benchmark("gsm8k_train", data_root=bad_root)
    root = tmp_path / "other"
    (root / "gsm8k").mkdir(parents=True)
    rows = [{"question": "1+1?", "answer": "#### 2"}, {"question": "no answer", "answer": " "}]
    (root / "gsm8k" / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=r"train\.jsonl, line 2: missing or empty field 'answer'"):
        load_benchmark("gsm8k_train", data_root=root)


def test_bad_rows_skipped_and_counted(bad_root, caplog):
    with caplog.at_level(logging.WARNING, logger="cft_rl.data.datasets"):
        rows, skipped = read_benchmark_records("gsm8k_train", data_root=bad_root, errors="skip")
    assert [row["answer"] for row in rows] == ["2", "4"]
    assert skipped == {
        "malformed JSON line": 1,
        "missing or empty field 'answer'": 1,
        "no '#### ' final-answer line": 1,
    }
    assert "skipped 3 rows" in caplog.text
    assert len(load_benchmark("gsm8k_train", data_root=bad_root, errors="skip")) == 2


def test_limit_and_errors_arguments(bad_root):
    assert len(load_benchmark("gsm8k_train", data_root=bad_root, limit=1)) == 1  # stops before line 2
    assert len(load_benchmark("gsm8k_train", data_root=bad_root, limit=0)) == 0
    with pytest.raises(DataError, match="errors must be"):
        load_benchmark("gsm8k_train", data_root=bad_root, errors="ignore")


def test_missing_data_root(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="CFT_RL_DATA_ROOT") as info:
        resolve_data_root(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value) and "data_root=" in str(info.value)
    monkeypatch.setenv("CFT_RL_DATA_ROOT", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match="elsewhere"):
        load_benchmark("gsm8k_test")


def test_env_var_sets_the_root(bad_root, monkeypatch):
    monkeypatch.setenv("CFT_RL_DATA_ROOT", str(bad_root))
    assert resolve_data_root() == bad_root
    monkeypatch.delenv("CFT_RL_DATA_ROOT")
    repo_root = Path(data.__file__).resolve().parents[2]
    assert resolve_data_root() == repo_root.parent / "shared" / "data"


def test_unknown_benchmark_lists_valid_names():
    with pytest.raises(DataError, match="unknown benchmark 'gsm9k'.*gsm8k_train.*sat_math"):
        load_benchmark("gsm9k")


# --- load_math_dataset ---------------------------------------------------------------------------


def test_load_math_dataset_benchmark_name():
    ds = load_math_dataset("aime24", limit=3)
    assert ds["answer"] == ["204", "113", "371"]


def test_load_math_dataset_jsonl_with_custom_fields(tmp_path):
    rows = [
        {"q": "What is 6*7?", "a": 42.0},
        {"q": "Simplify $2/4$.", "sol": r"It is $\boxed{\frac12}$."},
        {"q": "Total?", "a": "3 + 4 = 7\n#### 1,007"},
        {"q": "Keep my prompt", "a": "$x$", "prompt": [{"role": "user", "content": "custom"}], "id": 9},
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ds = load_math_dataset(str(path), question_field="q", answer_field="a", solution_field="sol")
    assert ds["answer"] == ["42", r"\frac12", "1007", "x"]
    assert ds["solution"] == [None, r"It is $\boxed{\frac12}$.", "3 + 4 = 7\n#### 1,007", None]
    assert ds["id"] == ["mine-0", "mine-1", "mine-2", "9"]
    assert ds["source"] == ["mine"] * 4
    assert ds[0]["prompt"] == build_prompt("What is 6*7?")
    assert ds[3]["prompt"] == [{"role": "user", "content": "custom"}]


def test_load_math_dataset_json_list_and_string_prompts(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"question": "q", "answer": 1.5, "prompt": "plain text prompt"}]))
    ds = load_math_dataset(path)
    assert ds[0]["answer"] == "1.5" and ds[0]["prompt"] == "plain text prompt"
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"question": "q", "answer": "2"}) + "\n")
    assert load_math_dataset(plain).features["solution"] == datasets.Value("string")  # not "null"


def test_load_math_dataset_bad_rows(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"question": "q", "answer": "1"}) + "\n" + json.dumps({"question": "q2"}) + "\n"
    )
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: no answer"):
        load_math_dataset(path)
    assert len(load_math_dataset(path, errors="skip")) == 1


def test_load_math_dataset_save_to_disk_and_parquet(tmp_path):
    source = datasets.Dataset.from_list(
        [{"problem": "1+2?", "answer": "3"}, {"problem": "Half of 1?", "answer": "$\\frac{1}{2}$"}]
    )
    source.save_to_disk(str(tmp_path / "saved"))
    ds = load_math_dataset(tmp_path / "saved", question_field="problem")
    assert ds["answer"] == ["3", r"\frac{1}{2}"] and ds["id"] == ["saved-0", "saved-1"]
    datasets.DatasetDict({"test": source}).save_to_disk(str(tmp_path / "dict"))
    assert len(load_math_dataset(tmp_path / "dict", split="test", question_field="problem")) == 2
    with pytest.raises(DataError, match="splits"):
        load_math_dataset(tmp_path / "dict", split="train", question_field="problem")
    source.to_parquet(str(tmp_path / "p.parquet"))
    assert load_math_dataset(tmp_path / "p.parquet", question_field="problem")["answer"] == [
        "3",
        r"\frac{1}{2}",
    ]


def test_load_math_dataset_missing_path_and_hub_failure(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="not found"):
        load_math_dataset(str(tmp_path / "absent.jsonl"))

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="could not load 'someone/some-math'.*benchmark name"):
        load_math_dataset("someone/some-math")


def test_load_math_dataset_reports_skip_reasons(tmp_path):
    from collections import Counter

    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "q1", "answer": "1"}\nnot json\n{"question": "q3"}\n')
    skipped = Counter()
    ds = load_math_dataset(path, errors="skip", skipped=skipped)
    assert len(ds) == 1
    assert sum(skipped.values()) == 2
