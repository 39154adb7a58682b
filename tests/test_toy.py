"""The toy world: a deterministic, diverse, always-correct task, and a base model that loads like a Hub model."""

import random
import re

import pytest
import torch

from cft_rl.toy.build import MANIFEST, ToyBuildConfig, build_toy, is_built, load_toy
from cft_rl.toy.task import (
    ToyTaskConfig,
    generate_problem,
    generate_splits,
    render_solution,
    sample_solutions,
    split_of,
    to_records,
)
from cft_rl.verify.verifier import verify_batch

SIZES = {"pretrain": 300, "train": 100, "validation": 30, "test": 60}
EQUATION = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")


def test_generator_is_deterministic_and_seed_dependent():
    a, b = generate_splits(SIZES, seed=3), generate_splits(SIZES, seed=3)
    assert a == b
    assert generate_splits(SIZES, seed=4) != a
    rows_a = to_records(a["test"], "test", seed=3)
    assert rows_a == to_records(b["test"], "test", seed=3)


def test_splits_never_share_a_problem():
    splits = generate_splits(SIZES, seed=0)
    questions = {name: {p.question for p in problems} for name, problems in splits.items()}
    assert {name: len(q) for name, q in questions.items()} == SIZES
    names = list(questions)
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            assert not questions[x] & questions[y], (x, y)
        assert all(split_of(q) == x for q in questions[x])


def test_problems_respect_their_settings():
    cfg = ToyTaskConfig(min_steps=3, max_steps=4, max_value=60, hard_prob=0.4, hard_factors=(4, 9))
    rng = random.Random(0)
    hard = 0
    for _ in range(400):
        p = generate_problem(rng, cfg)
        steps = sum(2 if e.factor else 1 for e in p.events)
        if p.hard:  # the easy chain, then one multiplication by a hard factor
            hard += 1
            last = p.events[-1]
            assert last.kind == "double" and 4 <= last.amount <= 9
            assert 3 <= steps - 1 <= 4 and 0 <= p.answer <= 60 * 9
        else:
            assert 3 <= steps <= 4 and 0 <= p.answer <= 60
            assert all(e.amount <= 3 for e in p.events if e.kind == "double")
    assert 0.3 < hard / 400 < 0.5
    assert not any(generate_problem(rng, ToyTaskConfig(hard_prob=0.0)).hard for _ in range(100))


def _check_arithmetic(solution: str, answer: int) -> None:
    equations = EQUATION.findall(solution)
    assert equations, solution
    for a, op, b, c in equations:
        assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(c), solution
    assert solution.endswith(("}.", "}", f"}} {solution.split()[-1]}"))
    assert f"\\boxed{{{answer}}}" in solution


def test_every_solution_is_correct_and_the_verifier_agrees():
    splits = generate_splits({"train": 150, "test": 50}, seed=1)
    solutions, golds = [], []
    for problem in splits["train"] + splits["test"]:
        for solution in sample_solutions(problem, 3, seed=1):
            _check_arithmetic(solution, problem.answer)
            solutions.append(solution)
            golds.append(str(problem.answer))
    assert verify_batch(solutions, golds) == [1.0] * len(solutions)
    wrong = [str(int(g) + 1) for g in golds]
    assert sum(verify_batch(solutions, wrong)) == 0


def test_one_problem_has_many_distinct_valid_solutions():
    rng = random.Random(5)
    cfg = ToyTaskConfig(min_steps=4, max_steps=5)
    problem = generate_problem(rng, cfg)
    solutions = sample_solutions(problem, 30, seed=0, cfg=cfg)
    assert len(set(solutions)) >= 10
    openings = {s.split(":")[0].split(",")[0] for s in solutions}
    assert len(openings) >= 3  # phrasing varies, not only the numbers' wording
    for s in solutions:
        _check_arithmetic(s, problem.answer)
    # same computation, different order of independent steps
    if any(e.factor for e in problem.events) and len(problem.events) > 1:
        orders = {tuple(EQUATION.findall(s)) for s in solutions}
        assert len(orders) >= 2


def test_render_is_a_pure_function_of_the_rng():
    p = generate_problem(random.Random(0), ToyTaskConfig())
    assert render_solution(p, random.Random(9)) == render_solution(p, random.Random(9))


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="operations"):
        ToyTaskConfig(operations=("/",))
    with pytest.raises(ValueError, match="min_steps"):
        ToyTaskConfig(min_steps=4, max_steps=2)
    with pytest.raises(ValueError, match="unknown toy splits"):
        generate_splits({"dev": 3})


def test_tiny_world_builds_loads_and_generates(toy_dir, toy_config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cft_rl.generation import generate

    assert is_built(toy_dir, toy_config)
    model = AutoModelForCausalLM.from_pretrained(toy_dir)
    tokenizer = AutoTokenizer.from_pretrained(toy_dir)
    assert model.config.model_type == "qwen2"
    assert tokenizer.eos_token == "<|im_end|>" and model.config.eos_token_id == tokenizer.eos_token_id
    _, _, data = load_toy(toy_dir)
    assert set(data) == {"train", "validation", "test"}
    assert len(data["test"]) == toy_config.n_test
    samples = generate(model, tokenizer, data["test"]["prompt"][:2], n=2, temperature=1.0, max_new_tokens=8)
    assert [len(g) for g in samples] == [2, 2]
    assert all(0 < s.num_tokens <= 8 and len(s.entropies) == s.num_tokens for g in samples for s in g)


def test_build_is_cached_deterministic_and_atomic(toy_dir, toy_config, tmp_path, monkeypatch):
    import cft_rl.toy.build as toy_module

    # cached: nothing is regenerated or retrained (the behaviour, not a wall-clock bound)
    with monkeypatch.context() as patched:
        patched.setattr(toy_module, "_pretrain", lambda *a, **k: pytest.fail("a cached build retrained"))
        patched.setattr(
            toy_module, "generate_splits", lambda *a, **k: pytest.fail("a cached build regenerated")
        )
        assert build_toy(toy_dir, toy_config, progress=False) == toy_dir
    again = build_toy(tmp_path / "again", toy_config, progress=False)
    a = load_toy(toy_dir)[0].state_dict()
    b = load_toy(again)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.glob(".*.building"))
    # the build's process-wide CPU settings are restored: subnormal floats still exist afterwards
    assert (torch.tensor(1e-38) / 100).item() != 0.0
    assert (again / MANIFEST).is_file()


def test_build_refuses_a_folder_that_is_not_a_toy_build(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a toy build"):
        build_toy(tmp_path, ToyBuildConfig.tiny(), progress=False)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_swap_tokens_swaps_only_labelled_swappable_tokens_and_drops_them_from_the_loss():
    from cft_rl.toy.corpus import swap_tokens

    ids = torch.tensor([[5, 6, 7, 8], [6, 7, 0, 0]])
    labels = torch.tensor([[-100, 6, 7, 8], [-100, 7, -100, -100]])
    weights = torch.zeros(10)
    weights[[5, 6, 8, 9]] = 1.0  # 7 is a digit, say: never swapped; 5 and 6 sit in the prompt
    generator = torch.Generator().manual_seed(0)
    new_ids, new_labels = swap_tokens(ids, labels, weights, 1.0, generator)
    hit = torch.tensor([[False, True, False, True], [False, False, False, False]])
    assert torch.equal(new_ids[~hit], ids[~hit]) and torch.equal(new_labels[~hit], labels[~hit])
    assert set(new_ids[hit].tolist()) <= {5, 6, 8, 9}
    assert (new_labels[hit] == -100).all()
    only_nine = torch.zeros(10)
    only_nine[[6, 8]], only_nine[9] = 1e-9, 1.0  # 6 and 8 stay swappable, but 9 is drawn
    drawn, _ = swap_tokens(ids, labels, only_nine, 1.0, generator)
    assert drawn[hit].tolist() == [9, 9]
    same_ids, same_labels = swap_tokens(ids, labels, weights, 0.0, generator)
    assert torch.equal(same_ids, ids) and torch.equal(same_labels, labels)


def test_swap_weights_count_word_and_format_tokens_only(toy_dir):
    from cft_rl.toy.corpus import swap_weights

    tokenizer = load_toy(toy_dir)[1]
    word, blank, digit = (tokenizer.convert_tokens_to_ids(t) for t in ("Ġthe", "Ġ", "7"))
    eos = tokenizer.eos_token_id
    weights = swap_weights(tokenizer, [[word, blank, digit, eos], [word, digit, word]])
    assert weights.shape == (len(tokenizer),)
    assert (weights[word], weights[blank], weights[digit], weights[eos]) == (3.0, 1.0, 0.0, 0.0)
    assert weights.sum() == 4.0


def test_pretraining_batches_swap_words_but_never_digits(toy_dir):
    from cft_rl.token_classes import token_class
    from cft_rl.toy.corpus import batches_of, pretraining_corpus
    from cft_rl.toy.task import generate_splits

    config = ToyBuildConfig.tiny(noise_prob=0.3)
    tokenizer = load_toy(toy_dir)[1]
    problems = generate_splits({"pretrain": 40}, seed=0, cfg=config.task)["pretrain"]
    corpus = pretraining_corpus(problems, config)
    clean_batches = batches_of(tokenizer, corpus, ToyBuildConfig.tiny(noise_prob=0.0))
    noisy_batches = batches_of(tokenizer, corpus, config)
    swapped = 0
    for _ in range(3):
        (ids0, labels0), (ids1, labels1) = next(clean_batches), next(noisy_batches)
        changed = ids0 != ids1
        swapped += int(changed.sum())
        assert (labels1[changed] == -100).all() and (labels0[changed] != -100).all()
        assert all(
            token_class(tokenizer.decode([int(i)])) not in ("digit", "operator") for i in ids0[changed]
        )
    assert swapped > 0


@pytest.mark.parametrize("share", [0.0, 0.2, 1.0])
def test_pretraining_keeps_its_share_of_the_hard_problems(tmp_path, monkeypatch, share):
    import cft_rl.toy.build as toy_module

    seen = []
    real = toy_module.pretraining_corpus
    monkeypatch.setattr(toy_module, "pretraining_corpus", lambda ps, c: seen.extend(ps) or real(ps, c))
    monkeypatch.setattr(toy_module, "_pretrain", lambda model, *a, **k: model)
    config = ToyBuildConfig.tiny(pretrain_hard_share=share, n_pretrain=200)
    build_toy(tmp_path / "world", config, progress=False)
    every = generate_splits({"pretrain": 200}, seed=config.seed, cfg=config.task)["pretrain"]
    all_hard = sum(p.hard for p in every)
    assert all_hard > 30  # the task draws hard problems: the shares below are not vacuous
    assert sum(not p.hard for p in seen) == len(every) - all_hard  # every easy problem, once
    assert sum(p.hard for p in seen) == round(share * all_hard)


def test_a_hard_share_outside_zero_to_one_is_refused():
    from cft_rl.toy.corpus import pretraining_problems

    with pytest.raises(ValueError, match="between 0 and 1"):
        pretraining_problems([], 1.5)
