"""The model's own greedy solutions (``source="self"``), many prompts decoded together.

Annotating its own solutions first asks the model to write them. One ``generate`` call per prompt
(batch 1) was exact but slow: on the toy model it took half the annotation stage (measured by cProfile
over 150 train problems: 85 s of 172). A padded batch is fast but not exact: left padding shifts
positions and can flip a greedy argmax, so a solution would depend on which rows shared its batch
(hence on sharding).

Here every prompt is a sequence of a :class:`~cft_rl.annotate.branches.BranchPool` and its solution one
branch of it: the prompt's first greedy token, continued greedily. The pool decodes many branches at
once without padding: each row attends to its own prompt's keys at its own positions, so a row's
tokens do not depend on its neighbours beyond the last bits of batched float sums, the caveat that the
annotation's branches already carry (tests compare it with ``generate``).
"""

from __future__ import annotations

from collections.abc import Sequence

from cft_rl.annotate.branches import BranchPool
from cft_rl.generation import Sample, render_prompts, stop_token_ids


class PoolGenerator:
    """Greedy completions of many prompts through one :class:`BranchPool` of ``batch_size`` rows.

    It has :class:`cft_rl.generation.HFGenerator`'s ``generate`` for the one case annotation needs:
    ``n=1`` at temperature 0 (entropies are not recorded).
    """

    def __init__(self, model, tokenizer, batch_size: int = 1024):
        self.tokenizer = tokenizer
        self.pool = BranchPool(model, stop_token_ids(model, tokenizer), batch_size)

    def generate(
        self,
        prompts: Sequence,
        n: int = 1,
        temperature: float = 0.0,
        max_new_tokens: int = 256,
        seed: int = 0,  # greedy decoding draws nothing; accepted for the generators' common signature
        progress: bool = False,
    ) -> list[list[Sample]]:
        if n != 1 or temperature != 0:
            raise ValueError(
                f"PoolGenerator decodes greedily, one completion a prompt; got n={n}, T={temperature}"
            )
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        pool, firsts, handles = self.pool, [], []
        for text in render_prompts(self.tokenizer, prompts):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            handle, logits = pool.add_sequence(ids)
            first = int(logits[-1].float().argmax())  # generate's greedy choice: the first index on ties
            # The branch "prompt + first", continued: a stop token as the first one ends it at once.
            pool.submit(len(firsts), handle, len(ids), first, max_new_tokens - 1)
            firsts.append(first)
            handles.append(handle)
        tails: dict[int, list[int]] = {}
        while not pool.idle:
            tails.update(pool.step())
        for handle in handles:
            pool.release(handle)
        samples = []
        for i, first in enumerate(firsts):
            tokens = [first, *tails[i]]  # ends with its stop token when one was reached, as generate's
            samples.append([Sample(self.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens))])
        return samples
