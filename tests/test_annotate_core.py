"""The reference critical-token annotator: pure helpers by hand, the search loop against its definition."""

import zlib

import pytest
import torch

from cft_rl.annotate import rule as annotate_core
from cft_rl.annotate.rule import (
    TokenAnnotation,
    annotate_reference,
    critical_from_verdicts,
    critical_spans,
    ranked_alternatives,
)
from cft_rl.data.prompts import encode_example
from cft_rl.toy.build import load_toy
from cft_rl.verify.verifier import Verdict

SHORT_SOLUTION = "The answer is \\boxed{41}."


@pytest.fixture(scope="module")
def toy(toy_dir):
    return load_toy(toy_dir)


@pytest.mark.parametrize(
    "scores, critical",
    [
        ([0.0], True),
        ([None], True),
        ([0.0, None], True),
        ([0.0, 0.0, 0.0], True),
        ([1.0], False),
        ([0.0, 1.0], False),
        ([None, 1.0], False),
        ([1.0, 0.0], False),
    ],
)
def test_critical_from_verdicts(scores, critical):
    assert critical_from_verdicts(scores) is critical


def test_critical_from_verdicts_needs_an_alternative():
    with pytest.raises(ValueError, match="at least one"):
        critical_from_verdicts([])


def _ann(start, end, critical, position=0):
    return TokenAnnotation(position, 0, "", critical, [1], [None], start, end)


def test_critical_spans_merges_sorts_and_skips():
    text = "abcdefghij"
    annotations = [
        _ann(6, 8, True),  # out of order on purpose
        _ann(0, 2, True),
        _ann(2, 3, True),  # adjacent to [0, 2): merged
        _ann(3, 5, False),  # not critical: a gap
        _ann(5, 6, True),  # adjacent to [6, 8) on the other side: merged
        _ann(7, 9, True),  # overlapping: merged
        _ann(10, 10, True),  # the eos: no text, never a span
    ]
    assert critical_spans(annotations, text) == [(0, 3), (5, 9)]
    assert critical_spans([_ann(0, 2, False)], text) == []


def test_ranked_alternatives_skips_the_actual_token_and_breaks_ties_by_id():
    logits = torch.tensor([1.0, 3.0, 3.0, 0.0])
    assert ranked_alternatives(logits, actual=1, k=2) == [2, 0]
    assert ranked_alternatives(logits, actual=3, k=2) == [1, 2]  # actual below the top k: plain top k
    assert ranked_alternatives(logits, actual=0, k=5) == [1, 2, 3]  # vocabulary runs out


def _scripted_verifier(rule, calls):
    """A stand-in for check_batch that scores each text by ``rule`` and records what it was asked."""

    def fake_check_batch(predictions, golds):
        calls.extend(predictions)
        return [Verdict(rule(text), "scripted") for text in predictions]

    return fake_check_batch


@pytest.mark.parametrize(
    "rule",
    [
        lambda text: 0.0,
        lambda text: 1.0,
        # A mix of correct, wrong and unusable verdicts that depends on the continuation itself.
        lambda text: {0: 1.0, 1: None}.get((zlib.crc32(text.encode()) + 1) % 3, 0.0),
    ],
    ids=["all-wrong", "all-correct", "mixed"],
)
def test_flags_follow_the_definition(toy, monkeypatch, rule):
    model, tokenizer, data = toy
    row = data["test"][0]
    calls = []
    monkeypatch.setattr(annotate_core, "check_batch", _scripted_verifier(rule, calls))
    k = 2
    annotations = annotate_reference(
        model, tokenizer, row["prompt"], SHORT_SOLUTION, row["answer"], k, max_continuation_tokens=8
    )
    prompt_ids, completion_ids, _ = encode_example(tokenizer, row["prompt"], SHORT_SOLUTION)
    assert [a.token_id for a in annotations] == completion_ids
    # Calls come one per tried alternative, positions in order, alternatives in rank order.
    assert len(calls) == sum(len(a.alternatives) for a in annotations)
    texts = iter(calls)
    for a in annotations:
        t = a.position
        with torch.no_grad():  # an independent per-prefix forward: the alternatives are its top-k minus y_t
            logits = model(input_ids=torch.tensor([prompt_ids + completion_ids[:t]])).logits[0, -1]
        top = [i for i in torch.topk(logits, k + 1).indices.tolist() if i != a.token_id][:k]
        assert a.alternatives == top[: len(a.alternatives)]
        scores = []
        for alt in a.alternatives:
            text = next(texts)
            # The judged text is the solution prefix, the alternative, then the continuation.
            assert text.startswith(tokenizer.decode(completion_ids[:t] + [alt], skip_special_tokens=True))
            scores.append(rule(text))
        assert a.critical == all(s != 1.0 for s in scores)
        if a.critical:
            assert len(a.alternatives) == k  # nothing correct: every alternative was tried
        else:
            assert scores.index(1.0) == len(scores) - 1  # stopped at the first correct one
    flags = {a.critical for a in annotations}
    if rule("") == 0.0 and rule("x") == 0.0:
        assert flags == {True}
    elif rule("x") == 1.0:
        assert flags == {False} and all(len(a.alternatives) == 1 for a in annotations)
    else:  # the mix reaches every branch: critical, correct first, correct only second
        assert flags == {True, False}
        assert any(not a.critical and len(a.alternatives) == 2 for a in annotations), [
            (a.critical, len(a.alternatives)) for a in annotations
        ]


def test_real_model_and_verifier(toy):
    model, tokenizer, data = toy
    # The shortest test solution keeps the run to seconds: every token costs up to two continuations.
    row = min(data["test"], key=lambda r: len(r["solution"]))
    solution = row["solution"]
    annotations = annotate_reference(
        model,
        tokenizer,
        row["prompt"],
        solution,
        row["answer"],
        num_alternatives=2,
        max_continuation_tokens=30,
    )
    _, completion_ids, _ = encode_example(tokenizer, row["prompt"], solution)
    assert [a.token_id for a in annotations] == completion_ids
    assert [a.position for a in annotations] == list(range(len(completion_ids)))
    eos = annotations[-1]
    assert eos.token_id == tokenizer.eos_token_id and (eos.char_start, eos.char_end) == (len(solution),) * 2
    for a in annotations[:-1]:
        assert solution[a.char_start : a.char_end] == tokenizer.decode([a.token_id])
    assert "".join(solution[a.char_start : a.char_end] for a in annotations) == solution
    for a in annotations:
        assert 1 <= len(a.alternatives) <= 2 and a.token_id not in a.alternatives
        assert len(a.alternative_answers) == len(a.alternatives)
        if a.critical:  # judged critical only after both alternatives failed
            assert len(a.alternatives) == 2
    spans = critical_spans(annotations, solution)
    assert all(0 <= s < e <= len(solution) for s, e in spans)
    assert all(e1 < s2 for (_, e1), (s2, _) in zip(spans, spans[1:], strict=False))  # sorted, disjoint
    covered = {i for s, e in spans for i in range(s, e)}
    assert covered == {i for a in annotations if a.critical for i in range(a.char_start, a.char_end)}
