"""What the toy base model is pretrained on: chat-formatted solutions, batched, with swapped tokens.

Loss is on the solution tokens only: the random numbers in a question are noise to a predictor, and
the tiny model's capacity is better spent on the arithmetic. A small share of the solutions' word and
format tokens is swapped for others drawn by frequency (:func:`swap_tokens`, :func:`swap_weights`), with no loss on the swapped token: the
model learns to carry on after an odd word, as a web-trained model does, so that in the counterfactual
annotation a perturbed word does not derail it and "critical" keeps the paper's meaning (the token
decides the answer), not "the model is fragile here".

``config`` is a :class:`cft_rl.toy.build.ToyBuildConfig` (its ``seed``, ``batch_size``,
``solutions_per_problem``, ``noise_prob`` and ``task``).
"""

from __future__ import annotations

import random

import torch

from cft_rl.data.prompts import build_prompt
from cft_rl.toy.task import sample_solutions
from cft_rl.toy.tokenizer import CHAT_TEMPLATE, EOS_TOKEN


def pretraining_problems(problems: list, hard_share: float) -> list:
    """The easy problems, and the first ``hard_share`` of the hard ones (``Problem.hard``)."""
    if not 0.0 <= hard_share <= 1.0:
        raise ValueError(f"pretrain_hard_share={hard_share}: give a share between 0 and 1")
    hard = [p for p in problems if p.hard]
    return [p for p in problems if not p.hard] + hard[: round(hard_share * len(hard))]


def pretraining_corpus(problems: list, config) -> list[tuple[str, str]]:
    """(chat prompt, solution + end of turn) pairs, several styles per problem."""
    from jinja2 import Template

    template = Template(CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", ""))
    pairs = []
    for problem in problems:
        prompt = template.render(messages=build_prompt(problem.question), add_generation_prompt=True)
        for solution in sample_solutions(problem, config.solutions_per_problem, config.seed, config.task):
            pairs.append((prompt, solution + EOS_TOKEN))
    random.Random(config.seed).shuffle(pairs)
    return pairs


def swap_tokens(ids, labels, weights, prob: float, generator):
    """Swap each label-carrying token whose id has a positive weight, with chance ``prob``, for an id
    drawn in proportion to ``weights``; drop the swapped positions from the loss. Returns new
    ``(ids, labels)``.

    ``weights`` is a float tensor over the vocabulary, zero for the ids that are never swapped (digits,
    operators, special tokens). The tokens after a swap keep their labels: that is what teaches the model
    to continue the solution past an odd token.
    """
    eligible = (labels != -100) & (weights[ids] > 0)
    hit = eligible & (torch.rand(ids.shape, generator=generator) < prob)
    replacement = torch.multinomial(weights, ids.numel(), replacement=True, generator=generator)
    replacement = replacement.view(ids.shape)
    return torch.where(hit, replacement, ids), torch.where(hit, torch.full_like(labels, -100), labels)


def swap_weights(tokenizer, completions: list[list[int]]) -> torch.Tensor:
    """How often each word or format token occurs in the solutions (zero for digits, operators and
    special tokens): the distribution swapped-in tokens are drawn from.

    Why by frequency, not uniformly: the annotator perturbs a token with the model's 2nd and 3rd most
    likely tokens, which are common ones (a blank before a number competes with " T" of "Then"). With
    uniform swaps out of ~400 ids the model seldom met those in an odd place, and blanks before numbers
    came out 27% critical.
    """
    counts = torch.bincount(torch.tensor([i for row in completions for i in row]), minlength=len(tokenizer))
    return counts[: len(tokenizer)].float() * _swappable(tokenizer)


def _swappable(tokenizer) -> torch.Tensor:
    """Word and format tokens, special tokens excluded: the tokens a solution may swap."""
    from cft_rl.token_classes import ENTROPY_CLASSES, token_class_table

    table = token_class_table(tokenizer)
    swappable = table != ENTROPY_CLASSES.index("numeric")
    swappable[tokenizer.all_special_ids] = False
    return swappable


def batches_of(tokenizer, corpus: list[tuple[str, str]], config):
    """Length-bucketed batches of (input_ids, labels): labels only on solution tokens, -100 elsewhere,
    with ``config.noise_prob`` of the solution's word and format tokens swapped (:func:`swap_tokens`) for
    tokens drawn by their frequency in the solutions (:func:`swap_weights`)."""
    batch_size = config.batch_size
    prompts = tokenizer([p for p, _ in corpus], add_special_tokens=False)["input_ids"]
    completions = tokenizer([c for _, c in corpus], add_special_tokens=False)["input_ids"]
    rows = [(p + c, [-100] * len(p) + c) for p, c in zip(prompts, completions, strict=True)]
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    weights = swap_weights(tokenizer, completions)
    while True:  # epochs: shuffle, sort within chunks of 50 batches to cut padding, shuffle the batches
        rng.shuffle(rows)
        chunk = batch_size * 50
        batches = []
        for i in range(0, len(rows), chunk):
            part = sorted(rows[i : i + chunk], key=lambda r: len(r[0]))
            batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
        rng.shuffle(batches)
        for batch in batches:
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id)
            labels = torch.full((len(batch), width), -100)
            for k, (x, y) in enumerate(batch):
                ids[k, : len(x)], labels[k, : len(y)] = torch.tensor(x), torch.tensor(y)
            if config.noise_prob > 0:
                ids, labels = swap_tokens(ids, labels, weights, config.noise_prob, generator)
            yield ids, labels
