"""The generators (cft_rl.generation): recorded entropies, the HF backend, and vLLM through a stand-in."""

import math
import sys
from types import SimpleNamespace

import pytest
import torch

from cft_rl.generation import HFGenerator, VLLMGenerator, generate, render_prompts
from cft_rl.stats import token_entropy


def test_generated_entropies_are_those_of_the_sampled_distribution(toy_dir):
    """The logits processor records entropy(logits / T) per token: what output_logits would give."""
    from cft_rl.toy.build import load_toy

    model, tokenizer, data = load_toy(toy_dir)
    prompt = data["test"]["prompt"][0]
    enc = tokenizer(render_prompts(tokenizer, [prompt]), return_tensors="pt", add_special_tokens=False)
    for temperature in (0.0, 2.0):
        [[sample]] = generate(model, tokenizer, [prompt], temperature=temperature, max_new_tokens=12, seed=5)
        torch.manual_seed(5)  # the same draws as generate's: the recorder consumes no randomness
        ref = model.generate(
            **enc,
            do_sample=temperature > 0,
            temperature=temperature or None,
            top_k=0 if temperature else None,
            top_p=1.0 if temperature else None,
            max_new_tokens=12,
            return_dict_in_generate=True,
            output_logits=True,
        )
        completion = ref.sequences[0, enc["input_ids"].shape[1] :]
        assert sample.text == tokenizer.decode(completion[: sample.num_tokens], skip_special_tokens=True)
        expected = token_entropy(torch.stack(ref.logits, 1)[0] / (temperature or 1.0))[: sample.num_tokens]
        assert torch.allclose(torch.tensor(sample.entropies), expected, atol=1e-5)


def test_hf_generator_is_generate_behind_the_backend_method(toy_dir):
    from cft_rl.toy.build import load_toy

    model, tokenizer, data = load_toy(toy_dir)
    prompts = data["test"]["prompt"][:3]
    backend = HFGenerator(model, tokenizer, batch_size=2)
    got = backend.generate(prompts, n=1, temperature=0.0, max_new_tokens=10)
    want = generate(model, tokenizer, prompts, n=1, temperature=0.0, max_new_tokens=10, batch_size=1)
    assert [g[0].text for g in got] == [w[0].text for w in want]
    with pytest.raises(ValueError, match="batch_size"):
        HFGenerator(model, tokenizer, batch_size=0)


def test_vllm_generator_through_a_stand_in_module(monkeypatch):
    """vLLM cannot be installed on CPU machines: a stand-in module checks the mapping to Samples."""
    calls = []
    lp = lambda p: SimpleNamespace(logprob=math.log(p))  # noqa: E731

    class FakeLLM:
        def generate(self, prompts, params, use_tqdm=False):
            calls.append((prompts, params))
            out = SimpleNamespace(token_ids=[7, 2], logprobs=[{7: lp(0.5), 8: lp(0.5)}, {2: lp(0.25)}])
            return [SimpleNamespace(outputs=[out] * params["n"]) for _ in prompts]

    tokenizer = _FakeTokenizer()
    monkeypatch.setitem(
        sys.modules, "vllm", SimpleNamespace(SamplingParams=lambda **kw: kw, TokensPrompt=dict)
    )
    groups = VLLMGenerator(FakeLLM(), tokenizer).generate(
        ["ab"], n=2, temperature=1.0, max_new_tokens=5, seed=3
    )
    prompts, params = calls[0]
    assert prompts == [{"prompt_token_ids": [97, 98]}]
    assert (
        params["n"] == 2
        and params["seed"] == 3
        and params["stop_token_ids"] == [2]
        and params["max_tokens"] == 5
    )
    [[a, b]] = groups
    assert a.text == "t7" and a.num_tokens == 2 and b.text == "t7"
    # Step 1: two halves, nothing left over -> ln 2. Step 2: 0.25 plus a 0.75 "rest" bucket.
    assert a.entropies == pytest.approx([math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))])


class _FakeTokenizer:
    eos_token_id = 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(f"t{i}" for i in ids if not (skip_special_tokens and i == self.eos_token_id))
