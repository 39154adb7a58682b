"""Evaluation maths on hand-checkable cases."""

import itertools
import math

import pytest
import torch

from cft_rl.evaluation import Sample, pass_at_k, summarize, token_entropy


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
