"""Critical-token annotation, reference implementation (CFT, arXiv 2510.10974).

A solution token y_t is *critical* when forcing the model off it breaks the solution: for each of the
``k`` most likely tokens other than y_t at position t, greedy decoding from ``prompt + y_<t + a``
ends in a wrong answer, or in none. One correct alternative is enough to make y_t non-critical, so the
alternatives are tried in rank order and the search stops at the first correct one; the flag is
exactly the one that trying all ``k`` would give.

This is the plain, slow version: one position at a time, one continuation at a time, with
``model.generate``. Faster implementations (batched continuations, shared KV caches) should be
tested against it.

Tokenisation follows training (:func:`cft_rl.data.prompts.encode_example`): the rendered prompt and the
completion ``solution + eos`` are tokenised *separately* and concatenated, so the positions annotated
here are the positions a trainer puts its loss on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cft_rl.data.prompts import encode_example
from cft_rl.generation import plain_generate, stop_token_ids
from cft_rl.verify.verifier import check_batch


@dataclass
class TokenAnnotation:
    """One solution token and its verdict.

    ``alternatives`` are the token ids actually tried, best-ranked first (fewer than asked for when
    one was correct, or when the vocabulary ran out); ``alternative_answers`` the final answer each
    continuation states (None: none). ``char_start``/``char_end`` locate the token in the solution
    text; the appended eos token gets the empty span at the end of the text.
    """

    position: int
    token_id: int
    token: str
    critical: bool
    alternatives: list[int]
    alternative_answers: list[str | None]
    char_start: int
    char_end: int


def critical_from_verdicts(scores: list[float | None]) -> bool:
    """True iff no alternative's verifier score is 1.0 (0.0 and None both count as not correct)."""
    if not scores:
        # Zero alternatives tried means no evidence either way; silently calling that critical (or not)
        # would bias the training mask.
        raise ValueError("a token needs at least one scored alternative to be judged critical or not")
    return all(score != 1.0 for score in scores)


def critical_spans(annotations: list[TokenAnnotation], solution: str) -> list[tuple[int, int]]:
    """Sorted, merged ``[start, end)`` character spans of the critical tokens in ``solution``.

    The eos token (an empty span at the end) is left out: it has no text to highlight.
    """
    spans = sorted(
        (a.char_start, a.char_end)
        for a in annotations
        if a.critical and a.char_end > a.char_start and a.char_end <= len(solution)
    )
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:  # touching or overlapping: one span
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def top_tokens(logits: torch.Tensor, n: int) -> list[list[int]]:
    """Per row of ``logits [..., vocab]``, the ``n`` most likely token ids, best first (ties: lower id)."""
    # A stable sort makes tie-breaking deterministic, so every engine and backend ranks alike.
    return torch.sort(logits.float(), dim=-1, descending=True, stable=True).indices[..., :n].tolist()


def alternatives_from(ranked: list[int], actual: int, k: int) -> list[int]:
    """The first ``k`` of ``ranked`` (best first, at least ``k + 1`` long) other than ``actual``."""
    return [i for i in ranked if i != actual][:k]


def ranked_alternatives(logits: torch.Tensor, actual: int, k: int) -> list[int]:
    """The ``k`` most likely token ids other than ``actual``, best first (ties: lower id first)."""
    return alternatives_from(top_tokens(logits, k + 1), actual, k)


def greedy_completion(model, tokenizer, prefix_ids: list[int], max_new_tokens: int) -> list[int]:
    """``prefix_ids`` plus greedy tokens until a stop token or ``max_new_tokens``; nothing added after a
    stop token. Plain greedy: the argmax at each step, whatever the checkpoint's generation config sets
    (a repetition penalty there would make this disagree with the fast engine)."""
    stops = stop_token_ids(model, tokenizer)
    if prefix_ids[-1] in stops or max_new_tokens <= 0:
        return list(prefix_ids)  # the alternative itself ends the answer: nothing to continue
    input_ids = torch.tensor([prefix_ids], device=model.device)
    out = plain_generate(
        model,
        stops,
        tokenizer.pad_token_id,
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
    )
    return out[0].tolist()


def make_annotation(tokenizer, position, token_id, span, tried, answers, scores) -> TokenAnnotation:
    """The :class:`TokenAnnotation` of one position from what its alternatives gave (both engines)."""
    return TokenAnnotation(
        position=position,
        token_id=token_id,
        token=tokenizer.decode([token_id]),
        critical=critical_from_verdicts(scores),
        alternatives=tried,
        alternative_answers=answers,
        char_start=span[0],
        char_end=span[1],
    )


@torch.no_grad()
def annotate_reference(
    model,
    tokenizer,
    prompt_messages,
    solution: str,
    gold: str,
    num_alternatives: int = 2,
    max_continuation_tokens: int = 512,
) -> list[TokenAnnotation]:
    """Annotate every completion token of ``solution`` (its final eos included) as critical or not."""
    model.eval()
    prompt_ids, completion_ids, offsets = encode_example(tokenizer, prompt_messages, solution)
    n_prompt = len(prompt_ids)
    # One causal forward gives every position's next-token distribution given its prefix, the same
    # distributions (up to float rounding) as one forward per prefix.
    ids = torch.tensor([prompt_ids + completion_ids], device=model.device)
    logits = model(input_ids=ids).logits[0].float()
    annotations = []
    for t, token_id in enumerate(completion_ids):
        alternatives = ranked_alternatives(logits[n_prompt + t - 1], token_id, num_alternatives)
        tried, answers, scores = [], [], []
        for alt in alternatives:
            full = greedy_completion(
                model, tokenizer, prompt_ids + completion_ids[:t] + [alt], max_continuation_tokens
            )
            # Decoded as TRL decodes completions: special tokens (the eos) dropped.
            text = tokenizer.decode(full[n_prompt:], skip_special_tokens=True)
            verdict = check_batch([text], [gold])[0]
            tried.append(alt)
            answers.append(verdict.extracted)  # the verifier's own extraction of the final answer
            scores.append(verdict.score)
            if verdict.score == 1.0:  # early stop: one correct alternative already makes y_t non-critical
                break
        annotations.append(make_annotation(tokenizer, t, token_id, offsets[t], tried, answers, scores))
    return annotations
