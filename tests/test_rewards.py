"""The verifier: extraction, symbolic verification, TRL reward shape, and never hanging or raising."""

import asyncio
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cft_rl import answers
from cft_rl.answers import extract_answer, last_boxed_content
from cft_rl.verify import verifier as rewards
from cft_rl.verify.verifier import check, format_reward, get_reward_func, math_reward, verify, verify_batch

# Short, so the runaway cases below cost little. How long a call takes at worst is measured by
# scripts/bench_verifier.py (docs/benchmarks.md); tests check behaviour, never the clock.
TIMEOUT = 1.0


@pytest.fixture(scope="module", autouse=True)
def warm_workers():
    rewards.warmup()  # the one-off worker start is not charged to any verification


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so the total is \boxed{72}.", "72"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),
        (r"\fbox{7}", "7"),
        (r"\boxed 5", "5"),
        (r"\boxed{\boxed{3}}", r"\boxed{3}"),  # outermost of nested boxes
        (r"\boxed{unclosed", None),
        (r"\boxed{}", None),
        ("The answer is 42.", "42"),
        ("The final answer is: $\\frac{3}{4}$.", r"\frac{3}{4}"),
        ("Answer: 3.5", "3.5"),
        ("the answer is 7. Wait, no, the answer is 8.", "8"),
        ("The answer is therefore 3.\n#### 3", "3"),
        ("Natalia sold 24 clips.\n#### 72", "72"),
        ("#### 1,000", "1000"),
        (r"\boxed{0,245}", "0,245"),  # not a thousands separator: no number starts "0,"
        (r"The answer is (1,2)", "(1,2)"),
        (r"\boxed{12} and later the answer is 13", "12"),  # boxed wins over prose
        ("no final answer here", None),
        (r"The answer is \boxed{41", None),  # cut off mid-box: no answer, not "41"
        ("", None),
        (None, None),
        (b"\\boxed{9}", "9"),
        (12, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extraction_is_linear_on_adversarial_text(monkeypatch):
    """However many boxes and braces a text holds, its braces are matched in one pass, once: a
    search that rescanned the text per box would be quadratic on these."""
    assert last_boxed_content("x" * 1_000_000 + r"\boxed{5}") == "5"
    texts = ["\\boxed{" * 100_000, "{" * 10_000 + "}" * 10_000 + r"\boxed{4}", "\\boxed{1}. " * 50_000]
    scanned = []
    real = answers.match_braces

    def match_braces_once(text):
        scanned.append(len(text))
        assert len(scanned) <= len(texts), "braces matched again for the same text"
        return real(text)

    monkeypatch.setattr(answers, "match_braces", match_braces_once)
    assert [extract_answer(t) for t in texts] == [None, "4", "1"]
    assert scanned == [len(t) for t in texts]


VERIFY_CASES = [
    (r"\boxed{72}", "72", 1.0),
    (r"\boxed{73}", "72", 0.0),
    (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
    (r"\boxed{\dfrac{1}{2}}", "0.5", 1.0),
    ("#### 1,000", "1000", 1.0),
    (r"\boxed{1,000}", "1000", 1.0),
    (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", 1.0),
    (r"\boxed{(3, \pi)}", r"\left( 3, \frac{\pi}{2} \right)", 0.0),
    (r"\boxed{9 \text{ apples}}", "9", 1.0),
    (r"\boxed{x = 5}", "5", 1.0),
    (r"\boxed{10-4n}", "10-4 n", 1.0),
    (r"\boxed{B}", "B", 1.0),
    (r"\boxed{(B)}", "B", 1.0),
    (r"\boxed{\text{B}}", "B", 1.0),
    (r"\boxed{A}", "B", 0.0),
    ("The answer is $5$.", "$5$", 1.0),
    ("no answer at all", "5", 0.0),
    (r"\boxed{5}", 5, 1.0),
    (r"\boxed{2.5}", 2.5, 1.0),
    (r"\boxed{No solution.}", "No solution.", 1.0),  # prose golds match verbatim, up to cosmetics
    (r"\boxed{3:30 p.m.}", "3:30 p.m.", 1.0),
    (r"\boxed{4:30 p.m.}", "3:30 p.m.", 0.0),
]


@pytest.mark.parametrize("prediction, gold, expected", VERIFY_CASES)
def test_verify(prediction, gold, expected):
    assert verify(prediction, gold, timeout=5.0) == expected


def test_check_explains_the_score():
    assert check(r"\boxed{7}", "7").status == "correct"
    assert check(r"\boxed{8}", "7").status == "wrong"
    assert check("nothing", "7").status == "no_answer"
    assert check(r"\boxed{7}", "").score is None
    assert check(r"\boxed{7}", None).status == "bad_gold"


PATHOLOGICAL = rewards.PATHOLOGICAL_INPUTS


@pytest.mark.parametrize("prediction, gold", PATHOLOGICAL, ids=range(len(PATHOLOGICAL)))
def test_pathological_inputs_score_zero_with_a_verdict(prediction, gold):
    verdict = check(prediction, gold, timeout=TIMEOUT)
    assert verdict.score in (0.0, None)
    assert verdict.status in {"timeout", "no_answer", "wrong", "bad_gold"}


@pytest.mark.parametrize("prediction, gold", PATHOLOGICAL[:3], ids=range(3))
def test_a_runaway_sympy_job_is_cut_off_by_the_timeout(prediction, gold):
    """Towers sympy would work on for hours: the guard kills the job and says so."""
    assert check(prediction, gold, timeout=TIMEOUT).status == "timeout"


def test_worker_thread_gives_the_same_results_as_main_thread():
    cases = [(p, g) for p, g, _ in VERIFY_CASES]
    main = [verify(p, g) for p, g in cases]
    out = []
    t = threading.Thread(target=lambda: out.extend(verify(p, g) for p, g in cases))
    t.start()
    t.join(60)
    assert out == main
    assert verify_batch([p for p, _ in cases], [g for _, g in cases]) == main


def test_async_context_keeps_the_bound():
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def main():
        beat = asyncio.create_task(ticker())
        slow, fine = await asyncio.gather(
            rewards.averify(r"\boxed{9^{9^{9^{9}}}}", "5", timeout=TIMEOUT),
            rewards.averify(r"\boxed{3}", "3"),
        )
        during = ticks  # the loop ran while the runaway job waited out its timeout in a thread
        beat.cancel()
        # a plain synchronous call inside a running loop works too (TRL calls sync rewards there)
        inline = verify(r"\boxed{4}", "4")
        return slow, fine, inline, during

    slow, fine, inline, during = asyncio.run(main())
    assert (slow, fine, inline) == (0.0, 1.0, 1.0)
    assert during > 0


def test_batch_matches_single_calls_and_spreads_over_workers():
    preds = [rf"\boxed{{{i}}}" for i in range(100)]
    golds = [str(i if i % 4 else i + 1) for i in range(100)]
    assert verify_batch(preds, golds, workers=2) == [verify(p, g) for p, g in zip(preds, golds, strict=True)]
    with pytest.raises(ValueError, match="one gold per prediction"):
        verify_batch(preds, golds[:-1])


latex_fragments = st.sampled_from(
    [
        "\\boxed{",
        "\\fbox{",
        "{",
        "}",
        "\\frac{",
        "^{",
        "9",
        "1",
        "x",
        "=",
        "\\sqrt",
        "$",
        "####",
        "The answer is ",
        ",",
        ".",
        "\\left(",
        "\\right)",
        "\\text{",
        "\n",
        " ",
        "-",
        "\\infty",
        "e",
        "\\pi",
        "!",
        "10^{100}",
    ]
)
fuzz_text = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=()), max_size=300),
    st.lists(latex_fragments, max_size=60).map("".join),
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(prediction=fuzz_text, gold=st.one_of(fuzz_text, st.none(), st.integers(), st.floats()))
def test_fuzz_never_raises(prediction, gold):
    verdict = check(prediction, gold, timeout=TIMEOUT)
    assert verdict.score in (0.0, 1.0, None)
    assert verdict.status in {"correct", "wrong", "no_answer", "unparsed_answer", "bad_gold", "timeout"}


def test_math_reward_has_trls_shape():
    completions = [
        r"\boxed{72}",
        "I give up",
        [{"role": "assistant", "content": r"so \boxed{72}"}],
        r"\boxed{1}",
    ]
    logged = {}
    scores = math_reward(
        completions, answer=["72", "72", "72", ""], log_extra=logged.__setitem__, trainer_state=None
    )
    assert scores == [1.0, 0.0, 1.0, None]
    assert logged["verdict"] == ["correct", "no_answer", "correct", "bad_gold"]
    assert set(logged) == {"answer_extracted", "answer_parsed", "gold_parsed", "verdict"}
    assert all(len(v) == 4 for v in logged.values())


def test_format_reward():
    assert format_reward([r"x \boxed{3}", "3", [{"role": "assistant", "content": r"\boxed{}"}], None]) == [
        1.0,
        0.0,
        0.0,
        0.0,
    ]


def test_reward_registry():
    assert get_reward_func("math_reward") is math_reward
    assert get_reward_func("format_reward") is format_reward
    assert get_reward_func("cft_rl.verify.verifier.verify") is verify
    assert get_reward_func("cft_rl.verify.verifier:verify") is verify
    with pytest.raises(ValueError, match="Registered: \\['format_reward', 'math_reward'\\]"):
        get_reward_func("math_rewrad")
    with pytest.raises(ValueError, match="Check the dotted path"):
        get_reward_func("cft_rl.verify.verifier.nope")


@pytest.mark.parametrize(
    "answer, gold",
    [("47", "48"), ("-3", "3"), ("0", "10"), ("123456789012345", "123456789012346"), (" 7 ", "70")],
)
def test_integer_fast_path_gives_the_workers_verdict(answer, gold):
    """Two different plain integers are settled in-process; the verdict must be math-verify's own."""
    fast = check(f"\\boxed{{{answer}}}", gold)
    status, pred_parsed, gold_parsed = rewards._score_job(answer.strip(), gold, 6, 15, True)
    assert (fast.score, fast.status, fast.pred_parsed, fast.gold_parsed) == (
        0.0,
        status,
        pred_parsed,
        gold_parsed,
    )
    # Longer or decorated integers are not taken by the fast path: math-verify decides them.
    assert not rewards._INTEGER_RE.match("1234567890123456") and not rewards._INTEGER_RE.match("007")
