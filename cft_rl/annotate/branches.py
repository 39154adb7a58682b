"""Greedy decoding of many branches off many shared sequences, continuously batched.

Annotation decodes, for every position t of a solution, a branch ``prompt + y_<t + a``: every branch's
context is a prefix of one sequence (``prompt + y``) whose keys and values one forward already
computed. Two costs decide the speed of a CPU decode of a small model:

- **a fixed cost per forward** (~3 ms for the 2-layer toy model, whatever the batch) that only more
  rows per forward amortise. One solution alone cannot fill a batch for long: its branches end at
  different lengths. So the :class:`BranchPool` takes branches of *many* sequences and refills a
  row as soon as its branch ends (continuous batching);
- **attention over the shared prefix.** Copying the prefix into every row's cache and re-reading it
  each step is what a plain batched decode pays. Here each sequence's keys and values are stored
  once; the rows of one sequence are grouped, and a group attends its queries over its sequence in
  one fused kernel call (cascade attention). Each row also has *own* keys, the tokens it has been
  fed; the parts are merged by their log-sum-exps (:mod:`cft_rl.annotate.attention`), which equals
  one softmax over both.

It plugs into any Hugging Face decoder that dispatches through ``AttentionInterface`` (Llama,
Qwen2/3, Mistral, ...), as the attention implementation ``"cft_rl_branches"`` for the duration of a
step; the model's own code does all the rest (embeddings, RoPE at the given ``position_ids``, MLPs,
the head). Greedy choices follow ``generate``: float32 logits, argmax, the first index on ties.
"""

from __future__ import annotations

import contextlib
from collections import deque

import torch
from transformers import AttentionInterface

from cft_rl.annotate.attention import additive_mask, attention_lse, merge_attention, shared_attention_lse

ATTENTION_NAME = "cft_rl_branches"
_GROW = 64  # own-key slots (and shared-sequence length) added at a time: no copy at every step
# Rows of one sequence are scored in groups of at most this many, so that one sequence with many
# live branches does not pad every other sequence's group to its size.
_GROUP_ROWS = 16
# A row's own keys are attended in segments of this many slots (see _Layout.own_segments).
_OWN_SEGMENT = 32


class BranchPool:
    """Branches ``sequence[:prefix_len] + [token]`` of registered sequences, greedily continued.

    ``add_sequence`` runs one forward over a sequence, keeps its keys and values and returns its
    logits; ``submit`` queues a branch; ``step`` feeds every live row one token and returns the
    branches that ended (one of the ``stops`` token ids generated, or their token budget spent);
    ``release`` frees a sequence once no branch of it is queued or live. Up to ``capacity`` rows
    decode at once.
    """

    def __init__(self, model, stops: list[int], capacity: int = 256):
        if capacity < 1:
            raise ValueError(f"capacity (the batch size) must be at least 1, got {capacity}")
        if not stops:
            raise ValueError("a branch pool needs at least one stop token id")
        self.model, self.stops, self.capacity = model, frozenset(stops), capacity
        self.device = model.device
        self._stop_ids = torch.tensor(sorted(self.stops), dtype=torch.long, device=self.device)
        self.queue: deque = deque()
        self._ended: list[tuple[object, list[int]]] = []
        # Shared sequences: per layer (keys, values) [slots, kv_heads, length, dim], padded.
        self._shared: list[list[torch.Tensor]] | None = None
        self._seq_len: dict[int, int] = {}  # slot -> length
        self._free_slots: list[int] = []
        # Rows: per layer own (keys, values) [rows, kv_heads, slots, dim]; per row, its branch's key
        # (None: a free row) and, as tensors so that a step needs no Python loop over rows: its
        # sequence slot, prefix length, next token to feed, budget, tokens generated so far.
        self._own: list[list[torch.Tensor]] = []
        self._keys: list[object] = []
        long = dict(dtype=torch.long, device=self.device)
        self._r = {name: torch.zeros(0, **long) for name in ("slot", "prefix", "next", "budget", "len")}
        self._r["live"] = torch.zeros(0, dtype=torch.bool, device=self.device)
        self._r["tokens"] = torch.zeros(0, _GROW, **long)
        self._layout = None

    # --- sequences ----------------------------------------------------------------------------

    @torch.no_grad()
    def add_sequence(self, ids: list[int]) -> tuple[int, torch.Tensor]:
        """``(handle, logits [len(ids), vocab])``: one forward, whose cache the branches will read."""
        self.model.eval()
        out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
        layers = [(layer.keys[0], layer.values[0]) for layer in out.past_key_values.layers]
        slot = self._free_slots.pop() if self._free_slots else len(self._seq_len)  # slots 0..n-1 all taken
        self._store(slot, layers)
        self._seq_len[slot] = len(ids)
        return slot, out.logits[0]

    def release(self, handle: int) -> None:
        if bool((self._r["live"] & (self._r["slot"] == handle)).any()) or any(
            q[1] == handle for q in self.queue
        ):
            raise RuntimeError("release() of a sequence that still has queued or live branches")
        del self._seq_len[handle]
        self._free_slots.append(handle)

    def _store(self, slot: int, layers) -> None:
        length = layers[0][0].shape[1]
        if self._shared is None:
            self._shared = [
                [k.new_zeros(1, k.shape[0], length + _GROW, k.shape[2]) for k in kv] for kv in layers
            ]
        slots, room = self._shared[0][0].shape[0], self._shared[0][0].shape[2]
        if slot >= slots or length > room:  # grow: more slots or longer sequences
            new_slots, new_room = (2 * slots if slot >= slots else slots), max(room, length + _GROW)
            for kv in self._shared:
                for i, old in enumerate(kv):
                    kv[i] = old.new_zeros(new_slots, old.shape[1], new_room, old.shape[3])
                    kv[i][:slots, :, :room] = old
        for kv, new in zip(self._shared, layers, strict=True):
            for buf, tensor in zip(kv, new, strict=True):
                buf[slot, :, :length] = tensor

    # --- branches -----------------------------------------------------------------------------

    def submit(self, key, handle: int, prefix_len: int, token: int, budget: int) -> None:
        """Queue the branch ``sequence[:prefix_len] + [token]``, to be continued by up to ``budget``
        greedy tokens; a later ``step`` returns ``(key, tail)``, the tail ending in a stop token if reached."""
        if not 1 <= prefix_len <= self._seq_len[handle]:
            raise ValueError(f"prefix_len {prefix_len} is outside the sequence (1..{self._seq_len[handle]})")
        if token in self.stops or budget <= 0:
            self._ended.append((key, []))  # nothing to continue, as generate would do
        else:
            self.queue.append((key, handle, prefix_len, token, budget))

    @property
    def live(self) -> int:
        return len(self._keys) - self._keys.count(None)

    @property
    def idle(self) -> bool:
        return not (self.queue or self._ended or self.live)

    @torch.no_grad()
    def step(self) -> list[tuple[object, list[int]]]:
        """Admit queued branches into free rows, feed each live row one token; the branches that ended."""
        ended, self._ended = self._ended, []
        self._admit()
        if not self.live:
            return ended
        r = self._r
        self._layout = _Layout(self)
        with _attention_implementation(self.model, ATTENTION_NAME):
            logits = self.model(
                input_ids=r["next"][:, None],
                position_ids=(r["prefix"] + r["len"])[:, None],  # each row's true position, for RoPE
                use_cache=False,
                cft_rl_branches=self,
            ).logits
        greedy = logits[:, -1].float().argmax(dim=-1)
        if self._layout.own_width > r["tokens"].shape[1]:  # a row is about to write past the end
            r["tokens"] = torch.cat([r["tokens"], torch.zeros_like(r["tokens"][:, :_GROW])], dim=1)
        r["tokens"][torch.arange(len(greedy), device=self.device), r["len"]] = greedy
        r["len"] += r["live"]
        r["next"] = greedy
        done = (r["live"] & (torch.isin(greedy, self._stop_ids) | (r["len"] >= r["budget"]))).nonzero()[:, 0]
        if len(done):
            for b, tokens, n in zip(
                done.tolist(), r["tokens"][done].tolist(), r["len"][done].tolist(), strict=True
            ):
                ended.append((self._keys[b], tokens[:n]))
                self._keys[b] = None
            r["live"][done] = False
            r["len"][done] = 0  # a free row must not widen the own part every row attends over
        self._shrink()
        return ended

    def _admit(self) -> None:
        wanted = min(len(self.queue), self.capacity - self.live)
        if not wanted:
            return
        free = [b for b, key in enumerate(self._keys) if key is None]
        if wanted > len(free):
            self._resize(list(range(len(self._keys))), len(self._keys) + wanted - len(free))
            free = [b for b, key in enumerate(self._keys) if key is None]
        rows, items = free[:wanted], [self.queue.popleft() for _ in range(wanted)]
        index = torch.tensor(rows, device=self.device)
        for name, column in zip(
            ("slot", "prefix", "next", "budget"), zip(*(i[1:] for i in items), strict=True), strict=True
        ):
            self._r[name][index] = torch.tensor(column, device=self.device)
        self._r["live"][index] = True  # "len" is already 0: free rows are reset when they end
        for b, item in zip(rows, items, strict=True):
            self._keys[b] = item[0]

    def _shrink(self) -> None:
        """Drop free rows once they are most of the batch (compute runs on every row, free or not)."""
        live = [b for b, key in enumerate(self._keys) if key is not None]
        if len(self._keys) > 8 and 2 * len(live) < len(self._keys) and not self.queue:
            self._resize(live, len(live))

    def _resize(self, keep: list[int], n: int) -> None:
        """Rows ``keep`` (in this order) first, then free rows up to ``n`` rows in all."""
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        extra = n - len(keep)

        def take(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t[index], t.new_zeros(extra, *t.shape[1:])])

        self._r = {name: take(t) for name, t in self._r.items()}
        self._own = [[take(t) for t in kv] for kv in self._own]
        self._keys = [self._keys[b] for b in keep] + [None] * extra

    # --- attention ----------------------------------------------------------------------------

    def attend(self, layer: int, query, key, value, scaling: float) -> torch.Tensor:
        """Attention output ``[rows, 1, heads, dim]`` of a step's queries; stores the step's keys/values.

        The shared part (each group against its sequence) and the own part (each row against the tokens
        it was fed) are two softmax attentions, merged by their log-sum-exps: the same result as one
        softmax over both, without a score tensor that holds both.
        """
        lay = self._layout
        own_kt, own_v = self._append(layer, key[:, :, 0], value[:, :, 0])
        rows, heads, _, dim = query.shape
        kv_heads = key.shape[1]
        groups = heads // kv_heads  # query head h reads kv head h // groups, as HF's repeat_kv
        q = query[:, :, 0].view(rows, kv_heads, groups, dim)
        out_own, lse_own = self._attend_own(q * scaling, own_kt, own_v)
        # Shared part, in padded groups: queries [G, kv, R * groups, dim] against [G, kv, L, dim].
        n, r = lay.pad_index.shape
        shared_k, shared_v = (
            t[:, :, : lay.length].index_select(0, lay.group_slot) for t in self._shared[layer]
        )
        q_pad = _pad(q, lay.pad_index).permute(0, 2, 1, 3, 4).reshape(n, kv_heads, r * groups, dim)
        out, lse = shared_attention_lse(q_pad, shared_k, shared_v, lay.shared_bias(groups), scaling)
        out = _unpad(out.view(n, kv_heads, r, groups, dim), lay, 0.0)
        lse = _unpad(lse.view(n, kv_heads, r, groups), lay, float("-inf"))
        out, _ = merge_attention(out, lse, out_own, lse_own)
        return out.to(query.dtype).view(rows, 1, heads, dim)

    def _attend_own(self, q, own_kt, own_v) -> tuple[torch.Tensor, torch.Tensor]:
        """The own part, segment by segment (see ``_Layout.own_segments``); ``q`` is scaled."""
        out = lse = None
        for start, end, rows, bias, ok in self._layout.own_segments:
            k_t, v = own_kt[..., start:end], own_v[:, :, start:end]
            if rows is None:  # the first segment: every row
                out, lse = attention_lse(q, k_t, v, bias, ok)
                continue
            part = attention_lse(q[rows], k_t.index_select(0, rows), v.index_select(0, rows), bias, ok)
            out[rows], lse[rows] = merge_attention(out[rows], lse[rows], *part)
        return out, lse

    def _append(self, layer: int, key, value) -> tuple[torch.Tensor, torch.Tensor]:
        """Write each row's new key/value at its own length; the own parts up to the longest row.

        Keys are kept transposed, ``[rows, kv, dim, slots]``: the score product ``q @ k_t`` then reads
        its right operand in the layout MKL's batched kernel is fast on (~4x, measured at 512 rows).
        """
        lay = self._layout
        if len(self._own) <= layer:
            rows, kv_heads, dim = key.shape
            self._own.append(
                [key.new_zeros(rows, kv_heads, dim, _GROW), value.new_zeros(rows, kv_heads, _GROW, dim)]
            )
        kv = self._own[layer]
        if lay.own_width > kv[1].shape[2]:
            kv[0] = torch.cat([kv[0], torch.zeros_like(kv[0][..., :_GROW])], dim=3)
            kv[1] = torch.cat([kv[1], torch.zeros_like(kv[1][:, :, :_GROW])], dim=2)
        rows = torch.arange(key.shape[0], device=key.device)
        kv[0][rows, :, :, lay.own_len] = key
        kv[1][rows, :, lay.own_len] = value
        return kv[0][..., : lay.own_width], kv[1][:, :, : lay.own_width]


class _Layout:
    """One step's index tensors, shared by every layer: live rows grouped by sequence, the masks.

    Group ``g`` holds up to ``_GROUP_ROWS`` live rows of one sequence (``group_slot[g]``);
    ``pad_index [G, R]`` lists them (``rows``: a padding row), ``row_where[b]`` is row ``b``'s
    place in that flattened layout (``G * R``: in no group, a free row).
    """

    def __init__(self, pool: BranchPool):
        r, n_rows = pool._r, len(pool._keys)
        device = r["slot"].device
        live = r["live"].nonzero()[:, 0]
        slots, order = torch.sort(r["slot"][live], stable=True)
        live = live[order]
        first = torch.searchsorted(slots, slots)  # where each row's sequence starts in the sorted list
        within = torch.arange(len(live), device=device) - first
        groups, group_of = torch.unique_consecutive(
            slots * n_rows + within // _GROUP_ROWS, return_inverse=True
        )
        col = within % _GROUP_ROWS
        width = int(col.max()) + 1
        self.group_slot = groups // n_rows
        self.pad_index = torch.full((len(groups), width), n_rows, device=device)
        self.pad_index[group_of, col] = live
        self.row_where = torch.full((n_rows,), len(groups) * width, device=device)
        self.row_where[live] = group_of * width + col
        prefix = torch.zeros(len(groups), width, dtype=torch.long, device=device)
        prefix[group_of, col] = r["prefix"][live]
        self.length = int(prefix.max())
        self._shared_ok = torch.arange(self.length, device=device) < prefix[..., None]  # [G, R, L]
        self._shared_bias: dict[int, torch.Tensor] = {}
        self.own_len = r["len"]
        self.own_width = int(self.own_len.max()) + 1
        # The own part runs in segments of _OWN_SEGMENT slots, each over the rows that reach into it:
        # most branches are short, and padding every row to the longest one's length tripled the own
        # part's work (measured on 100 solutions: a mean width of 82 slots for a mean length of 27).
        self.own_segments = [
            self._own_segment(start, min(start + _OWN_SEGMENT, self.own_width))
            for start in range(0, self.own_width, _OWN_SEGMENT)
        ]

    def _own_segment(self, start: int, end: int):
        """``(start, end, rows, bias, ok)``: the rows (None: all) that see a slot in ``[start, end)``,
        and their masks ``[rows, 1, 1, end - start]``."""
        rows = None if start == 0 else (self.own_len >= start).nonzero()[:, 0]
        lengths = self.own_len if rows is None else self.own_len[rows]
        ok = (torch.arange(start, end, device=lengths.device) <= lengths[:, None])[:, None, None, :]
        return start, end, rows, additive_mask(ok), ok

    def shared_bias(self, groups: int) -> torch.Tensor:
        """The shared part's additive mask ``[G, 1, R * groups, L]`` (its queries are laid out that way),
        built once per step."""
        if groups not in self._shared_bias:
            n, r, length = self._shared_ok.shape
            ok = self._shared_ok[:, None, :, None, :].expand(n, 1, r, groups, length)
            self._shared_bias[groups] = additive_mask(ok.reshape(n, 1, r * groups, length))
        return self._shared_bias[groups]


def _pad(x: torch.Tensor, pad_index: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` laid out as ``[groups, R, ...]`` (padding rows read zeros)."""
    return torch.cat([x, x.new_zeros(1, *x.shape[1:])])[pad_index]


def _unpad(x: torch.Tensor, lay: _Layout, fill: float) -> torch.Tensor:
    """``x [groups, kv, R, ...]`` back to row order ``[rows, kv, ...]``; rows in no group get ``fill``."""
    flat = x.transpose(1, 2).reshape(-1, *x.shape[1:2], *x.shape[3:])
    return torch.cat([flat, flat.new_full((1, *flat.shape[1:]), fill)])[lay.row_where]


def _branch_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    pool = kwargs.get("cft_rl_branches")
    if pool is None:
        raise RuntimeError(f"the {ATTENTION_NAME!r} attention only runs inside BranchPool.step")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return pool.attend(module.layer_idx, query, key, value, scale), None


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
