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


def test_engine_settings_do_not_change_results(toy):
    model, tokenizer, data = toy
    row = _short_rows(data, 1)[0]
    args = (model, tokenizer, row["prompt"], row["solution"], row["answer"], 2, 30)
    expected = annotate_fast(*args, batch_size=64)
    assert annotate_fast(*args, batch_size=1, eager_alternatives=False) == expected
    assert annotate_fast(*args, batch_size=7, draft_tokens=4) == expected
    # Eager decoding tries more branches but keeps only what the early stop would have tried.
    assert any(len(a.alternatives) == 1 for a in expected)


@pytest.mark.parametrize("draft_tokens", [0, 3])
def test_backend_continues_like_generate(toy, draft_tokens):
    from cft_rl.annotate_core import encode_example, greedy_completion

    model, tokenizer, data = toy
    row = data["test"][0]
    prompt_ids, completion_ids, _ = encode_example(tokenizer, row["prompt"], row["solution"])
    backend = HFBackend(model, tokenizer, batch_size=4, draft_tokens=draft_tokens)
    ranked = backend.rank(prompt_ids + completion_ids, 3)
    assert len(ranked) == len(prompt_ids + completion_ids) and all(len(r) == 3 for r in ranked)
    # Mixed lengths in one batch (the unperturbed one re-joins its draft), an eos-ended prefix
    # (nothing to continue) and a zero budget.
    prefixes = [prompt_ids + completion_ids[:t] + [completion_ids[t]] for t in (0, 3, 7)]
    prefixes.append(prompt_ids + completion_ids[:5] + [completion_ids[9]])
    prefixes.append(prompt_ids + [tokenizer.eos_token_id])
    got = backend.continue_greedy(prefixes, 12)
    for prefix, tail in zip(prefixes, got, strict=True):
        assert prefix + tail == greedy_completion(model, tokenizer, prefix, 12)
    assert backend.continue_greedy(prefixes[:1], 0) == [[]]
    with pytest.raises(ValueError, match="ranked sequence"):
        backend.continue_greedy([[tokenizer.eos_token_id + 1, 5, 6]], 3)


def test_branch_attention_equals_a_plain_forward(toy):
    """Logits of branches read off a shared cache equal the model's own forward on each full branch."""
    import torch

    from cft_rl.branch_decoding import Branches

    model, _, _ = toy
    shared = list(range(5, 45))
    with torch.no_grad():
        kv = model(input_ids=torch.tensor([shared]), use_cache=True).past_key_values
        branches = Branches([(layer.keys, layer.values) for layer in kv.layers], [10, 25, 40])
        fed = torch.tensor([[7, 8, 9], [11, 0, 0], [12, 13, 0]])
        valid = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
        got = branches.step(model, fed, valid)
        branches.advance([3, 1, 2])
        got_next = branches.step(model, torch.tensor([[50], [51], [52]]), torch.ones(3, 1, dtype=torch.bool))
        for b, n in enumerate([10, 25, 40]):
            real = fed[b][valid[b]].tolist()
            full = torch.tensor([shared[:n] + real + [50 + b]])
            expected = model(input_ids=full).logits[0]
            torch.testing.assert_close(got[b, : len(real)], expected[n : n + len(real)], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got_next[b, 0], expected[-1], atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation != "cft_rl_branches"  # restored after each step


def test_vllm_backend_maps_prompt_logprobs_to_ranked_tokens(monkeypatch):
    """The vLLM backend, through a stand-in module (vLLM itself cannot be installed on CPU machines)."""
    import sys
    from types import SimpleNamespace

    from cft_rl.annotate_fast import VLLMBackend

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
    assert backend.rank([20, 21, 22], 3) == [[4, 9, 5], [4, 9, 5], [8]]
    assert calls[0]["prompt_logprobs"] == 3
    assert backend.continue_greedy([[20, 21], [20, 2]], 5) == [[6, 2], []]  # an eos-ended prefix is skipped
    assert calls[1]["temperature"] == 0.0 and calls[1]["stop_token_ids"] == [2]
