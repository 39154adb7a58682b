"""The fast annotator must give exactly the reference's annotations, only faster."""

import pytest

from cft_rl.annotate.engine import HFBackend, annotate_fast, annotate_many
from cft_rl.annotate.rule import annotate_reference
from cft_rl.toy.build import load_toy


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


def test_engine_settings_do_not_change_results(toy):
    model, tokenizer, data = toy
    row = _short_rows(data, 1)[0]
    args = (model, tokenizer, row["prompt"], row["solution"], row["answer"], 2, 30)
    expected = annotate_fast(*args, batch_size=64)
    assert annotate_fast(*args, batch_size=1) == expected
    assert annotate_fast(*args, batch_size=7, eager_alternatives=True) == expected
    # Eager decoding tries more branches but keeps only what the early stop would have tried.
    assert any(len(a.alternatives) == 1 for a in expected)


def test_many_solutions_decoded_together_equal_each_alone(toy):
    """Continuous batching mixes branches of several solutions in one batch; nothing may leak."""
    model, tokenizer, data = toy
    rows = _short_rows(data, 3)
    alone = {
        i: annotate_fast(model, tokenizer, r["prompt"], r["solution"], r["answer"], 2, 24, batch_size=32)
        for i, r in enumerate(rows)
    }
    examples = [(f"row{i}", r["prompt"], r["solution"], r["answer"]) for i, r in enumerate(rows)]
    together = dict(annotate_many(model, tokenizer, examples, 2, 24, batch_size=48))
    assert together == {f"row{i}": anns for i, anns in alone.items()}
    with pytest.raises(ValueError, match="share the key"):
        list(annotate_many(model, tokenizer, examples[:1] * 2, 2, 24))


def test_backend_continues_like_generate(toy):
    """Branches of two sequences in one pool, more branches than rows (rows are refilled), mixed
    budgets, an eos token (nothing to continue) and a zero budget: each tail is ``generate``'s."""
    from cft_rl.annotate.rule import greedy_completion
    from cft_rl.data.prompts import encode_example

    model, tokenizer, data = toy
    backend = HFBackend(model, tokenizer, batch_size=3)
    branches = {}
    for row in data["test"].select(range(2)):
        prompt_ids, completion_ids, _ = encode_example(tokenizer, row["prompt"], row["solution"])
        ids = prompt_ids + completion_ids
        handle, ranked = backend.add(ids, 3)
        assert len(ranked) == len(ids) and all(len(r) == 3 for r in ranked)
        n = len(prompt_ids)
        for t, token, budget in [
            (0, ranked[n - 1][1], 12),
            (3, completion_ids[3], 12),
            (7, ranked[n + 6][2], 5),
        ]:
            branches[handle, t] = (ids[: n + t] + [token], budget)
            backend.submit((handle, t), handle, n + t, token, budget)
        branches[handle, "eos"] = (ids[:n] + [tokenizer.eos_token_id], 12)
        backend.submit((handle, "eos"), handle, n, tokenizer.eos_token_id, 12)
        branches[handle, "zero"] = (ids[: n + 2] + [5], 0)
        backend.submit((handle, "zero"), handle, n + 2, 5, 0)
    tails = {}
    while not backend.idle:
        tails.update(backend.step())
    assert tails.keys() == branches.keys()
    for key, (prefix, budget) in branches.items():
        assert prefix + tails[key] == greedy_completion(model, tokenizer, prefix, budget), key
    for handle in (0, 1):
        backend.release(handle)
    with pytest.raises(ValueError, match="outside the sequence"):
        handle, _ = backend.add([5, 6, 7], 2)
        backend.submit("x", handle, 4, 5, 3)


def test_pool_generator_writes_what_generate_writes_one_prompt_at_a_time(monkeypatch):
    """The self solutions, decoded together (fewer rows than prompts, so rows are refilled), are
    ``generate``'s greedy completions of each prompt alone: same text, same token count. On the
    embedded default model, not the tiny one: the tiny model writes one token over and over and never
    stops, so only a model that solves problems ends its completions at different lengths."""
    from cft_rl.annotate.solutions import PoolGenerator
    from cft_rl.generation import generate
    from cft_rl.toy.build import embedded_build, preset

    model, tokenizer, data = load_toy(embedded_build(preset("default")))
    prompts = data["train"]["prompt"][:6]

    def same(budget):
        pool = PoolGenerator(model, tokenizer, batch_size=4)
        for _ in range(2):  # a second call on the same pool reuses its released slots
            got = [s[0] for s in pool.generate(prompts, max_new_tokens=budget)]
            alone = [
                generate(model, tokenizer, [p], max_new_tokens=budget, batch_size=1)[0][0] for p in prompts
            ]
            assert [(s.text, s.num_tokens) for s in got] == [(s.text, s.num_tokens) for s in alone], budget
        return [s.num_tokens for s in got]

    assert same(1) == [1] * 6 and same(9) == [9] * 6
    lengths = same(224)
    assert max(lengths) < 224 and len(set(lengths)) > 1  # each ended on its stop token, at its own length
    # A first token that is a stop token ends a completion at once (each prompt's first greedy token is
    # added as a stop here; they need not be the same token for every prompt).
    firsts = {s[0].text for s in generate(model, tokenizer, prompts, max_new_tokens=1)}
    monkeypatch.setattr(
        model.generation_config,
        "eos_token_id",
        [tokenizer.eos_token_id, *(tokenizer.convert_tokens_to_ids(t) for t in sorted(firsts))],
    )
    assert same(224) == [1] * 6
    with pytest.raises(ValueError, match="greedily"):
        PoolGenerator(model, tokenizer).generate(prompts, temperature=1.0)


# "small": one row per group and one own slot per segment, so every merge path runs; "unfused": the
# shared part without the fused CPU kernel, as on a GPU.
@pytest.mark.parametrize("layout", ["default", "small", "unfused"])
def test_branch_attention_equals_a_plain_forward(toy, layout, monkeypatch):
    """Logits of branches read off two shared sequences equal the model's own forward on each full
    branch, step after step, with rows of different sequences and lengths in one batch."""
    import torch

    from cft_rl.annotate import attention as branch_attention
    from cft_rl.annotate import branches as branch_decoding

    if layout == "small":
        monkeypatch.setattr(branch_decoding, "_GROUP_ROWS", 1)
        monkeypatch.setattr(branch_decoding, "_OWN_SEGMENT", 1)
    if layout == "unfused":
        monkeypatch.setattr(branch_attention, "_CPU_FLASH", None)
    model, tokenizer, _ = toy
    pool = HFBackend(model, tokenizer, batch_size=8)
    sequences = [list(range(5, 45)), list(range(60, 90))]
    handles = [pool.add(ids, 2)[0] for ids in sequences]
    plan = [(0, 10, 7), (1, 25, 11), (0, 40, 12), (1, 4, 13)]  # (sequence, prefix length, first token)
    for b, (s, n, token) in enumerate(plan):
        pool.submit(b, handles[s], n, token, 3)
    captured = []
    hook = model.register_forward_hook(lambda module, args, out: captured.append(out.logits[:, -1]))
    try:
        with torch.no_grad():
            steps = [pool.step() for _ in range(3)]
    finally:
        hook.remove()
    tails = dict(sum(steps, []))
    for b, (s, n, token) in enumerate(plan):
        full = sequences[s][:n] + [token] + tails[b]
        with torch.no_grad():
            expected = model(input_ids=torch.tensor([full])).logits[0]
        for step in range(3):  # rows stay in place: nothing ended before the last step
            torch.testing.assert_close(captured[step][b], expected[n + step], atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation != "cft_rl_branches"  # restored after each step


def test_vllm_backend_maps_prompt_logprobs_to_ranked_tokens(monkeypatch):
    """The vLLM backend, through a stand-in module (vLLM itself cannot be installed on CPU machines)."""
    import sys
    from types import SimpleNamespace

    from cft_rl.annotate.engine import VLLMBackend

    lp = lambda rank: SimpleNamespace(rank=rank, logprob=-float(rank))  # noqa: E731
    calls = []

    class FakeLLM:
        def generate(self, prompts, params):
            calls.append(params)
            ids = prompts[0]["prompt_token_ids"]
            if params["max_tokens"] == 1:  # ranking: entry i ranks ids[i]'s position; ids[i] itself at rank 7
                entries = [None] + [{9: lp(2), 4: lp(1), ids[i]: lp(7), 5: lp(3)} for i in range(1, len(ids))]
                return [
                    SimpleNamespace(prompt_logprobs=entries, outputs=[SimpleNamespace(logprobs=[{8: lp(1)}])])
                ]
            return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[6, 2])]) for _ in prompts]

    fake = SimpleNamespace(SamplingParams=lambda **kw: kw, TokensPrompt=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    backend = VLLMBackend(FakeLLM(), SimpleNamespace(eos_token_id=2))
    handle, ranked = backend.add([20, 21, 22], 3)
    assert ranked == [[4, 9, 5], [4, 9, 5], [8]]
    assert calls[0]["prompt_logprobs"] == 3
    backend.submit("a", handle, 2, 30, 5)
    backend.submit("b", handle, 1, 2, 5)  # an eos token: nothing to continue, vLLM is not asked
    assert sorted(backend.step()) == [("a", [6, 2]), ("b", [])]
    assert (
        calls[1]["temperature"] == 0.0 and calls[1]["stop_token_ids"] == [2] and calls[1]["max_tokens"] == 5
    )
    assert backend.idle
    backend.release(handle)
