"""Fast critical-token annotation: the same verdicts as :func:`cft_rl.annotate_core.annotate_reference`.

The reference decodes one perturbed continuation at a time with ``model.generate``; on a small model
that cost is almost all per-call overhead (one Python-level forward per generated token per branch).
This engine keeps the reference's definition and verdicts but changes how the work is done:

1. **One ranking forward** over prompt + completion gives every position's distribution *and* the keys
   and values of every prefix ``prompt + y_<t`` (a causal model's cache for a prefix is a slice of it).
2. **All branches of a solution decode as one batch** that reads that cache in place
   (:mod:`cft_rl.branch_decoding`: cascade attention, no per-row copy of the shared prefix); only the
   alternative token and what follows it are fed, at their true position ids.
3. **Alternatives**: by default every rank's alternative decodes in the first batch
   (``eager_alternatives``); otherwise rank r+1 only where rank r failed, in rounds. Either way the
   verdicts kept are the reference's: rank order, stopping at the first correct alternative.
4. **Finished rows leave the batch** (in groups, to keep copies rare).
5. **Batched verification**: all continuations of a round go to ``check_batch`` together.
6. Optional **exact speculative decoding** (``draft_tokens``): drafts are looked up in the original
   sequence (a perturbed continuation often re-joins it) and verified in the same forward.

Continuations run to eos or the token budget exactly as in the reference (no early stop at the first
``\\boxed{}``: a later box would change :func:`cft_rl.answers.extract_answer`). Exactness caveat:
batched and unbatched float32 arithmetic can differ in the last bits, so a greedy argmax on a near-tie
could in principle flip; the tests compare full annotation lists against the reference.

The model-facing work sits behind a two-method backend (:class:`HFBackend`: ``rank`` and
``continue_greedy``) so that a serving engine (vLLM, with its own prefix caching) can stand in.
"""

from __future__ import annotations

import torch

from cft_rl.annotate_core import (
    TokenAnnotation,
    alternatives_from,
    encode_example,
    make_annotation,
    top_tokens,
)
from cft_rl.branch_decoding import Branches
from cft_rl.rewards import Verdict, check_batch


class HFBackend:
    """Greedy decoding on a Hugging Face causal LM, batched, reusing the ranking forward's KV cache.

    ``continue_greedy`` requires every prefix without its last token to be a prefix of the sequence
    last passed to ``rank``: that is what makes the cache slices valid, and it is what annotation does.
    ``draft_tokens`` > 0 turns on exact greedy speculative decoding with drafts looked up in the ranked
    sequence (see :class:`NgramDraft`); 0 decodes one token per forward.
    """

    def __init__(self, model, tokenizer, batch_size: int = 128, draft_tokens: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if draft_tokens < 0:
            raise ValueError(f"draft_tokens must be 0 (no drafting) or more, got {draft_tokens}")
        self.model, self.batch_size, self.draft_tokens = model, batch_size, draft_tokens
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._ids: list[int] = []
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._drafts = NgramDraft([])

    @torch.no_grad()
    def rank(self, ids: list[int], top: int) -> list[list[int]]:
        """Row ``j``: the ``top`` likeliest tokens after ``ids[: j + 1]``, best first (ties: lower id).

        Keeps the forward's cache for ``continue_greedy``.
        """
        self.model.eval()
        out = self.model(input_ids=torch.tensor([ids], device=self.model.device), use_cache=True)
        self._ids = list(ids)
        self._kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        self._drafts = NgramDraft(self._ids)
        return top_tokens(out.logits[0], top)

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

    def _decode(self, prefixes: list[list[int]], budget: int) -> list[list[int]]:
        """Batched greedy (speculative, with drafts) decoding of one chunk of prefixes.

        Each step feeds every row its pending token (the last one accepted, not yet attended to) plus
        a draft of up to ``draft_tokens`` guesses, in one forward. The row keeps the longest run of
        draft tokens that equal the model's own argmax after the tokens before them, plus the argmax
        after that run: exactly the tokens one-at-a-time greedy decoding gives, several per forward
        whenever the perturbed continuation re-joins text already seen. Rejected slots are masked.
        """
        self._check_prefixes(prefixes)
        device = self.model.device
        branches = Branches(self._kv, [len(p) - 1 for p in prefixes])
        rows = list(range(len(prefixes)))  # batch row -> prefix index
        contexts = [list(p) for p in prefixes]
        out: list[list[int]] = [[] for _ in prefixes]
        finished = [False] * len(prefixes)
        while rows:
            drafts = [
                []
                if finished[r]
                else self._drafts.lookup(contexts[r], min(self.draft_tokens, budget - len(out[r]) - 1))
                for r in rows
            ]
            width = 1 + max(len(d) for d in drafts)
            fed = [[contexts[r][-1], *d] for r, d in zip(rows, drafts, strict=True)]
            tokens = torch.tensor([f + [self.pad] * (width - len(f)) for f in fed], device=device)
            valid = (
                torch.arange(width, device=device)[None, :]
                < torch.tensor([len(f) for f in fed], device=device)[:, None]
            )
            # Same rule as generate's greedy search: float32 scores, argmax (first index on ties).
            argmax = branches.step(self.model, tokens, valid).float().argmax(dim=-1).tolist()
            kept = []
            for r, draft, guess in zip(rows, drafts, argmax, strict=True):
                n_ok = _accepted(draft, guess)
                kept.append(1 + n_ok)
                if finished[r]:
                    continue
                new = _until_eos(draft[:n_ok] + [guess[n_ok]], self.eos)[: budget - len(out[r])]
                out[r] += new
                contexts[r] += new
                finished[r] = new[-1] == self.eos or len(out[r]) >= budget
            branches.advance(kept)
            # Finished rows ride along (outputs ignored) until a quarter of the batch is done: dropping
            # rows copies the own buffers, which costs more than a few wasted rows of compute.
            keep = [b for b, r in enumerate(rows) if not finished[r]]
            if 4 * (len(rows) - len(keep)) >= len(rows):
                if keep:
                    branches.select(keep)
                rows = [rows[b] for b in keep]
        return out


def _accepted(draft: list[int], argmax: list[int]) -> int:
    """How many leading draft tokens greedy decoding would itself have produced."""
    n = 0
    while n < len(draft) and draft[n] == argmax[n]:
        n += 1
    return n


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


class NgramDraft:
    """Draft tokens for speculative decoding, looked up in one reference sequence (prompt lookup).

    A perturbed continuation often re-joins the original solution a few tokens later ("... = 9. Add
    3: ..." after "... = 8. Add 3: ..."): the last ``n`` tokens of the context then occur in the
    original, and the original's next tokens are a good guess. The longest matching n-gram (n <= 3)
    wins; its latest occurrence is used. A wrong guess costs compute, never correctness.
    """

    def __init__(self, source: list[int], max_n: int = 3):
        self.source, self.max_n = source, max_n
        self._next: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_n + 1)]
        for n in range(1, max_n + 1):
            for end in range(n, len(source)):  # later occurrences overwrite earlier ones
                self._next[n][tuple(source[end - n : end])] = end

    def lookup(self, context: list[int], max_tokens: int) -> list[int]:
        if max_tokens <= 0:
            return []
        for n in range(min(self.max_n, len(context)), 0, -1):
            end = self._next[n].get(tuple(context[-n:]))
            if end is not None:
                return self.source[end : end + max_tokens]
        return []


def _by_rank(entry: dict, top: int) -> list[int]:
    ranked = sorted((lp.rank, token) for token, lp in entry.items() if lp.rank is not None and lp.rank <= top)
    return [token for _, token in ranked]


class VLLMBackend:
    """The same two methods on vLLM (imported lazily: it is an optional, GPU-side dependency).

    vLLM's automatic prefix caching plays the role of the HF backend's cache slicing.
    """

    def __init__(self, llm, tokenizer):
        self.llm, self.eos = llm, tokenizer.eos_token_id

    def rank(self, ids: list[int], top: int) -> list[list[int]]:
        """As :meth:`HFBackend.rank`, from vLLM's prompt logprobs (one prefill, prefix-cached after)."""
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top, logprobs=top)
        result = self.llm.generate([TokensPrompt(prompt_token_ids=list(ids))], params)[0]
        # prompt_logprobs[i] is the distribution of ids[i] given ids[:i] (None for i = 0), and holds
        # the top entries plus ids[i] itself; keep the top ones, by vLLM's rank. The last row (after
        # the whole sequence) comes from the one sampled step.
        rows = [_by_rank(entry, top) for entry in result.prompt_logprobs[1:]]
        last = result.outputs[0].logprobs
        rows.append(_by_rank(last[0], top) if last else [])
        return rows

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
    batch_size: int = 128,
    backend=None,
    draft_tokens: int = 0,
    eager_alternatives: bool = True,
) -> list[TokenAnnotation]:
    """:func:`annotate_reference`'s annotations, computed in batched rounds (see the module doc).

    ``eager_alternatives`` decodes every rank's alternative in the first round, instead of rank r+1
    only where rank r failed: more branches, fewer sequential decodes. The verdicts kept, hence the
    annotations, are the same either way.
    """
    backend = backend or HFBackend(model, tokenizer, batch_size, draft_tokens)
    prompt_ids, completion_ids, offsets = encode_example(tokenizer, prompt_messages, solution)
    n_prompt = len(prompt_ids)
    ranked = backend.rank(prompt_ids + completion_ids, num_alternatives + 1)
    alternatives = [
        alternatives_from(ranked[n_prompt + t - 1], tok, num_alternatives)
        for t, tok in enumerate(completion_ids)
    ]
    verdicts: dict[tuple[int, int], Verdict] = {}
    undecided = list(range(len(completion_ids)))
    for rank in range(num_alternatives):
        todo = [t for t in undecided if rank < len(alternatives[t])]
        if not todo:
            break
        if eager_alternatives and rank == 0:
            pairs = [(t, r) for t in todo for r in range(len(alternatives[t]))]
        else:
            pairs = [(t, rank) for t in todo if (t, rank) not in verdicts]
        heads = [completion_ids[:t] + [alternatives[t][r]] for t, r in pairs]
        tails = backend.continue_greedy([prompt_ids + h for h in heads], max_continuation_tokens)
        # Decoded as the reference (and TRL) decodes: completion part only, special tokens dropped.
        texts = [tokenizer.decode(h + c, skip_special_tokens=True) for h, c in zip(heads, tails, strict=True)]
        verdicts.update(zip(pairs, check_batch(texts, [gold] * len(texts)), strict=True))
        # Early stop as in the reference: a correct alternative settles the position.
        undecided = [t for t in todo if verdicts[t, rank].score != 1.0]
    return [
        _annotation(tokenizer, t, tok, offsets[t], alternatives[t], verdicts)
        for t, tok in enumerate(completion_ids)
    ]


def _annotation(tokenizer, t, token_id, span, alternatives, verdicts) -> TokenAnnotation:
    """Position ``t``'s alternatives in rank order, up to and including the first correct one."""
    tried, answers, scores = [], [], []
    for r, alt in enumerate(alternatives):
        verdict = verdicts[t, r]
        tried.append(alt)
        answers.append(verdict.extracted)  # the verifier's own extraction of the final answer
        scores.append(verdict.score)
        if verdict.score == 1.0:
            break
    return make_annotation(tokenizer, t, token_id, span, tried, answers, scores)
