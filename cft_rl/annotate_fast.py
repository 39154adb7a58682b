"""Fast critical-token annotation: the same verdicts as :func:`cft_rl.annotate_core.annotate_reference`.

The reference decodes one perturbed continuation at a time with ``model.generate``; on a small model
that cost is almost all per-call overhead (one Python-level forward per generated token per branch).
This engine keeps the reference's definition and search order but changes how the work is done:

1. **One ranking forward** over prompt + completion gives every position's distribution *and* the KV
   cache of every prefix ``prompt + y_<t`` (a causal model's cache for a prefix is a slice of it).
2. **Rounds of batched branches**: round ``r`` decodes the rank-``r`` alternative of every position
   still undecided (no correct alternative yet) as one left-padded batch, so the early stop of the
   reference (stop at the first correct alternative) is kept exactly: the same alternatives are tried.
3. **Prefix KV reuse**: each branch's cache is the slice ``[:len(prefix) - 1]`` of the ranking cache,
   left-padded; only the alternative token itself is fed, at its true position id.
4. **Finished rows leave the batch** at eos, so one long branch does not keep the others' compute alive.
5. **Batched verification**: all continuations of a round go to ``check_batch`` together.

Continuations run to eos or the token budget exactly as in the reference (no early stop at the first
``\\boxed{}``: a later box would change :func:`cft_rl.answers.extract_answer`). Exactness caveat:
batched and unbatched float32 matmuls can differ in the last bits, so a greedy argmax on a near-tie
could in principle flip; the tests compare full annotation lists against the reference.

The model-facing work sits behind a two-method backend (:class:`HFBackend`: ``rank`` and
``continue_greedy``) so that a serving engine (vLLM, with its own prefix caching) can stand in.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from cft_rl.annotate_core import TokenAnnotation, encode_example, make_annotation, ranked_alternatives
from cft_rl.rewards import check_batch


class HFBackend:
    """Greedy decoding on a Hugging Face causal LM, batched, reusing the ranking forward's KV cache.

    ``continue_greedy`` requires every prefix without its last token to be a prefix of the sequence
    last passed to ``rank``: that is what makes the cache slices valid, and it is what annotation does.
    """

    def __init__(self, model, tokenizer, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.batch_size = model, batch_size
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._ids: list[int] = []
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def rank(self, ids: list[int]) -> torch.Tensor:
        """Float32 next-token logits ``[len(ids), vocab]``; keeps the cache for ``continue_greedy``."""
        self.model.eval()
        out = self.model(input_ids=torch.tensor([ids], device=self.model.device), use_cache=True)
        self._ids = list(ids)
        self._kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return out.logits[0].float()

    @torch.no_grad()
    def continue_greedy(self, prefixes: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """The greedy tokens after each prefix (eos included when reached), as ``greedy_completion``."""
        results: list[list[int]] = [[] for _ in prefixes]
        # A prefix that already ends in eos, or a zero budget, has nothing to continue (as the reference).
        live = [i for i, p in enumerate(prefixes) if p[-1] != self.eos and max_new_tokens > 0]
        for start in range(0, len(live), self.batch_size):
            chunk = live[start : start + self.batch_size]
            for i, tokens in zip(
                chunk, self._decode([prefixes[i] for i in chunk], max_new_tokens), strict=True
            ):
                results[i] = tokens
        return results

    def _check_prefixes(self, prefixes: list[list[int]]) -> None:
        for p in prefixes:
            n = len(p) - 1
            if n < 1 or n > len(self._ids) or p[:n] != self._ids[:n]:
                raise ValueError("continue_greedy needs prefixes that extend a prefix of the ranked sequence")

    def _batch_cache(self, lengths: list[int], max_new_tokens: int):
        """A left-padded cache whose row b holds the ranking cache's first ``lengths[b]`` slots."""
        from transformers import DynamicCache

        width = max(lengths)
        layers = []
        for keys, values in self._kv:
            # Room for every new token up front: a growing cache re-copies itself at each step.
            shape = (len(lengths), keys.shape[1], width + max_new_tokens, keys.shape[3])
            k, v = keys.new_zeros(shape), values.new_zeros(shape)
            for b, n in enumerate(lengths):
                k[b, :, width - n : width] = keys[0, :, :n]
                v[b, :, width - n : width] = values[0, :, :n]
            layers.append(_PreallocatedLayer(k, v, width))
        cache = DynamicCache()
        cache.layers = layers
        mask = torch.zeros(len(lengths), width + max_new_tokens, dtype=torch.long, device=self.model.device)
        for b, n in enumerate(lengths):
            mask[b, width - n : width] = 1
        return cache, mask, width

    def _decode(self, prefixes: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Batched greedy decoding of one chunk; rows drop out of the batch as they reach eos."""
        self._check_prefixes(prefixes)
        device = self.model.device
        lengths = [len(p) - 1 for p in prefixes]
        cache, full_mask, width = self._batch_cache(lengths, max_new_tokens)
        tokens = torch.tensor([p[-1] for p in prefixes], device=device)
        # True positions, not slot indices: RoPE must see each row's own length, padding aside.
        positions = torch.tensor(lengths, device=device)
        rows = torch.arange(len(prefixes), device=device)
        out: list[list[int]] = [[] for _ in prefixes]
        for step in range(max_new_tokens):
            full_mask[:, width + step] = 1
            mask = full_mask[:, : width + step + 1]
            logits = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=positions[:, None],
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1]
            # Same rule as generate's greedy search: float32 scores, argmax (first index on ties).
            tokens = logits.float().argmax(dim=-1)
            for row, tok in zip(rows.tolist(), tokens.tolist(), strict=True):
                out[row].append(tok)
            keep = tokens != self.eos
            if not bool(keep.any()):
                break
            if not bool(keep.all()):
                idx = keep.nonzero().squeeze(1)
                cache.batch_select_indices(idx)
                full_mask, tokens, positions, rows = full_mask[idx], tokens[idx], positions[idx], rows[idx]
            positions = positions + 1
        return out


class _PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` over preallocated buffers: ``update`` writes in place instead of concatenating."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.buf_k, self.buf_v, self.length = keys, values, length
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        self.buf_k[:, :, self.length : end] = key_states
        self.buf_v[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.buf_k[:, :, :end], self.buf_v[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.buf_k, self.buf_v = self.buf_k[indices], self.buf_v[indices]
        self.keys, self.values = self.buf_k[:, :, : self.length], self.buf_v[:, :, : self.length]


class VLLMBackend:
    """The same two methods on vLLM (imported lazily: it is an optional, GPU-side dependency).

    vLLM's automatic prefix caching plays the role of the HF backend's cache slicing.
    """

    def __init__(self, llm, tokenizer):
        self.llm, self.eos = llm, tokenizer.eos_token_id

    def rank(self, ids: list[int]) -> torch.Tensor:
        raise NotImplementedError("ranking needs full-vocabulary logits; use HFBackend.rank for it")

    def continue_greedy(self, prefixes: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=[self.eos])
        live = [i for i, p in enumerate(prefixes) if p[-1] != self.eos and max_new_tokens > 0]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=prefixes[i]) for i in live], params)
        results: list[list[int]] = [[] for _ in prefixes]
        for i, o in zip(live, outputs, strict=True):
            results[i] = list(o.outputs[0].token_ids)
        return results


@torch.no_grad()
def annotate_fast(
    model,
    tokenizer,
    prompt_messages,
    solution: str,
    gold: str,
    num_alternatives: int = 2,
    max_continuation_tokens: int = 512,
    batch_size: int = 64,
    backend=None,
) -> list[TokenAnnotation]:
    """:func:`annotate_reference`'s annotations, computed in batched rounds (see the module doc)."""
    backend = backend or HFBackend(model, tokenizer, batch_size)
    prompt_ids, completion_ids, offsets = encode_example(tokenizer, prompt_messages, solution)
    n_prompt = len(prompt_ids)
    logits = backend.rank(prompt_ids + completion_ids)
    alternatives = [
        ranked_alternatives(logits[n_prompt + t - 1], tok, num_alternatives)
        for t, tok in enumerate(completion_ids)
    ]
    tried: list[list[int]] = [[] for _ in completion_ids]
    answers: list[list[str | None]] = [[] for _ in completion_ids]
    scores: list[list[float | None]] = [[] for _ in completion_ids]
    undecided = list(range(len(completion_ids)))
    for rank in range(num_alternatives):
        todo = [t for t in undecided if rank < len(alternatives[t])]
        if not todo:
            break
        heads = [completion_ids[:t] + [alternatives[t][rank]] for t in todo]
        tails = backend.continue_greedy([prompt_ids + h for h in heads], max_continuation_tokens)
        # Decoded as the reference (and TRL) decodes: completion part only, special tokens dropped.
        texts = [tokenizer.decode(h + c, skip_special_tokens=True) for h, c in zip(heads, tails, strict=True)]
        verdicts = check_batch(texts, [gold] * len(texts))
        for t, verdict in zip(todo, verdicts, strict=True):
            tried[t].append(alternatives[t][rank])
            answers[t].append(verdict.extracted)  # the verifier's own extraction of the final answer
            scores[t].append(verdict.score)
        # Early stop as in the reference: a correct alternative settles the position.
        undecided = [t for t in todo if scores[t][-1] != 1.0]
    return [
        make_annotation(tokenizer, t, tok, offsets[t], tried[t], answers[t], scores[t])
        for t, tok in enumerate(completion_ids)
    ]
