"""Evaluation maths on hand-checkable cases."""

import itertools
import math

import pytest
import torch

from cft_rl.eval.sampling import Sample, pass_at_k, summarize, token_entropy


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


def test_summarize_on_hand_made_groups():
    groups = [
        [Sample(r"\boxed{4}", 3, [1.0, 1.0, 1.0]), Sample(r"\boxed{5}", 3, [0.0, 0.0, 0.0])],
        [Sample(r"so \boxed{7}", 2, [0.5, 0.5]), Sample(r"so \boxed{7}", 2, [0.5, 0.5])],
    ]
    m = summarize(groups, ["4", "8"], ks=(1, 2))
    assert m["accuracy"] == 0.25
    assert m["pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["pass@2"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["distinct_completions"] == 1.5
    assert m["entropy"] == pytest.approx((3 + 0 + 2) / 10)
    assert m["mean_length"] == 2.5


def test_wilson_interval_on_hand_computed_cases():
    from cft_rl.eval.sampling import wilson_interval

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
