"""Statistics of sampled completions (cft_rl.stats) on hand-checkable cases."""

import itertools
import math
import random
from collections import Counter

import pytest
import torch

from cft_rl.stats import (
    _clipped_matches,
    _ngrams,
    answer_entropy,
    check_ks,
    default_ks,
    distinct_n,
    pass_at_k,
    sampled_metrics,
    self_bleu,
    token_entropy,
    wilson_interval,
)

# --- correctness -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, 7))
def test_pass_at_k_equals_brute_force_enumeration(n):
    for c in range(n + 1):
        outcomes = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="n=4, c=5"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)


def test_token_entropy_on_hand_computed_logits():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [100.0, 0.0]])
    expected = torch.tensor([math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), 0.0])
    assert torch.allclose(token_entropy(logits), expected, atol=1e-6)


def test_wilson_interval_on_hand_computed_cases():
    # 8 of 10, z = 1.96: centre (0.8 + z²/20) / (1 + z²/10), half-width z sqrt(0.016 + z²/400) / (1 + z²/10).
    z2 = 1.96**2
    centre, half = (0.8 + z2 / 20) / (1 + z2 / 10), 1.96 * math.sqrt(0.016 + z2 / 400) / (1 + z2 / 10)
    assert wilson_interval(8, 10) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook value
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(z2 / (10 + z2))  # never a zero-width interval at p = 0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="11 of 10"):
        wilson_interval(11, 10)


# --- diversity -------------------------------------------------------------------------------------


def test_answer_entropy():
    assert answer_entropy(["1", "2", "3", "4"]) == pytest.approx(math.log(4))
    assert answer_entropy(["7", "7", None]) == 0.0
    assert answer_entropy([None, None]) is None


def test_distinct_n_hand_counted():
    texts = ["a b a b", "a b c"]
    assert distinct_n(texts, 1) == 3 / 7  # a b a b a b c: {a, b, c}
    assert distinct_n(texts, 2) == 3 / 5  # ab ba ab | ab bc: {ab, ba, bc}
    assert distinct_n(texts, 3) == 1.0  # aba bab | abc
    assert distinct_n(texts, 4) == 1.0  # abab
    assert distinct_n(texts, 5) is None
    assert distinct_n(["", "  "], 1) is None


def test_self_bleu_identical_and_disjoint():
    assert self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(1.0)
    assert self_bleu(["a b c d", "e f g h"]) == 0.0
    assert self_bleu(["only one"]) is None


def test_self_bleu_partial_overlap():
    # "a b c d" against "a b c e" (and back, symmetric): p1 = 3/4, p2 = (2+1)/(3+1), p3 = (1+1)/(2+1),
    # p4 = (0+1)/(1+1); equal lengths, so no brevity penalty. BLEU = (3/4 * 3/4 * 2/3 * 1/2) ** (1/4).
    assert self_bleu(["a b c d", "a b c e"]) == pytest.approx((3 / 16) ** 0.25)


def test_self_bleu_clipping_and_brevity():
    # hyp "a a a" vs ref "a b": a clipped to 1 -> p1 = 1/3; p2 = (0+1)/(2+1); p3 = (0+1)/(1+1);
    #   no 4-gram: p4 = (0+1)/(0+1); hyp longer than ref: no penalty.      BLEU = (1/18) ** (1/4)
    # hyp "a b" vs ref "a a a": p1 = 1/2; p2 = (0+1)/(1+1); p3 = p4 = 1; BP = exp(1 - 3/2).
    expected = ((1 / 18) ** 0.25 + math.exp(-0.5) * (1 / 4) ** 0.25) / 2
    assert self_bleu(["a a a", "a b"]) == pytest.approx(expected)


def test_self_bleu_excludes_the_hypothesis_from_its_references():
    # Unigram BLEU: "x y" finds both words in the other "x y" (BLEU 1); "z" is nowhere else (0).
    assert self_bleu(["x y", "x y", "z"], max_n=1) == pytest.approx(2 / 3)


def test_clipped_matches_equals_pairwise_clipping():
    rng = random.Random(0)
    texts = [[rng.choice("abc") for _ in range(rng.randint(0, 8))] for _ in range(6)]
    for n in (1, 2, 3):
        counts = [Counter(_ngrams(t, n)) for t in texts]
        naive = [
            sum(min(c, max(counts[j][g] for j in range(len(texts)) if j != i)) for g, c in counts[i].items())
            for i in range(len(texts))
        ]
        assert _clipped_matches(counts) == naive


# --- k values and the metrics of n samples per question --------------------------------------------


def test_check_ks_names_the_setting_and_the_limit():
    assert check_ks("ks", [1, 4], 4, "num_samples") == (1, 4)
    for bad in ((), (0, 2), (1.5,)):
        with pytest.raises(
            ValueError, match=r"^MonitorConfig.ks must be a non-empty list of positive integers"
        ):
            check_ks("MonitorConfig.ks", bad)
    with pytest.raises(ValueError, match=r"^ks has k=8, more than num_samples = 4$"):
        check_ks("ks", (1, 8), 4, "num_samples")


def test_default_ks_are_powers_of_two_up_to_n():
    assert default_ks(8) == (1, 2, 4, 8)
    assert default_ks(6) == (1, 2, 4, 6)
    assert default_ks(1) == (1,)


def test_sampled_metrics_hand_computed():
    correct = [[True, False], [False, False]]
    answers = [["3", "4"], [None, None]]
    m = sampled_metrics(correct, answers, [1.0, math.nan, 0.0], ks=(1, 2), maj_ks=(2,))
    assert m["pass@1"] == 0.25 and m["pass@2"] == 0.5
    assert m["maj@2"] == 0.25  # question 0: a tie of 3 (right) and 4 (wrong) = 1/2; question 1: no vote
    assert m["entropy"] == 0.5  # the non-finite entropy is left out
    assert m["distinct_answers"] == 1.0
    assert m["answer_entropy"] == pytest.approx(math.log(2))  # question 1 states none: left out
    assert "entropy" not in sampled_metrics(correct, answers, [], ks=(1,))
