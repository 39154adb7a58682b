"""The branch pool's attention maths, on tensors small enough to check by hand."""

import math

import pytest
import torch

from cft_rl.annotate import attention as branch_attention
from cft_rl.annotate.attention import additive_mask, attention_lse, merge_attention, shared_attention_lse


def _masks(ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return additive_mask(ok), ok


def test_attention_lse_by_hand():
    # One query; keys 0 and 1 are visible (scores 1 and 0), key 2 is masked however large its score.
    q = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [50.0, 50.0]])
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]])
    bias, ok = _masks(torch.tensor([[True, True, False]]))
    out, lse = attention_lse(q, keys.T, values, bias, ok)
    e = math.e
    torch.testing.assert_close(out, torch.tensor([[(e * 1 + 3) / (e + 1), (e * 2 + 4) / (e + 1)]]))
    torch.testing.assert_close(lse, torch.tensor([math.log(e + 1)]))


def test_merge_of_two_key_sets_is_one_softmax_over_both():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 4), torch.randn(7, 4), torch.randn(7, 5)
    ok = torch.rand(3, 7) < 0.6
    ok[:, 0] = ok[:, 4] = True  # every query sees a key in each part
    bias, _ = _masks(ok)
    expected = torch.softmax(q @ k.T + bias, dim=-1) @ v
    a = attention_lse(q, k[:4].T, v[:4], *_masks(ok[:, :4]))
    b = attention_lse(q, k[4:].T, v[4:], *_masks(ok[:, 4:]))
    out, lse = merge_attention(*a, *b)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.T + bias, dim=-1))


def test_a_part_with_no_visible_key_weighs_nothing():
    q, k, v = torch.ones(1, 2), torch.ones(3, 2), torch.arange(6.0).view(3, 2)
    seen = attention_lse(q, k.T, v, *_masks(torch.tensor([[True, True, True]])))
    empty = (torch.zeros(1, 2), torch.tensor([float("-inf")]))  # e.g. a free row's shared part
    out, lse = merge_attention(*empty, *seen)
    torch.testing.assert_close(out, seen[0])
    torch.testing.assert_close(lse, seen[1])


@pytest.mark.skipif(
    branch_attention._CPU_FLASH is None, reason="this torch has no fused CPU attention with log-sum-exp"
)
def test_fused_cpu_kernel_equals_the_unfused_form(monkeypatch):
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 2, 6, 8), torch.randn(3, 2, 10, 8), torch.randn(3, 2, 10, 8)
    ok = torch.arange(10) < torch.randint(1, 11, (3, 1, 6, 1))
    ok[2, :, 5] = False  # a padding query that sees nothing: its output is never read
    bias, _ = _masks(ok)
    fused = shared_attention_lse(q, k, v, bias, 0.3)
    monkeypatch.setattr(branch_attention, "_CPU_FLASH", None)
    unfused = shared_attention_lse(q, k, v, bias, 0.3)
    seen = ok.any(-1).expand(3, 2, 6)
    torch.testing.assert_close(fused[0][seen], unfused[0][seen], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused[1][seen], unfused[1][seen], atol=1e-5, rtol=1e-5)
