"""Softmax attention in parts: each part's output with its log-sum-exp, and the merge of parts.

:class:`cft_rl.annotate.branches.BranchPool` attends a row's queries over two key sets stored apart (its
sequence's shared keys, its own fed tokens' keys), the own set itself in segments. Each part is one
softmax attention that also returns its log-sum-exp; :func:`merge_attention` then weighs the parts'
outputs by their exp-mass, which equals a single softmax over all the keys (flash-attention's
rescaling, done once per part instead of per block). Pure functions on tensors.
"""

from __future__ import annotations

import torch


def attention_lse(q, k_t, v, bias, ok) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and its log-sum-exp: ``(out [..., M, dim], lse [..., M])``.

    ``q [..., M, dim]`` is already scaled, ``k_t [..., dim, L]`` holds the keys transposed, ``bias``
    (0 or -inf) and ``ok`` (its boolean twin) broadcast to the scores ``[..., M, L]``. A query that sees
    no key gets ``lse = -inf`` (its output is meaningless): a merge then gives it no weight.
    """
    scores = torch.matmul(q, k_t).float().add_(bias)
    top = scores.amax(-1, keepdim=True)
    weights = masked_exp(scores.sub_(top), ok)
    total = weights.sum(-1, keepdim=True)
    out = torch.matmul(weights.to(v.dtype), v).float().div_(total)
    return out, top.add_(total.log()).squeeze(-1)


def shared_attention_lse(q, k, v, bias, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_lse` of ``q [B, H, M, dim]`` (unscaled) over ``k, v [B, H, L, dim]``.

    On CPU this is PyTorch's fused flash-attention kernel, which returns the log-sum-exp too (1.8x the
    unfused form's speed, measured on 20 groups of 64 queries over 166 keys); elsewhere the unfused form.
    """
    if q.device.type == "cpu" and _CPU_FLASH is not None:
        out, lse = _CPU_FLASH(q, k, v, attn_mask=bias.to(q.dtype), scale=scale)
        return out, lse.float()
    return attention_lse(q * scale, k.transpose(-1, -2), v, bias, bias == 0)


def merge_attention(out_a, lse_a, out_b, lse_b) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of one softmax attention over two disjoint key sets, from each one's output and
    log-sum-exp (``[..., dim]`` and ``[...]``): each output weighs by its share of the exp-mass."""
    lse = torch.logaddexp(lse_a, lse_b)
    out = out_a.float() * (lse_a - lse).exp_()[..., None] + out_b.float() * (lse_b - lse).exp_()[..., None]
    return out, lse


# The fused CPU kernel that also returns the log-sum-exp (a private op, hence looked up, not assumed).
_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def masked_exp(x: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """``exp(x)`` where ``ok``, exactly 0 elsewhere (``x`` there is -inf).

    x86 CPUs take a slow path (~40x) for exp of -inf or of anything whose result would be denormal
    (below -87). So arguments are clamped to -80 and the masked entries zeroed after: a visible entry
    80 below the row's maximum weighs exp(-80) = 2e-35 instead of less, below float32 resolution of a
    sum that contains the maximum's exp(0) = 1.
    """
    return x.clamp_min_(-80.0).exp_().mul_(ok)


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """0 where ``mask`` is true, -inf elsewhere (float32): added to attention scores."""
    return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, float("-inf"))
