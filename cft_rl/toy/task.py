"""The toy task: multi-step arithmetic word problems with stylistically diverse solutions.

Why a toy at all: no hub is reachable here, and users want to try the whole method on a laptop. Why
*this* toy: CFT's claim is that full SFT collapses diversity that critical-token SFT keeps. That needs
solutions where many tokens are free choices (phrasing, order of independent steps, restatements,
connectives) while a few tokens (the numbers and operators) decide whether the answer is right. Each
problem here has many equally valid solutions, all ending in ``\\boxed{N}``.

A problem is a story: someone starts with some items, then a few events change the count (buy more,
give some away, buy boxes of several, give several friends several each, the count doubles). Boxes
and gifts of several each are products computed independently of the running total, which is what
lets a solution reorder its steps. Distractor sentences add numbers that must be ignored.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field

from cft_rl.data.prompts import build_prompt
from cft_rl.toy.phrases import ENDINGS, FIRST, GOALS, INTROS, PRODUCT_PHRASES, REASONS, RUNNING_PHRASES, THEN

NAMES = [
    "Ann",
    "Ben",
    "Cara",
    "Dev",
    "Eli",
    "Fay",
    "Gus",
    "Hana",
    "Ivo",
    "Jade",
    "Kai",
    "Lena",
    "Milo",
    "Nora",
]
FRIENDS = ["her brother", "a neighbour", "his cousin", "a classmate", "the teacher", "a friend"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "cards", "shells", "coins", "books", "eggs"]
CONTAINERS = ["boxes", "bags", "packs", "jars", "crates"]
OPS = ("+", "-", "*")


@dataclass(frozen=True)
class ToyTaskConfig:
    """Settings of the problem generator. Every field changes which problems exist, so all of them go
    into the build's cache key.

    Args:
        min_steps / max_steps: arithmetic steps per problem (each ``a op b = c`` is one step), before
            a hard problem's final multiplication.
        operations: allowed step kinds among ``+`` (buy), ``-`` (give away), ``*`` (boxes, doubling).
        max_start: the starting count is drawn from ``[2, max_start]``.
        max_operand: bought/given counts and per-box contents are drawn from ``[1, max_operand]``.
        max_factor: numbers of boxes/friends and multipliers are drawn from ``[2, max_factor]``.
        max_value: no intermediate result exceeds this (keeps numbers short for a tiny model), but for
            a hard problem's final product.
        distractor_prob / max_distractors: chance of each of up to ``max_distractors`` irrelevant
            sentences with numbers. They make a problem harder to read without making its solution
            longer: difficulty that costs prompt tokens, which are cheap, not generated ones.
        reorder_prob / restate_prob: chance a solution computes independent products first, and
            chance it restates the running total after a step.
        intro_prob / goal_prob / reason_prob: chance a solution opens with a sentence of plan, chance
            it then says in words what it is asked for, and chance a step says in words why the count
            changes. Words are the free choices of a solution: with them,
            the numbers and operators that decide the answer are a minority of its tokens, as in real
            solutions (without them, digits and operators are 37% of the toy's tokens). Digits and
            operators are mostly critical, so their share bounds the critical fraction from below: with
            a plan and reasons but no goal sentence, it was 22-24%.
        hard_prob / hard_factors: chance a problem ends by multiplying the count by a factor drawn
            from ``hard_factors`` (a count of up to 60 times 4 to 9). Such a problem is ``hard``: the
            toy build keeps few hard problems in pretraining (``ToyBuildConfig.pretrain_hard_share``), so
            its base model has that skill only weakly: something for RL to strengthen. Graded difficulty
            puts accuracy on a plateau (the easy problems learnt, the hard ones not) instead of on the
            cliff where the arithmetic clicks: with easy problems only, greedy accuracy rose from 19%
            to 77% between 600 and 1200 pretraining steps, and with hard ones in pretraining the step
            where it rose varied by more than 700 steps between two seeds. 45% hard problems put the
            default base model's greedy accuracy in the middle of its range (easy problems 83-96%, hard
            ones 23-27% over three build seeds): half the problems give RL something to learn.
    """

    min_steps: int = 2
    max_steps: int = 5
    operations: tuple[str, ...] = OPS
    max_start: int = 20
    max_operand: int = 9
    max_factor: int = 4
    max_value: int = 60
    distractor_prob: float = 0.3
    max_distractors: int = 2
    reorder_prob: float = 0.5
    restate_prob: float = 0.2
    intro_prob: float = 0.9
    goal_prob: float = 0.8
    reason_prob: float = 0.9
    hard_prob: float = 0.45
    hard_factors: tuple[int, int] = (4, 9)

    def __post_init__(self):
        unknown = set(self.operations) - set(OPS)
        if unknown or not self.operations:
            raise ValueError(f"operations {self.operations!r}: use a non-empty subset of {OPS}")
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")


@dataclass(frozen=True)
class Event:
    """One change to the running count. ``factor`` is set for products (boxes/gifts of several)."""

    kind: str  # buy, give, buy_boxes, give_each, double
    amount: int  # the number added/removed, or the multiplier for ``double``
    factor: int = 0  # boxes or friends, for the product events
    per: int = 0  # items per box or per friend


@dataclass(frozen=True)
class Problem:
    name: str
    item: str
    container: str
    friend: str
    start: int
    events: tuple[Event, ...]
    distractors: tuple[str, ...] = field(default_factory=tuple)
    hard: bool = False  # ends with a multiplication by one of the task's hard factors

    @property
    def answer(self) -> int:
        value = self.start
        for e in self.events:
            value = value * e.amount if e.kind == "double" else value + _sign(e) * e.amount
        return value

    @property
    def question(self) -> str:
        sentences = [f"{self.name} has {self.start} {self.item}."]
        sentences += [_event_sentence(self, e) for e in self.events]
        # Distractors sit among the facts, never after the question.
        for i, d in enumerate(self.distractors):
            sentences.insert(1 + (i * 2) % len(sentences), d)
        return " ".join(sentences) + f" How many {self.item} does {self.name} have now?"

    def to_dict(self) -> dict:
        return asdict(self)


def _sign(e: Event) -> int:
    return -1 if e.kind in ("give", "give_each") else 1


def _event_sentence(p: Problem, e: Event) -> str:
    if e.kind == "buy":
        return f"Then {p.name} buys {e.amount} more {p.item}."
    if e.kind == "give":
        return f"{p.name} gives {e.amount} {p.item} to {p.friend}."
    if e.kind == "buy_boxes":
        return f"{p.name} buys {e.factor} {p.container} with {e.per} {p.item} in each."
    if e.kind == "give_each":
        return f"{p.name} gives {e.factor} friends {e.per} {p.item} each."
    return f"Then the number of {p.item} is multiplied by {e.amount}."


# ---------------------------------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------------------------------


def _steps_of(e: Event) -> int:
    return 2 if e.factor else 1


def _next_event(rng: random.Random, cfg: ToyTaskConfig, value: int, steps_left: int) -> Event | None:
    """A random event that keeps the count in [0, max_value], or None if none fits."""
    kinds = []
    if "+" in cfg.operations:
        kinds.append("buy")
    if "-" in cfg.operations:
        kinds.append("give")
    if "*" in cfg.operations:
        kinds.append("double")
        if steps_left >= 2:
            kinds += ["buy_boxes", "give_each"] if {"+", "-"} <= set(cfg.operations) else []
    for _ in range(20):
        kind = rng.choice(kinds)
        if kind in ("buy", "give"):
            e = Event(kind, rng.randint(1, cfg.max_operand))
        elif kind == "double":
            e = Event(kind, rng.randint(2, min(3, cfg.max_factor)))
        else:
            factor, per = rng.randint(2, cfg.max_factor), rng.randint(2, cfg.max_operand)
            e = Event(kind, factor * per, factor, per)
        new = value * e.amount if kind == "double" else value + _sign(e) * e.amount
        if 0 <= new <= cfg.max_value and (kind != "give_each" or "+" in cfg.operations):
            return e
    return None


def generate_problem(rng: random.Random, cfg: ToyTaskConfig) -> Problem:
    """One random problem with between ``min_steps`` and ``max_steps`` arithmetic steps."""
    while True:
        target = rng.randint(cfg.min_steps, cfg.max_steps)
        value, events, steps = rng.randint(2, cfg.max_start), [], 0
        start = value
        while steps < target:
            e = _next_event(rng, cfg, value, target - steps)
            if e is None:
                break
            events.append(e)
            steps += _steps_of(e)
            value = value * e.amount if e.kind == "double" else value + _sign(e) * e.amount
        if cfg.min_steps <= steps <= cfg.max_steps:
            break
    hard = rng.random() < cfg.hard_prob and value >= 2
    if hard:
        events.append(Event("double", rng.randint(*cfg.hard_factors)))
    name = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    distractors = tuple(
        _distractor(rng, name, item) for _ in range(cfg.max_distractors) if rng.random() < cfg.distractor_prob
    )
    container, friend = rng.choice(CONTAINERS), rng.choice(FRIENDS)
    return Problem(name, item, container, friend, start, tuple(events), distractors, hard)


def _distractor(rng: random.Random, name: str, item: str) -> str:
    other = rng.choice([i for i in ITEMS if i != item])
    return rng.choice(
        [
            f"{rng.choice([n for n in NAMES if n != name])} has {rng.randint(2, 40)} {other}.",
            f"{name} is {rng.randint(7, 15)} years old.",
            f"The shop is {rng.randint(2, 20)} minutes away.",
            f"{name} also has {rng.randint(2, 30)} {other}.",
        ]
    )


# ---------------------------------------------------------------------------------------------------
# Solutions: one computation, many ways to write it down
# ---------------------------------------------------------------------------------------------------


def _sentence(connective: str, body: str) -> str:
    return f"{connective} {body}" if connective else body[0].upper() + body[1:]


def _plan(problem: Problem, products_first: bool) -> list[tuple]:
    """The steps in writing order: ``("product", event)`` and ``("running", event)`` entries."""
    products = [("product", e) for e in problem.events if e.factor]
    running = [("running", e) for e in problem.events]
    if products_first:
        return products + running
    plan = []
    for e in problem.events:
        plan += ([("product", e)] if e.factor else []) + [("running", e)]
    return plan


def render_solution(problem: Problem, rng: random.Random, cfg: ToyTaskConfig = ToyTaskConfig()) -> str:
    """One chain-of-thought solution, in a randomly chosen style, ending in ``\\boxed{answer}``."""
    p = problem
    lines = []
    if rng.random() < cfg.intro_prob:
        lines.append(rng.choice(INTROS).format(**_names(p)))
    if rng.random() < cfg.goal_prob:
        lines.append(rng.choice(GOALS).format(**_names(p)))
    if rng.random() < cfg.restate_prob:
        lines.append(f"{p.name} starts with {p.start} {p.item}.")
    value = p.start
    for i, (kind, e) in enumerate(_plan(p, rng.random() < cfg.reorder_prob)):
        connective = rng.choice(FIRST if i == 0 else THEN)
        if kind == "product":
            body = rng.choice(PRODUCT_PHRASES[e.kind])
            lines.append(_sentence(connective, body.format(f=e.factor, per=e.per, p=e.amount, **_names(p))))
            continue
        op, new = (
            ("*", value * e.amount)
            if e.kind == "double"
            else ("+-"[_sign(e) < 0], value + _sign(e) * e.amount)
        )
        body = rng.choice(RUNNING_PHRASES).format(v=value, op=op, a=e.amount, r=new, **_names(p))
        if rng.random() < cfg.reason_prob:
            body = rng.choice(REASONS[e.kind]).format(**_names(p)) + " " + body
        lines.append(_sentence(connective, body))
        value = new
        if rng.random() < cfg.restate_prob:
            lines.append(f"Now {p.name} has {value} {p.item}.")
    lines.append(rng.choice(ENDINGS).format(n=value, **_names(p)))
    return " ".join(lines)


def _names(p: Problem) -> dict:
    return {"name": p.name, "item": p.item, "container": p.container}


def sample_solutions(
    problem: Problem, n: int, seed: int = 0, cfg: ToyTaskConfig = ToyTaskConfig()
) -> list[str]:
    """``n`` solutions of one problem in independently drawn styles (duplicates possible)."""
    rng = random.Random(f"{seed}-{problem.question}")
    return [render_solution(problem, rng, cfg) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------

# A problem's split is a function of its question text alone, so the splits can never share a problem,
# whatever sizes are asked for. Pretraining text comes from its own bucket: the base model never saw
# a train, validation or test problem.
SPLIT_BUCKETS = {"pretrain": (0, 70), "train": (70, 85), "validation": (85, 90), "test": (90, 100)}


def split_of(question: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "big") % 100
    return next(name for name, (lo, hi) in SPLIT_BUCKETS.items() if lo <= bucket < hi)


def generate_splits(sizes: dict[str, int], seed: int = 0, cfg: ToyTaskConfig = ToyTaskConfig()) -> dict:
    """``{split: [Problem, ...]}`` with ``sizes[split]`` distinct problems each, deterministic in ``seed``."""
    unknown = set(sizes) - set(SPLIT_BUCKETS)
    if unknown:
        raise ValueError(f"unknown toy splits {sorted(unknown)}; choose from {list(SPLIT_BUCKETS)}")
    rng = random.Random(seed)
    out: dict[str, list[Problem]] = {name: [] for name in sizes}
    seen: set[str] = set()
    budget = 200 * (sum(sizes.values()) + 10)
    while any(len(out[s]) < n for s, n in sizes.items()):
        budget -= 1
        if budget < 0:
            raise ValueError(f"cannot draw {sizes} distinct problems with {cfg}; widen the number ranges")
        problem = generate_problem(rng, cfg)
        question = problem.question
        split = split_of(question)
        if question in seen or split not in out or len(out[split]) >= sizes[split]:
            continue
        seen.add(question)
        out[split].append(problem)
    return out


def to_records(problems: list[Problem], split: str, seed: int = 0, cfg: ToyTaskConfig = ToyTaskConfig()):
    """Rows in the benchmark record shape (``id, question, answer, solution, source, prompt``)."""

    rows = []
    for i, problem in enumerate(problems):
        question = problem.question
        rows.append(
            {
                "id": f"toy-{split}-{i}",
                "question": question,
                "answer": str(problem.answer),
                "solution": sample_solutions(problem, 1, seed, cfg)[0],
                "source": "toy",
                "prompt": build_prompt(question),
            }
        )
    return rows
