"""Every generator stops on every stop token, decodes plainly, and the probe is the same on any split.

Real checkpoints end a turn on more than the tokenizer's eos (Llama-3 instruct: ``<|eot_id|>``, with
a list in ``generation_config.eos_token_id``) and ship sampling settings (a repetition penalty, a
temperature, top-k). Here the toy's folder is copied with such a ``generation_config.json``.
"""

import json
import shutil
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from transformers import GenerationConfig

from cft_rl.annotate.engine import HFBackend, VLLMBackend, annotate_fast
from cft_rl.annotate.rule import annotate_reference, greedy_completion
from cft_rl.data.prompts import encode_example
from cft_rl.generation import VLLMGenerator, generate, render_prompts, stop_token_ids
from cft_rl.grpo import probe as grpo_probe
from cft_rl.grpo.metrics import MonitorConfig
from cft_rl.grpo.probe import Probe, ProbeCallback, dealt_batches, probe_batches
from cft_rl.toy.build import load_toy


@pytest.fixture(scope="module")
def toy(toy_dir):
    return load_toy(toy_dir)


def _rows(data, n):
    return sorted(data["test"], key=lambda r: len(r["solution"]))[:n]


def _short_solution(row) -> str:
    # A dozen tokens: the reference annotator (one generate call per branch) stays at seconds.
    return f"So the final answer is \\boxed{{{row['answer']}}}."


def _copy_with_generation_config(toy_dir, out, **settings):
    shutil.copytree(toy_dir, out)
    config = json.loads((out / "generation_config.json").read_text())
    (out / "generation_config.json").write_text(json.dumps({**config, **settings}))
    return load_toy(out)


@pytest.fixture(scope="module")
def extra_stop(toy):
    """A token the toy model writes often (the tiny model's favourite), to be listed as a second stop."""
    model, tokenizer, data = toy
    [[sample]] = generate(model, tokenizer, [data["test"]["prompt"][0]], max_new_tokens=12)
    counts = Counter(tokenizer(sample.text, add_special_tokens=False)["input_ids"])
    counts.pop(tokenizer.eos_token_id, None)
    return counts.most_common(1)[0][0]


@pytest.fixture(scope="module")
def stop_toy(toy_dir, tmp_path_factory, extra_stop, toy):
    eos = toy[1].eos_token_id
    path = tmp_path_factory.mktemp("stops") / "world"
    return (*_copy_with_generation_config(toy_dir, path, eos_token_id=[eos, extra_stop]), path)


def _raw_argmax(model, ids: list[int], budget: int, stops) -> list[int]:
    """Greedy decoding by hand: the argmax of the raw logits, one full forward per token."""
    ids = list(ids)
    for _ in range(budget if ids[-1] not in stops else 0):
        with torch.no_grad():
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].float().argmax())
        ids.append(token)
        if token in stops:
            break
    return ids


# --- stop tokens ------------------------------------------------------------------------------------


def test_stop_token_ids_are_the_tokenizer_eos_then_the_generation_configs():
    tokenizer = SimpleNamespace(eos_token_id=2)
    assert stop_token_ids(GenerationConfig(eos_token_id=[5, 2, 7]), tokenizer) == [2, 5, 7]
    assert stop_token_ids(SimpleNamespace(generation_config=GenerationConfig(eos_token_id=9)), tokenizer) == [
        2,
        9,
    ]
    assert stop_token_ids({"eos_token_id": [4]}, tokenizer) == [2, 4]
    assert stop_token_ids(None, tokenizer) == stop_token_ids(GenerationConfig(), tokenizer) == [2]


def test_evaluation_stops_on_a_second_stop_token(toy, stop_toy, extra_stop):
    model, tokenizer, data = toy
    stop_model = stop_toy[0]
    prompts = data["test"]["prompt"][:2]
    full = generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=1)
    got = generate(stop_model, tokenizer, prompts, max_new_tokens=12, batch_size=1)
    for [whole], [sample], prompt in zip(full, got, prompts, strict=True):
        ids = tokenizer(render_prompts(tokenizer, [prompt])[0], add_special_tokens=False)["input_ids"]
        tokens = _raw_argmax(model, ids, 12, {tokenizer.eos_token_id})[len(ids) :]
        assert tokenizer.decode(tokens, skip_special_tokens=True) == whole.text  # the stop matters here:
        assert extra_stop in tokens
        cut = tokens.index(extra_stop) + 1
        assert sample.num_tokens == cut and len(sample.entropies) == cut
        assert sample.text == tokenizer.decode(tokens[:cut], skip_special_tokens=True)


def test_reference_and_fast_engine_stop_on_a_second_stop_token(toy, toy_dir, tmp_path):
    model, tokenizer, data = toy
    row = _rows(data, 1)[0]
    prompt_ids, completion_ids, _ = encode_example(tokenizer, row["prompt"], row["solution"])
    ids = prompt_ids + completion_ids
    n = len(prompt_ids)
    _, ranked = HFBackend(model, tokenizer, batch_size=3).add(ids, 3)
    prefixes = {t: ids[: n + t] + [ranked[n + t - 1][1]] for t in (0, 2, 5, 9)}
    # The second stop is the token these continuations write most (a tiny model's favourite differs
    # from one prompt or prefix to another), so that it does end some of them.
    eos = tokenizer.eos_token_id
    written = Counter(
        token
        for p in prefixes.values()
        for token in _raw_argmax(model, p, 16, {eos})[len(p) :]
        if token != eos
    )
    extra_stop = written.most_common(1)[0][0]
    model, tokenizer, data = _copy_with_generation_config(
        toy_dir, tmp_path / "world", eos_token_id=[eos, extra_stop]
    )
    stops = {eos, extra_stop}
    backend = HFBackend(model, tokenizer, batch_size=3)
    handle, _ = backend.add(ids, 3)
    branches = {t: (prefix, 16) for t, prefix in prefixes.items()}
    branches["stop"] = (ids[:n] + [extra_stop], 16)  # the alternative itself ends the answer
    for key, (prefix, budget) in branches.items():
        backend.submit(key, handle, len(prefix) - 1, prefix[-1], budget)
    tails = {}
    while not backend.idle:
        tails.update(backend.step())
    assert tails["stop"] == []
    stopped_early = 0
    for key, (prefix, budget) in branches.items():
        reference = greedy_completion(model, tokenizer, prefix, budget)
        assert prefix + tails[key] == reference == _raw_argmax(model, prefix, budget, stops), key
        stopped_early += reference[-1] == extra_stop
    assert stopped_early >= 2  # the second stop token did end continuations
    args = (model, tokenizer, row["prompt"], _short_solution(row), row["answer"], 2, 12)
    assert annotate_fast(*args, batch_size=8) == annotate_reference(*args)


def test_vllm_backends_stop_on_the_served_models_stop_tokens(stop_toy, extra_stop, monkeypatch):
    """vLLM cannot be installed on CPU machines: a stand-in engine that serves the stop toy's folder."""
    _, tokenizer, _, path = stop_toy
    calls = []

    class FakeLLM:
        llm_engine = SimpleNamespace(model_config=SimpleNamespace(model=str(path)))

        def generate(self, prompts, params, use_tqdm=False):
            calls.append(params)
            out = SimpleNamespace(token_ids=[7, extra_stop], logprobs=[])
            return [SimpleNamespace(outputs=[out]) for _ in prompts]

    fake = SimpleNamespace(SamplingParams=lambda **kw: kw, TokensPrompt=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    expected = [tokenizer.eos_token_id, extra_stop]
    VLLMGenerator(FakeLLM(), tokenizer).generate(["ab"], max_new_tokens=5)
    assert calls[-1]["stop_token_ids"] == expected
    backend = VLLMBackend(FakeLLM(), tokenizer)
    backend._sequences[0] = [20, 21, 22]  # as add() would register it
    backend.submit("a", 0, 2, 30, 5)
    backend.submit("b", 0, 1, extra_stop, 5)  # a stop token: nothing to continue, vLLM is not asked
    assert sorted(backend.step()) == [("a", [7, extra_stop]), ("b", [])]
    assert calls[-1]["stop_token_ids"] == expected


# --- greedy means greedy --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def penalised_toy(toy_dir, tmp_path_factory):
    """The toy with a checkpoint's sampling settings: generate would apply them unless told otherwise."""
    path = tmp_path_factory.mktemp("penalty") / "world"
    # A strong penalty: the tiny toy is near-uniform, and a mild one (1.1-1.5) seldom flips its argmax.
    settings = dict(do_sample=True, temperature=0.7, top_k=5, top_p=0.8, repetition_penalty=3.0)
    return _copy_with_generation_config(toy_dir, path, **settings)


def test_reference_and_fast_engine_are_plain_greedy_under_a_repetition_penalty(penalised_toy):
    model, tokenizer, data = penalised_toy
    row = _rows(data, 1)[0]
    prompt_ids, completion_ids, _ = encode_example(tokenizer, row["prompt"], row["solution"])
    ids = prompt_ids + completion_ids
    n = len(prompt_ids)
    backend = HFBackend(model, tokenizer, batch_size=4)
    handle, ranked = backend.add(ids, 2)
    branches = {t: ids[: n + t] + [ranked[n + t - 1][1]] for t in (0, 3, 8)}
    for key, prefix in branches.items():
        backend.submit(key, handle, len(prefix) - 1, prefix[-1], 14)
    tails = {}
    while not backend.idle:
        tails.update(backend.step())
    for key, prefix in branches.items():
        expected = _raw_argmax(model, prefix, 14, {tokenizer.eos_token_id})
        assert greedy_completion(model, tokenizer, prefix, 14) == expected, key
        assert prefix + tails[key] == expected, key
    args = (model, tokenizer, row["prompt"], _short_solution(row), row["answer"], 2, 12)
    assert annotate_fast(*args, batch_size=8) == annotate_reference(*args)


def test_evaluation_ignores_the_checkpoints_sampling_settings(toy, penalised_toy):
    """Greedy is the raw argmax; a sample at T is drawn from the whole softmax(logits / T)."""
    plain_model, tokenizer, data = toy
    model = penalised_toy[0]
    prompts = data["test"]["prompt"][:2]
    for temperature, n in ((0.0, 1), (1.0, 3)):
        settings = dict(n=n, temperature=temperature, max_new_tokens=12, seed=4)
        got = generate(model, tokenizer, prompts, **settings)
        want = generate(plain_model, tokenizer, prompts, **settings)
        assert [[s.text for s in g] for g in got] == [[s.text for s in g] for g in want], temperature
    ids = tokenizer(render_prompts(tokenizer, prompts[:1])[0], add_special_tokens=False)["input_ids"]
    tokens = _raw_argmax(model, ids, 12, {tokenizer.eos_token_id})[len(ids) :]
    [[sample]] = generate(model, tokenizer, prompts[:1], max_new_tokens=12)
    assert sample.text == tokenizer.decode(tokens, skip_special_tokens=True)


# --- the probe ----------------------------------------------------------------------------------------


def _trainer(model, tokenizer, index: int, count: int, monitor: MonitorConfig):
    """The parts of a MonitoredGRPOTrainer the probe reads, as process ``index`` of ``count`` (no DDP)."""
    state = SimpleNamespace(deepspeed_plugin=None, fsdp_plugin=None)
    accelerator = SimpleNamespace(
        process_index=index,
        num_processes=count,
        is_main_process=index == 0,
        device=model.device,
        unwrap_model=lambda m, **kwargs: m,
        state=state,
    )
    args = SimpleNamespace(ds3_gather_for_generation=True, gradient_checkpointing_kwargs=None)
    return SimpleNamespace(
        accelerator=accelerator,
        model=model,
        model_wrapped=model,
        _tokenizer=tokenizer,
        monitor=monitor,
        args=args,
    )


_MONITOR = dict(probe_num_samples=2, probe_ks=(1, 2), probe_maj_ks=(2,), probe_temperature=1.0)


def _probe(data, n=5):
    rows = data["test"].select(range(n))
    return Probe(rows["prompt"], rows["answer"], every=1, batch_size=2, max_new_tokens=8, seed=3)


def _run_split(model, tokenizer, probe, count: int, monkeypatch) -> tuple[dict, dict]:
    """The probe's metrics, and each prompt's samples, with its prompts split over ``count``
    processes run one after the other (the main process last, so its gather can hand it every part)."""
    parts, samples = {}, {}
    real_generate = grpo_probe.generate

    def generate_spy(model, tokenizer, prompts, **kwargs):
        groups = real_generate(model, tokenizer, prompts, **kwargs)
        samples.update({p[-1]["content"]: [s.text for s in g] for p, g in zip(prompts, groups, strict=True)})
        return groups

    def gather(obj, index):  # accelerate's gather_object: every process's list, concatenated in order
        parts[index] = obj
        return [item for i in sorted(parts) for item in parts[i]]

    monkeypatch.setattr(grpo_probe, "generate", generate_spy)
    for index in reversed(range(count)):
        monkeypatch.setattr(grpo_probe, "gather_object", lambda obj, i=index: gather(obj, i))
        trainer = _trainer(model, tokenizer, index, count, MonitorConfig(**_MONITOR))
        metrics = ProbeCallback(trainer, probe).run()
    metrics.pop("probe/seconds")
    return metrics, samples


def test_probe_samples_do_not_depend_on_the_number_of_processes(toy, monkeypatch):
    model, tokenizer, data = toy
    probe = _probe(data)
    one, samples_one = _run_split(model, tokenizer, probe, 1, monkeypatch)
    for count in (2, 3):
        metrics, samples = _run_split(model, tokenizer, probe, count, monkeypatch)
        assert samples == samples_one, count
        assert metrics == one, count
    assert len(samples_one) == 5
    assert len({t for texts in samples_one.values() for t in texts}) > 1  # sampled: a seed mix-up shows


def test_probe_batches_are_dealt_evenly_and_whole():
    assert probe_batches(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    for n in range(7):
        for count in range(1, 5):
            shares = [dealt_batches(n, i, count) for i in range(count)]
            assert len({len(s) for s in shares}) == 1  # the same number of generate calls everywhere
            assert [b for s in shares for b in s if b is not None] == list(range(n))


def test_probe_generates_through_trls_unwrap_for_generation(toy, monkeypatch):
    """TRL's unwrap gathers ZeRO-3 parameters and turns gradient checkpointing off while generating."""
    model, tokenizer, data = toy
    entered, checkpointing = [], []
    real_unwrap = grpo_probe.unwrap_model_for_generation

    def unwrap(model, accelerator, **kwargs):
        entered.append(model)
        return real_unwrap(model, accelerator, **kwargs)

    real_generate = model.generate

    def spy(*args, **kwargs):
        checkpointing.append(model.is_gradient_checkpointing)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(grpo_probe, "unwrap_model_for_generation", unwrap)
    monkeypatch.setattr(model, "generate", spy)
    model.gradient_checkpointing_enable()
    try:
        metrics = ProbeCallback(
            _trainer(model, tokenizer, 0, 1, MonitorConfig(**_MONITOR)), _probe(data, 3)
        ).run()
        assert model.is_gradient_checkpointing  # restored
    finally:
        model.gradient_checkpointing_disable()
    assert entered == [model] and checkpointing == [False, False] and "probe/pass@1" in metrics


def test_probe_stops_on_a_second_stop_token(stop_toy, extra_stop, monkeypatch):
    model, tokenizer, data, _ = stop_toy
    rows = []
    real_generate = model.generate

    def spy(*args, **kwargs):
        out = real_generate(*args, **kwargs)
        rows.extend(out[:, kwargs["input_ids"].shape[1] :].tolist())
        return out

    monkeypatch.setattr(model, "generate", spy)
    monitor = MonitorConfig(**{**_MONITOR, "probe_temperature": 0.3})  # near greedy: the stop token shows
    ProbeCallback(_trainer(model, tokenizer, 0, 1, monitor), _probe(data, 4)).run()
    assert any(extra_stop in row for row in rows)
    for row in rows:  # after the first stop token, only padding
        stop = next((i for i, t in enumerate(row) if t in (extra_stop, tokenizer.eos_token_id)), len(row))
        assert set(row[stop + 1 :]) <= {tokenizer.pad_token_id}, row
