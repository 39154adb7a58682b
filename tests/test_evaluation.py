"""Evaluation maths on hand-checkable cases."""

import pytest

from cft_rl.eval.scoring import summarize
from cft_rl.generation import Sample


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
