"""Greedy decoding of many branches off one shared sequence, without copying its KV cache.

Annotation decodes, for every position t of a solution, a branch ``prompt + y_<t + a``. Every branch's
context is a prefix of one sequence (``prompt + y``) whose keys and values one forward already
computed. A plain batched decode would copy that prefix into every row of a cache (B rows x L slots per
layer) and re-read all of it, once per step, which is where a batched CPU decode spends its time.

Here the prefix is stored once. Each attention layer scores a step's queries against

- the **shared** keys ``[kv_heads, L, head_dim]``, masked per row to its prefix length: with the batch
  folded into the matrix rows this is one ``bmm`` per step, whatever the batch size; and
- the row's **own** keys: the tokens this branch has fed so far, kept in small growable buffers;

and takes one softmax over both (cascade attention). It plugs into any Hugging Face decoder that
dispatches through ``AttentionInterface`` (Llama, Qwen2/3, Mistral, ...), as the attention
implementation ``"cft_rl_branches"`` for the duration of a decode; the model's own code does all the
rest (embeddings, RoPE at the given ``position_ids``, MLPs, the head).

A step may feed several tokens per row (the pending token plus draft guesses); unused slots are masked.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import AttentionInterface

ATTENTION_NAME = "cft_rl_branches"
# Own-buffer slots added at a time: growing token by token would re-copy the buffers at every step.
_GROW = 64


class Branches:
    """The attention state of a batch of branches decoded from one shared sequence.

    ``shared_kv``: per layer, the ``(keys, values)`` of the shared sequence, ``[1, kv_heads, L, dim]``
    (what a forward with ``use_cache=True`` returns). ``lengths[b]``: how many shared tokens row ``b``
    sees; its first fed token sits at position ``lengths[b]``.
    """

    def __init__(self, shared_kv, lengths: list[int]):
        self.shared = [(k[0], v[0]) for k, v in shared_kv]
        keys = self.shared[0][0]
        device, n_layers = keys.device, len(self.shared)
        self.positions = torch.tensor(lengths, device=device)
        self.prefix_ok = torch.arange(keys.shape[1], device=device)[None, :] < self.positions[:, None]
        self.own: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers
        self.own_ok = torch.zeros(len(lengths), 0, dtype=torch.bool, device=device)
        self.n_own = 0  # own slots filled (the same for every row; unused ones are masked)
        self._step_ok: torch.Tensor | None = None
        self._own_bias: torch.Tensor | None = None
        self._prefix_bias = _bias(self.prefix_ok)[None, :, None, :]  # [1, B, 1, L]

    def step(self, model, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens[b, :]`` (``valid`` marks the real ones) after each row's context; logits out."""
        width = tokens.shape[1]
        self._step_ok, self._own_bias = valid.bool(), None
        with _attention_implementation(model, ATTENTION_NAME):
            logits = model(
                input_ids=tokens,
                # True positions: RoPE must see each row's own length.
                position_ids=self.positions[:, None] + torch.arange(width, device=tokens.device),
                use_cache=False,
                cft_rl_branches=self,
            ).logits
        self.own_ok = torch.cat([self.own_ok, self._step_ok], dim=1)
        self.n_own += width
        return logits

    def advance(self, kept: list[int]) -> None:
        """Row ``b`` keeps the first ``kept[b]`` tokens it was fed in the last step; the rest are masked."""
        kept_t = torch.tensor(kept, device=self.positions.device)
        width = self._step_ok.shape[1]
        self.own_ok[:, self.n_own - width :] &= (
            torch.arange(width, device=kept_t.device)[None, :] < kept_t[:, None]
        )
        self.positions += kept_t

    def select(self, rows: list[int]) -> None:
        """Keep only these rows, in this order (finished branches leave the batch)."""
        index = torch.tensor(rows, device=self.positions.device)
        self.positions, self.prefix_ok, self.own_ok = (
            self.positions[index],
            self.prefix_ok[index],
            self.own_ok[index],
        )
        self._prefix_bias = _bias(self.prefix_ok)[None, :, None, :]
        self.own = [None if kv is None else (kv[0][index], kv[1][index]) for kv in self.own]

    def attend(self, layer: int, query, key, value, scaling: float) -> torch.Tensor:
        """Attention output ``[B, W, heads, dim]`` for a step's queries; stores the step's keys/values."""
        own_k, own_v = self._append(layer, key, value)
        batch, heads, width, dim = query.shape
        kv_heads = key.shape[1]
        groups = heads // kv_heads  # query head h reads kv head h // groups, as HF's repeat_kv
        rows = groups * width
        q = (query * scaling).reshape(batch, kv_heads, rows, dim)  # row index: g * width + w
        shared_k, shared_v = self.shared[layer]
        # Shared part, laid out [kv_heads, batch, rows, L]: the batch folds into one matmul per kv head.
        folded = q.transpose(0, 1).reshape(kv_heads, batch * rows, dim)
        s_shared = torch.bmm(folded, shared_k.transpose(1, 2)).view(kv_heads, batch, rows, -1).float()
        s_shared += self._prefix_bias
        s_own = torch.matmul(q, own_k.transpose(-1, -2)).float() + self._own_step_bias(groups, width)
        s_own = s_own.transpose(0, 1)
        # One softmax over both parts, without concatenating them (the shared part is the big one).
        top = torch.maximum(s_shared.amax(-1, keepdim=True), s_own.amax(-1, keepdim=True))
        e_shared, e_own = (s_shared - top).exp_(), (s_own - top).exp_()
        total = e_shared.sum(-1, keepdim=True) + e_own.sum(-1, keepdim=True)
        out = torch.bmm(e_shared.to(shared_v.dtype).view(kv_heads, batch * rows, -1), shared_v)
        out = out.view(kv_heads, batch, rows, dim) + torch.matmul(
            e_own.to(own_v.dtype).transpose(0, 1), own_v
        ).transpose(0, 1)
        out = (out / total).to(query.dtype)
        return (
            out.view(kv_heads, batch, groups, width, dim)
            .permute(1, 3, 0, 2, 4)
            .reshape(batch, width, heads, dim)
        )

    def _own_step_bias(self, groups: int, width: int) -> torch.Tensor:
        """``[B, 1, groups * width, n_own + width]`` additive mask: real own slots, causal in the step."""
        if self._own_bias is None:  # the same for every layer of a step
            ok = torch.cat([self.own_ok, self._step_ok], dim=1)
            slots = torch.arange(ok.shape[1], device=ok.device)
            causal = slots[None, :] <= self.n_own + torch.arange(width, device=ok.device)[:, None]
            mask = ok[:, None, :] & causal[None]  # [B, width, slots]
            mask = (
                mask[:, None, None]
                .expand(-1, 1, groups, -1, -1)
                .reshape(mask.shape[0], 1, groups * width, -1)
            )
            self._own_bias = _bias(mask)
        return self._own_bias

    def _append(self, layer: int, key, value) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.n_own + key.shape[2]
        current = self.own[layer]
        if current is None or end > current[0].shape[2]:
            room = end + _GROW
            bufs = []
            for old, new in zip(current or (None, None), (key, value), strict=True):
                buf = new.new_zeros(new.shape[0], new.shape[1], room, new.shape[3])
                if old is not None:
                    buf[:, :, : self.n_own] = old[:, :, : self.n_own]
                bufs.append(buf)
            current = self.own[layer] = (bufs[0], bufs[1])
        current[0][:, :, self.n_own : end] = key
        current[1][:, :, self.n_own : end] = value
        return current[0][:, :, :end], current[1][:, :, :end]


def _bias(mask: torch.Tensor) -> torch.Tensor:
    """0 where ``mask`` is true, -inf elsewhere (float32): added to attention scores."""
    return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, float("-inf"))


def _branch_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    branches = kwargs.get("cft_rl_branches")
    if branches is None:
        raise RuntimeError(f"the {ATTENTION_NAME!r} attention only runs inside Branches.step")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return branches.attend(module.layer_idx, query, key, value, scale), None


AttentionInterface.register(ATTENTION_NAME, _branch_attention)


@contextlib.contextmanager
def _attention_implementation(model, name: str):
    # Swapped on the config object the attention modules read, and always restored: the model stays
    # usable (generate, training) around a decode.
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous
