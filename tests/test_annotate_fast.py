"""The fast annotator must give exactly the reference's annotations, only faster."""

import pytest

from cft_rl.annotate_core import annotate_reference
from cft_rl.annotate_fast import HFBackend, annotate_fast
from cft_rl.toy import load_toy


@pytest.fixture(scope="module")
def toy(toy_dir):
    return load_toy(toy_dir)


def _short_rows(data, n=2):
    # The shortest test solutions keep the reference (one generate call per branch) to seconds.
    return sorted(data["test"], key=lambda r: len(r["solution"]))[:n]


# The reference dominates the run time (~7 s per solution and k on an idle CPU), so k=3 gets one
# solution and a shorter budget; continuations from late positions still reach a verdict within it.
@pytest.mark.parametrize("k, n_rows, budget", [(2, 2, 30), (3, 1, 16)])
def test_matches_the_reference(toy, k, n_rows, budget):
    model, tokenizer, data = toy
    for row in _short_rows(data, n_rows):
        args = (model, tokenizer, row["prompt"], row["solution"], row["answer"], k, budget)
        expected = annotate_reference(*args)
        got = annotate_fast(*args, batch_size=16)
        assert got == expected  # every field: flags, alternatives tried, their answers, offsets


def test_batch_size_does_not_change_results(toy):
    model, tokenizer, data = toy
    row = _short_rows(data, 1)[0]
    args = (model, tokenizer, row["prompt"], row["solution"], row["answer"], 2, 30)
    assert annotate_fast(*args, batch_size=1) == annotate_fast(*args, batch_size=64)


def test_backend_continues_like_generate(toy):
    from cft_rl.annotate_core import encode_example, greedy_completion

    model, tokenizer, data = toy
    row = data["test"][0]
    prompt_ids, completion_ids, _ = encode_example(tokenizer, row["prompt"], row["solution"])
    backend = HFBackend(model, tokenizer, batch_size=4)
    backend.rank(prompt_ids + completion_ids)
    # Mixed lengths in one batch, an eos-ended prefix (nothing to continue) and a zero budget.
    prefixes = [prompt_ids + completion_ids[:t] + [completion_ids[t]] for t in (0, 3, 7)]
    prefixes.append(prompt_ids + [tokenizer.eos_token_id])
    got = backend.continue_greedy(prefixes, 12)
    for prefix, tail in zip(prefixes, got, strict=True):
        assert prefix + tail == greedy_completion(model, tokenizer, prefix, 12)
    assert backend.continue_greedy(prefixes[:1], 0) == [[]]
    with pytest.raises(ValueError, match="ranked sequence"):
        backend.continue_greedy([[tokenizer.eos_token_id + 1, 5, 6]], 3)
