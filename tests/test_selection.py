"""Token selection: spans to tokens, each strategy on hand-made rows, bad input, and the dataset pass."""

import datasets
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cft_rl.data.prompts import encode_example
from cft_rl.sft import SelectionError
from cft_rl.sft.prepare import SelectionCounter, prepare_dataset
from cft_rl.sft.selection import (
    STRATEGIES,
    RowSelection,
    answer_spans,
    check_strategy,
    numeric_spans,
    select_weights,
    tokens_in_spans,
    validate_spans,
)
from cft_rl.sft.trainer import SelectiveSFTConfig

# "12+3=15": tokens "12", "+", "3", "=", "15", then eos (the empty span at the end).
TEXT = "12+3=15"
OFFSETS = [(0, 2), (2, 3), (3, 4), (4, 5), (5, 7), (7, 7)]


def _row(spans=None, entropies=None, text=TEXT, offsets=OFFSETS, row_id="r1"):
    return RowSelection(row_id=row_id, text=text, offsets=offsets, spans=spans, entropies=entropies)


# --- spans to tokens --------------------------------------------------------------------------------


def test_a_token_is_selected_when_its_characters_overlap_a_span():
    # [1, 3) covers the "2" of "12" and the "+": both tokens, and nothing that only touches the span.
    assert tokens_in_spans(OFFSETS, [(1, 3)]) == [True, True, False, False, False, False]
    # Touching is not overlapping: [2, 2) is empty, [3, 4) ends where "=" starts.
    assert tokens_in_spans(OFFSETS, [(2, 2), (3, 4)]) == [False, False, True, False, False, False]
    # Overlapping and nested spans act as their union; the eos (empty span) is never selected.
    assert tokens_in_spans(OFFSETS, [(0, 7), (1, 2), (5, 7)]) == [True] * 5 + [False]


def test_spans_transfer_across_tokenizers():
    # The same characters, cut two ways: each tokenisation selects exactly the tokens holding "3=1".
    char_level = [(i, i + 1) for i in range(len(TEXT))]
    assert [
        TEXT[a:b] for (a, b), f in zip(char_level, tokens_in_spans(char_level, [(3, 6)]), strict=True) if f
    ] == [
        "3",
        "=",
        "1",
    ]
    assert [
        TEXT[a:b] for (a, b), f in zip(OFFSETS, tokens_in_spans(OFFSETS, [(3, 6)]), strict=True) if f
    ] == [
        "3",
        "=",
        "15",
    ]


@given(
    cuts=st.lists(st.integers(1, 4), min_size=1, max_size=30),
    spans=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), max_size=6),
)
def test_tokens_in_spans_matches_a_brute_force_overlap_check(cuts, spans):
    offsets, pos = [], 0
    for width in cuts:
        offsets.append((pos, pos + width))
        pos += width
    offsets.append((pos, pos))
    spans = [(s, s + w) for s, w in spans]
    expected = [any(max(a, s) < min(b, e) for s, e in spans) for a, b in offsets]
    assert tokens_in_spans(offsets, spans) == expected


@pytest.mark.parametrize(
    "spans, problem",
    [
        ([[3, 9]], "row r7: span [3, 9) lies outside its text (length 7)"),
        ([[-1, 2]], "row r7: span [-1, 2) lies outside"),
        ([[5, 4]], "row r7: span [5, 4) lies outside"),
        ([[1, 2, 3]], "row r7: span [1, 2, 3] is not a [start, end) pair"),
        ([[1.0, 2]], "row r7: span [1.0, 2] is not a [start, end) pair"),
        (None, "row r7: no critical spans"),
    ],
)
def test_bad_spans_are_errors_that_name_the_row(spans, problem):
    with pytest.raises(SelectionError) as info:
        validate_spans(spans, TEXT, "r7")
    assert problem in str(info.value)


# --- strategies ------------------------------------------------------------------------------------


def test_full_selects_every_token_including_eos():
    assert select_weights("full", _row()) == [1.0] * 6


def test_critical_selects_the_annotated_tokens():
    assert select_weights("critical", _row(spans=[[0, 2], [5, 7]])) == [1, 0, 0, 0, 1, 0]


def test_numeric_selects_number_tokens():
    assert numeric_spans("x 12 y 3.5 z 7.") == [(2, 4), (7, 10), (13, 14)]
    assert select_weights("numeric", _row()) == [1, 0, 1, 0, 1, 0]


def test_answer_span_is_the_last_box_or_the_line_after_a_delimiter():
    text = "a \\boxed{1} b \\boxed{23}."
    assert answer_spans(text) == [(21, 23)]
    assert answer_spans("no box here") == []
    assert answer_spans("x\n#### 1 # 2 \nrest", "####") == [(7, 12)]
    assert answer_spans("#### 4\n#### 56", "####") == [(12, 14)]
    assert answer_spans("####   \n", "####") == []
    offsets = [(i, i + 1) for i in range(len(text))] + [(len(text), len(text))]
    weights = select_weights("answer", _row(text=text, offsets=offsets))
    assert [text[i] for i, w in enumerate(weights) if w] == ["2", "3"]


def test_random_matches_each_rows_critical_count_is_seeded_and_never_picks_eos():
    text = "abcdefghij"
    offsets = [(i, i + 1) for i in range(10)] + [(10, 10)]
    row = _row(spans=[[0, 3]], text=text, offsets=offsets)
    first = select_weights("random", row, seed=1)
    assert sum(first) == 3 and first[-1] == 0
    assert select_weights("random", row, seed=1) == first
    draws = {tuple(select_weights("random", row, seed=s)) for s in range(20)}
    assert len(draws) > 5  # the seed matters
    assert sum(select_weights("random", row, fraction=0.5)) == 5  # a fixed fraction needs no spans


def test_entropy_picks_the_highest_entropy_text_tokens():
    entropies = [0.1, 0.9, 0.5, 0.9, 0.2, 5.0]  # the eos has the highest: still not a candidate
    row = _row(spans=[[0, 3]], entropies=entropies)  # two critical tokens: "12", "+"
    assert select_weights("entropy", row) == [0, 1, 0, 1, 0, 0]  # 0.9 tie: both; then done
    assert select_weights("entropy", row, fraction=0.6) == [0, 1, 1, 1, 0, 0]  # round(0.6 * 5) = 3
    with pytest.raises(SelectionError, match="one entropy per completion token"):
        select_weights("entropy", _row(spans=[[0, 3]]))


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(SelectionError) as info:
        check_strategy("critcal")
    assert "'critcal'" in str(info.value)
    assert all(name in str(info.value) for name in STRATEGIES)
    with pytest.raises(ValueError, match="sftkey"):
        SelectiveSFTConfig(output_dir="unused", strategy="nope", use_cpu=True, bf16=False)


def test_counter_reports_rows_that_select_nothing():
    counter = SelectionCounter("answer")
    assert counter.add("a", [0.0, 1.0]) is True
    assert counter.add("b", [0.0, 0.0]) is False
    summary = counter.summary()
    assert summary["rows_dropped_no_selected_token"] == 1 and summary["dropped_row_ids"] == ["b"]
    assert summary["selected_fraction"] == 0.25


# --- the dataset pass, on the toy tokenizer --------------------------------------------------------


@pytest.fixture(scope="module")
def toy(toy_dir):
    from cft_rl.toy.build import load_toy

    model, tokenizer, data = load_toy(toy_dir)
    return model, tokenizer, data["train"].select(range(6))


def _args(**overrides):
    values = dict(output_dir="unused", use_cpu=True, bf16=False, max_length=None)
    return SelectiveSFTConfig(**{**values, **overrides})


def test_prepared_rows_use_the_annotators_tokenisation(toy):
    _, tokenizer, rows = toy
    prepared, summary = prepare_dataset(rows, tokenizer, _args(strategy="numeric"))
    row, source = prepared[0], rows[0]
    prompt_ids, completion_ids, offsets = encode_example(tokenizer, source["prompt"], source["solution"])
    assert row["input_ids"] == prompt_ids + completion_ids
    n = len(prompt_ids)
    assert row["completion_mask"] == [0] * n + [1] * len(completion_ids)
    picked = [
        tokenizer.decode([t]) for t, w in zip(completion_ids, row["loss_weights"][n:], strict=True) if w
    ]
    assert picked and all(text.strip().isdigit() for text in picked)
    assert [lab for lab in row["labels"][n:] if lab != -100] == [
        t for t, w in zip(completion_ids, row["loss_weights"][n:], strict=True) if w
    ]
    assert summary["rows_kept"] == 6 and 0 < summary["selected_fraction"] < 1


def test_critical_without_annotations_says_to_run_the_annotator(toy):
    _, tokenizer, rows = toy
    for strategy in ("critical", "random", "entropy"):
        with pytest.raises(SelectionError, match="cft-rl annotate"):
            prepare_dataset(rows, tokenizer, _args(strategy=strategy))


def test_out_of_text_spans_name_the_row(toy):
    _, tokenizer, rows = toy
    spans = [[[0, 2]]] * 5 + [[[0, 10_000]]]
    with pytest.raises(SelectionError, match=f"row {rows[5]['id']}: span \\[0, 10000\\) lies outside"):
        prepare_dataset(rows.add_column("critical_spans", spans), tokenizer, _args(strategy="critical"))


def test_rows_that_select_nothing_are_dropped_and_reported(toy):
    _, tokenizer, rows = toy
    spans = [[[0, 2]], [], [[3, 5]], [], [[0, 1]], [[1, 2]]]
    prepared, summary = prepare_dataset(
        rows.add_column("critical_spans", spans), tokenizer, _args(strategy="critical")
    )
    assert len(prepared) == 4
    assert summary["dropped_row_ids"] == [rows[1]["id"], rows[3]["id"]]
    assert all(sum(w) > 0 for w in prepared["loss_weights"])
    with pytest.raises(SelectionError, match="selects no token in any of the 6 rows"):
        prepare_dataset(rows.add_column("critical_spans", [[]] * 6), tokenizer, _args(strategy="critical"))


def test_truncation_cuts_every_column_and_reports_rows_left_without_loss(toy):
    _, tokenizer, rows = toy
    encoded = [encode_example(tokenizer, r["prompt"], r["solution"]) for r in rows]
    cut = max(len(p) for p, _, _ in encoded)  # the longest prompt keeps no completion token
    cut_off = [rows[i]["id"] for i, (p, _, _) in enumerate(encoded) if len(p) + 1 >= cut]
    assert 0 < len(cut_off) < len(rows)
    prepared, summary = prepare_dataset(rows, tokenizer, _args(strategy="full", max_length=cut))
    assert summary["rows_truncated"] == sum(len(p) + len(c) > cut for p, c, _ in encoded) > 0
    assert summary["dropped_row_ids"] == cut_off
    kept = [e for r, e in zip(rows, encoded, strict=True) if r["id"] not in cut_off]
    for row, (prompt_ids, completion_ids, _) in zip(prepared, kept, strict=True):
        assert row["input_ids"] == (prompt_ids + completion_ids)[:cut]
        lengths = {len(row[k]) for k in ("input_ids", "labels", "completion_mask", "loss_weights")}
        assert lengths == {min(cut, len(prompt_ids) + len(completion_ids))}


def test_entropy_scoring_uses_the_base_model(toy):
    model, tokenizer, rows = toy
    args = _args(strategy="entropy", selection_fraction=0.25, entropy_batch_size=4)
    prepared, summary = prepare_dataset(rows, tokenizer, args, scoring_model=model)
    assert summary["entropy_scoring_seconds"] >= 0
    assert abs(summary["selected_fraction"] - 0.25) < 0.02
    with pytest.raises(SelectionError, match="needs the base model"):
        prepare_dataset(rows, tokenizer, args)


def test_annotator_output_trains_exactly_its_critical_tokens(toy_dir, tmp_path):
    from cft_rl.annotate.job import AnnotateConfig, run_annotation
    from cft_rl.toy.tokenizer import load_tokenizer

    config = AnnotateConfig(
        model=str(toy_dir),
        dataset=str(toy_dir / "data"),
        out=str(tmp_path),
        source="dataset",
        num_alternatives=1,
        max_continuation_tokens=4,
        limit=2,
        num_shards=1,
        shard_index=0,
    )
    annotated = datasets.load_from_disk(str(run_annotation(config)))
    tokenizer = load_tokenizer(toy_dir)
    prepared, _ = prepare_dataset(annotated, tokenizer, _args(strategy="critical"))
    for row, source in zip(prepared, annotated, strict=True):
        flags = [w > 0 for w in row["loss_weights"][-source["num_tokens"] :]]
        # The eos has no characters to span, so the spans cannot carry its flag.
        assert flags[:-1] == source["critical"][:-1] and flags[-1] is False
