"""Fast critical-token annotation: the same verdicts as :func:`cft_rl.annotate.rule.annotate_reference`.

The reference decodes one perturbed continuation at a time with ``model.generate``; on a small model
that cost is almost all per-forward overhead. This engine keeps the reference's definition and
verdicts but changes how the work is done:

1. **One ranking forward** per solution over prompt + completion gives every position's
   distribution *and* the keys and values of every prefix ``prompt + y_<t`` (a causal model's cache
   for a prefix is a slice of it).
2. **Branches of many solutions decode together**, continuously batched
   (:class:`cft_rl.annotate.branches.BranchPool`): a row whose continuation ends (a stop token, or the budget)
   takes the next queued branch at once, and new solutions are ranked and queued as the queue runs
   low, so the batch stays full instead of draining solution by solution. Branches read their
   solution's cache in place (cascade attention, no per-row copy of the shared prefix).
3. **Rank r+1 only where rank r failed**, as the reference's early stop: the follow-up branch is
   queued the moment its predecessor's verdict is in, so this costs no extra round.
   ``eager_alternatives`` queues every rank at once instead (more branches, same annotations).
4. **Verification** of all branches ended in a step in one ``check_batch``, memoised on the
   extracted answer (a verdict depends only on it and the gold answer).

Continuations run to a stop token (:func:`cft_rl.generation.stop_token_ids`) or the token budget exactly as in the reference (no early stop at the first
``\\boxed{}``: a later box would change :func:`cft_rl.answers.extract_answer`). Exactness caveat:
batched and unbatched float32 arithmetic can differ in the last bits, so a greedy argmax on a near-tie
could in principle flip, and which solutions share a batch (hence the number of shards) could in
principle matter; the tests compare full annotation lists against the reference, several solutions
decoded together against each alone, and a 2-worker job against a 1-worker one.

The model-facing work sits behind a small backend interface (``add``, ``submit``, ``step``,
``release``, ``wants_more``, ``idle``): :class:`HFBackend` on transformers, :class:`VLLMBackend` on
vLLM, whose own scheduler and prefix caching do the batching there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from cft_rl.annotate.branches import BranchPool
from cft_rl.annotate.rule import (
    TokenAnnotation,
    alternatives_from,
    make_annotation,
    top_tokens,
)
from cft_rl.answers import extract_answer
from cft_rl.data.prompts import encode_example
from cft_rl.generation import stop_token_ids, vllm_generation_config
from cft_rl.verify.verifier import Verdict, check_batch


class HFBackend(BranchPool):
    """:class:`BranchPool` on a Hugging Face causal LM, with ranking: branches of ``batch_size`` rows."""

    def __init__(self, model, tokenizer, batch_size: int = 1024):
        super().__init__(model, stop_token_ids(model, tokenizer), batch_size)  # it checks batch_size

    def add(self, ids: list[int], top: int) -> tuple[int, list[list[int]]]:
        """``(handle, ranked)``: row ``j`` of ranked holds the ``top`` likeliest tokens after ``ids[: j + 1]``,
        best first (ties: lower id). Branches of ``ids`` may then be submitted under ``handle``."""
        handle, logits = self.add_sequence(ids)
        return handle, top_tokens(logits, top)

    def wants_more(self) -> bool:
        """Whether to add another sequence: a batch's worth of queued branches keeps every row busy."""
        return len(self.queue) < self.capacity


def _by_rank(entry: dict, top: int) -> list[int]:
    ranked = sorted((lp.rank, token) for token, lp in entry.items() if lp.rank is not None and lp.rank <= top)
    return [token for _, token in ranked]


class VLLMBackend:
    """The backend interface on vLLM (imported lazily: it is an optional, GPU-side dependency).

    ``step`` hands everything queued to vLLM at once: its scheduler batches continuously and its
    automatic prefix caching plays the role of the HF backend's shared cache.
    """

    def __init__(self, llm, tokenizer, batch_size: int = 4096):
        self.llm, self.capacity = llm, batch_size
        self.stops = stop_token_ids(vllm_generation_config(llm), tokenizer)
        self.queue: list[tuple] = []
        self._ended: list[tuple[object, list[int]]] = []
        self._sequences: dict[int, list[int]] = {}
        self._next_handle = 0

    def add(self, ids: list[int], top: int) -> tuple[int, list[list[int]]]:
        """As :meth:`HFBackend.add`, from vLLM's prompt logprobs (one prefill, prefix-cached after)."""
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top, logprobs=top)
        result = self.llm.generate([TokensPrompt(prompt_token_ids=list(ids))], params)[0]
        # prompt_logprobs[i] is the distribution of ids[i] given ids[:i] (None for i = 0), and holds
        # the top entries plus ids[i] itself; keep the top ones, by vLLM's rank. The last row (after
        # the whole sequence) comes from the one sampled step.
        rows = [_by_rank(entry, top) for entry in result.prompt_logprobs[1:]]
        last = result.outputs[0].logprobs
        rows.append(_by_rank(last[0], top) if last else [])
        handle, self._next_handle = self._next_handle, self._next_handle + 1
        self._sequences[handle] = list(ids)
        return handle, rows

    def submit(self, key, handle: int, prefix_len: int, token: int, budget: int) -> None:
        if token in self.stops or budget <= 0:
            self._ended.append((key, []))
        else:
            self.queue.append((key, self._sequences[handle][:prefix_len] + [token], budget))

    def wants_more(self) -> bool:
        return len(self.queue) < self.capacity

    @property
    def idle(self) -> bool:
        return not (self.queue or self._ended)

    def step(self) -> list[tuple[object, list[int]]]:
        from vllm import SamplingParams, TokensPrompt

        ended, self._ended, queued, self.queue = self._ended, [], self.queue, []
        for budget in sorted({b for _, _, b in queued}):
            batch = [(key, prefix) for key, prefix, b in queued if b == budget]
            params = SamplingParams(temperature=0.0, max_tokens=budget, stop_token_ids=self.stops)
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for _, p in batch], params)
            ended += [(key, list(o.outputs[0].token_ids)) for (key, _), o in zip(batch, outputs, strict=True)]
        return ended

    def release(self, handle: int) -> None:
        del self._sequences[handle]


@dataclass
class _Solution:
    """One solution under annotation: its tokens, each position's alternatives, the verdicts so far."""

    key: object
    handle: int
    gold: str
    prompt_ids: list[int]
    completion_ids: list[int]
    offsets: list
    alternatives: list[list[int]]
    verdicts: dict[tuple[int, int], Verdict] = field(default_factory=dict)
    pending: int = 0  # branches submitted, verdict not in yet
    judged: int = 0  # positions whose last verdict is in (for progress reports)


@torch.no_grad()
def annotate_many(
    model,
    tokenizer,
    examples: Iterable[tuple[object, list, str, str]],
    num_alternatives: int = 2,
    max_continuation_tokens: int = 512,
    batch_size: int = 1024,
    backend=None,
    eager_alternatives: bool = False,
    on_progress=None,
) -> Iterator[tuple[object, list[TokenAnnotation]]]:
    """:func:`annotate_reference`'s annotations of many solutions, decoded together.

    ``examples`` yields ``(key, prompt_messages, solution, gold)`` and is read lazily, a solution at a
    time as the decode queue runs low. Yields ``(key, annotations)`` as each solution is finished,
    which is not necessarily the input order. ``on_progress(key, judged, positions)``, if given, is
    called after every decoding step for each solution that got verdicts in it: ``judged`` of its
    ``positions`` token positions have their final verdict (a solution's branches end at many
    different steps, and it is finished only when the last one has).
    """
    backend = backend or HFBackend(model, tokenizer, batch_size)
    examples, exhausted = iter(examples), False
    open_: dict[object, _Solution] = {}
    memo: dict[tuple[str | None, str], Verdict] = {}
    while True:
        while not exhausted and backend.wants_more():
            example = next(examples, None)
            if example is None:
                exhausted = True
                break
            if example[0] in open_:
                raise ValueError(f"two examples share the key {example[0]!r}; keys must be unique")
            solution = _open(backend, tokenizer, example, num_alternatives)
            open_[solution.key] = solution
            for t, alternatives in enumerate(solution.alternatives):
                for rank in range(len(alternatives) if eager_alternatives else min(1, len(alternatives))):
                    _submit(backend, solution, t, rank, max_continuation_tokens)
        if backend.idle:
            break
        ended = backend.step()
        solutions = [open_[key] for (key, _, _), _ in ended]
        texts = [
            tokenizer.decode(s.completion_ids[:t] + [s.alternatives[t][r]] + tail, skip_special_tokens=True)
            for s, ((_, t, r), tail) in zip(solutions, ended, strict=True)
        ]
        verdicts = _verify(texts, [s.gold for s in solutions], memo)
        _record(backend, solutions, ended, verdicts, eager_alternatives, max_continuation_tokens)
        for s in {id(s): s for s in solutions}.values():
            if on_progress is not None:
                on_progress(s.key, s.judged, len(s.completion_ids))
            if s.pending == 0:
                backend.release(s.handle)
                del open_[s.key]
                yield s.key, _annotations(tokenizer, s)
    if open_:  # a backend that went idle with branches outstanding lost them
        raise RuntimeError(f"{len(open_)} solution(s) left unfinished by the decoding backend")


def _record(
    backend, solutions, ended, verdicts, eager_alternatives: bool, max_continuation_tokens: int
) -> None:
    """Keep each ended branch's verdict, and submit the next alternative where the reference would."""
    for s, ((_, t, r), _), verdict in zip(solutions, ended, verdicts, strict=True):
        s.verdicts[t, r] = verdict
        s.pending -= 1
        early_stop = not eager_alternatives and verdict.score == 1.0  # no later rank is tried
        s.judged += early_stop or all((t, q) in s.verdicts for q in range(len(s.alternatives[t])))
        # The reference's early stop: the next alternative only where this one was not correct.
        if not eager_alternatives and verdict.score != 1.0 and r + 1 < len(s.alternatives[t]):
            _submit(backend, s, t, r + 1, max_continuation_tokens)


def _open(backend, tokenizer, example, num_alternatives: int) -> _Solution:
    key, prompt_messages, solution, gold = example
    prompt_ids, completion_ids, offsets = encode_example(tokenizer, prompt_messages, solution)
    handle, ranked = backend.add(prompt_ids + completion_ids, num_alternatives + 1)
    n_prompt = len(prompt_ids)
    alternatives = [
        alternatives_from(ranked[n_prompt + t - 1], tok, num_alternatives)
        for t, tok in enumerate(completion_ids)
    ]
    return _Solution(key, handle, gold, prompt_ids, completion_ids, offsets, alternatives)


def _submit(backend, solution: _Solution, t: int, rank: int, budget: int) -> None:
    # Branch: prompt + y_<t (the first n_prompt + t tokens of the ranked sequence) + the alternative.
    prefix_len = len(solution.prompt_ids) + t
    backend.submit(
        (solution.key, t, rank), solution.handle, prefix_len, solution.alternatives[t][rank], budget
    )
    solution.pending += 1


def _verify(texts: list[str], golds: list[str], memo: dict) -> list[Verdict]:
    """``check_batch`` of the texts, once per distinct (final answer, gold): the verdict depends on
    nothing else, and many continuations state the same wrong answer."""
    keys = [(extract_answer(text), gold) for text, gold in zip(texts, golds, strict=True)]
    todo = {k: (text, k[1]) for k, text in zip(keys, texts, strict=True) if k not in memo}
    if todo:
        memo.update(
            zip(todo, check_batch([t for t, _ in todo.values()], [g for _, g in todo.values()]), strict=True)
        )
    return [memo[k] for k in keys]


def annotate_fast(
    model,
    tokenizer,
    prompt_messages,
    solution: str,
    gold: str,
    num_alternatives: int = 2,
    max_continuation_tokens: int = 512,
    batch_size: int = 1024,
    backend=None,
    eager_alternatives: bool = False,
) -> list[TokenAnnotation]:
    """:func:`annotate_reference`'s annotations of one solution (see :func:`annotate_many`, which
    annotates many solutions faster by decoding their branches together)."""
    example = (0, prompt_messages, solution, gold)
    [(_, annotations)] = annotate_many(
        model,
        tokenizer,
        [example],
        num_alternatives,
        max_continuation_tokens,
        batch_size,
        backend,
        eager_alternatives,
    )
    return annotations


def _annotations(tokenizer, s: _Solution) -> list[TokenAnnotation]:
    return [
        _annotation(tokenizer, t, tok, s.offsets[t], s.alternatives[t], s.verdicts)
        for t, tok in enumerate(s.completion_ids)
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
