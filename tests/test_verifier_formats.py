"""The verifier on the answer formats real models write (issue 15, §2).

Hand-made cases in the kinds where math-verify's own test suite caught us out: answers stated in a
sentence after the marker, multi-part answers in several boxes, a percent sign after the math, and
answers without any marker (which must stay unanswered: the reward is strict).
"""

import pytest

from cft_rl.answers import MAX_ANSWER_CHARS, MAX_PARTS, extract_answer
from cft_rl.verify import verifier as rewards
from cft_rl.verify.verifier import check


@pytest.fixture(scope="module", autouse=True)
def warm_workers():
    rewards.warmup()


@pytest.fixture
def guard_jobs(monkeypatch):
    """Every job the verifier sends to its guarded workers, as ``(answer, gold)``."""
    pool = rewards.shared_pool(rewards._JOB)
    sent: list[tuple[str, str]] = []
    original = pool.map

    def recording_map(jobs, timeout, workers=1):
        sent.extend((job[0], job[1]) for job in jobs)
        return original(jobs, timeout=timeout, workers=workers)

    monkeypatch.setattr(pool, "map", recording_map)
    return sent


# --- 1. answer sentences ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Final Answer: The smallest $k$ is 12.", "12"),
        ("Answer: Tom ends up with 7 marbles after the trade.", "7"),
        ("The final answer is: the area of $\\triangle PQR$ equals $\\frac{9}{2}$.", "\\frac{9}{2}"),
        ("Answer: the two roots of the equation are $x=2$ and $x=5$.", "x=2, x=5"),
        ("Answer: The bakery sold 1,250 loaves in total", "1250"),
        # Bare answers are left as they are, and so is a prose answer without math or numbers.
        ("Answer: 9 apples", "9 apples"),
        ("The answer is No solution.", "No solution"),
        ("The answer is that the series diverges", "that the series diverges"),
        ("The answer is $x = 5$.", "x = 5"),
    ],
)
def test_a_sentence_after_the_marker_gives_its_final_math(text, expected):
    assert extract_answer(text) == expected


def test_an_answer_sentence_is_verified_without_parsing_the_sentence(guard_jobs):
    verdict = check("Answer: the two roots of the equation are $x=2$ and $x=5$.", "2, 5")
    assert verdict.status == "correct"
    assert guard_jobs == [("x=2, x=5", "2, 5")]  # the sentence itself never reached sympy
    assert check("Final Answer: The smallest $k$ is 12.", "12").status == "correct"
    assert check("Final Answer: The smallest $k$ is 13.", "12").status == "wrong"


def test_a_long_answer_sentence_stays_cheap(guard_jobs):
    """A rambling sentence after the marker must not be handed to sympy whole (it could eat the
    whole timeout); only its final number or math span is."""
    filler = "".join(f"the value of $x_{{{i}}}$ is not {i} and " for i in range(60))
    verdict = check(f"Final Answer: {filler}so it is $\\frac{{7}}{{3}}$", "\\frac{7}{3}")
    assert len(filler) > MAX_ANSWER_CHARS
    assert verdict.status != "timeout"
    assert all(len(answer) <= 40 for answer, _ in guard_jobs), guard_jobs


def test_a_final_answer_sentence_after_intermediate_boxes_wins():
    text = (
        "The first year gives $100 \\cdot 0.05 = \\boxed{5}$, so we have $105$; the second year gives "
        "$105 \\cdot 0.05 = \\boxed{5.25}$. Final Answer: The final answer is $110.25$. I hope it is correct."
    )
    assert extract_answer(text) == "110.25"
    assert extract_answer("\\boxed{12} and later the answer is 13") == "12"  # plain prose: the box wins


# --- 2. several boxes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, gold",
    [
        ("so $a = \\boxed{3}$ and $b = \\boxed{7}$.", "a=3, b=7"),
        ("The pairs are $\\boxed{(1, 4)}, \\boxed{(4, 1)}$", "(1,4),(4,1)"),
        ("$\\boxed{2} \\quad \\text{and} \\quad \\boxed{9}$", "2, 9"),
        ("\\boxed{9} \\text{ or } \\boxed{2}", "2, 9"),
        ("\\boxed{5} cats and \\boxed{8} dogs", "5, 8"),
        ("\\(p = \\boxed{3}\\) and \\(q_2 = \\boxed{11}\\)", "p=3, q_2=11"),
        ("\\boxed{2} or \\boxed{-2}", "\\pm 2"),
    ],
)
def test_several_boxes_together_answer_a_multi_part_gold(text, gold):
    assert check(text, gold).status == "correct"


@pytest.mark.parametrize(
    "text, gold, status",
    [
        # A corrected answer later in the text wins, as with a single box.
        ("\\boxed{6}. Hmm, I made an error; redoing it: \\boxed{8}", "8", "correct"),
        ("\\boxed{8}. Hmm, I made an error; redoing it: \\boxed{6}", "8", "wrong"),
        # A hedge between two boxed values never scores, whichever comes last.
        ("\\boxed{6} or \\boxed{8}", "8", "wrong"),
        ("\\boxed{8} or \\boxed{6}", "8", "wrong"),
        ("$\\boxed{8}$, $\\boxed{6}$", "8", "wrong"),
        ("\\boxed{3}, \\boxed{4}", "(3, 4)", "wrong"),  # the point (3, 4) is one value
        ("\\boxed{8} and \\boxed{8}", "8", "correct"),  # one value written twice is no hedge
        # Parts separated by prose are not one answer: the last box alone is.
        ("\\boxed{1} was my first guess, but redoing it: \\boxed{2}", "1, 2", "wrong"),
    ],
)
def test_a_single_valued_gold_keeps_last_box_semantics(text, gold, status):
    assert check(text, gold).status == status


def test_many_boxes_stay_bounded(guard_jobs):
    """A runaway list of joined boxes is no answer, and boxes apart from each other cost one box."""
    runaway = ", ".join(["\\boxed{1}"] * 20_000)
    assert extract_answer(", ".join(["\\boxed{1}"] * MAX_PARTS)) is not None
    assert extract_answer(", ".join(["\\boxed{1}"] * (MAX_PARTS + 1))) is None
    assert check(runaway, "1").status == "no_answer"
    apart = "".join(f"\\boxed{{{i}}} then, after a long pause, " for i in range(20_000)) + "\\boxed{7}"
    assert extract_answer(apart) == "7"
    assert check(apart, "8").status == "wrong"
    assert guard_jobs == []  # settled in-process: nothing long went to a worker


# --- 3. a percent sign after the math --------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is $35$ %.", "35\\%"),
        ("Answer: $12.5$ percent", "12.5\\%"),
        ("\\boxed{$40$ %}", "40\\%"),
        ("The answer is \\(64\\) pct", "64\\%"),
    ],
)
def test_a_percent_sign_after_the_math_belongs_to_the_answer(text, expected):
    assert extract_answer(text) == expected


def test_a_percent_after_the_math_verifies():
    assert check("The answer is $35$ %.", "35\\%").status == "correct"
    assert check("The answer is $36$ %.", "35\\%").status == "wrong"


# --- 4. no marker, no answer -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "So we get $17$.",
        "17",
        "The total is 17 apples",
        "$$\\frac{17}{1}$$",
        "Therefore 17 is what we were asked for.",
    ],
)
def test_an_answer_without_a_marker_stays_unanswered(text, guard_jobs):
    assert check(text, "17").status == "no_answer"
    assert guard_jobs == []
