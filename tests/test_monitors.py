"""GRPO monitors on hand-made groups: every expected value below is worked out by hand in a comment."""

import math

import pytest
import torch
from trl.trainer.utils import nanstd

from cft_rl.generation import Sample
from cft_rl.grpo.metrics import (
    MonitorConfig,
    entropy_metrics,
    frac_zero_std,
    group_metrics,
    length_stats,
    normalize_answer,
    probe_metrics,
)
from cft_rl.token_classes import entropy_class

# --- frac_zero_std and TRL's float32 reading of it -------------------------------------------------


def trl_frac_reward_zero_std(rewards: list[float], num_generations: int) -> float:
    """TRL 1.16 GRPOTrainer._generate_and_score_completions, scale_rewards="group", line for line."""
    rewards = torch.tensor(rewards, dtype=torch.float32)
    std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
    std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    is_std_zero = torch.isclose(std_rewards, torch.zeros_like(std_rewards))
    return is_std_zero.float().mean().item()


def test_trl_misreads_equal_non_binary_rewards_and_we_do_not():
    # 8 generations all rewarded 1.2 (accuracy 1.0 + format bonus 0.2): float32 rounding leaves a std of
    # ~1.3e-7, above isclose's 1e-8 tolerance, so TRL reports "no group has zero std".
    # (With G=4 the float32 mean happens to be exact and TRL reads 1.0; G=8 is the usual setting.)
    same = [1.2] * 8
    assert nanstd(torch.tensor(same).view(1, 8), dim=1).item() > 1e-8
    assert trl_frac_reward_zero_std(same, 8) == 0.0
    assert frac_zero_std(same, 8) == 1.0
    # The float32 values themselves, as the trainer would gather them, are still all equal.
    assert frac_zero_std(torch.tensor(same, dtype=torch.float32).tolist(), 8) == 1.0
    # One all-equal group and one mixed group: the right answer is 1/2.
    batch = same + [1.0, 0.0] * 4
    assert trl_frac_reward_zero_std(batch, 8) == 0.0
    assert frac_zero_std(batch, 8) == 0.5


def test_frac_zero_std_ignores_failed_rewards():
    rewards = [
        *(1.0, None, 1.0, float("nan")),  # usable 1.0, 1.0: equal
        *(1.0, 0.0, None, 1.0),  # usable 1.0, 0.0, 1.0: not equal
        *(None, 0.5, None, None),  # one usable reward: all advantages zero, counts as equal
        *(None, None, None, None),  # nothing usable: counts as equal
    ]
    assert frac_zero_std(rewards, 4) == 3 / 4
    assert frac_zero_std([0.3, 0.3 + 1e-9, 0.3, 0.3], 4) == 1.0  # within atol
    assert frac_zero_std([0.3, 0.31, 0.3, 0.3], 4) == 0.0


def test_ragged_batch_is_an_error():
    with pytest.raises(ValueError, match="group_size=4"):
        frac_zero_std([1.0] * 6, 4)


# --- group metrics ---------------------------------------------------------------------------------


def test_pass_at_k_from_rewards():
    # Threshold 1.0: group 0 correct = [1, 0, 0, 0], group 1 = [1, 1, 0, 0].
    rewards = [1.2, 0.2, 0.0, 0.2, 1.0, 1.2, 0.0, 0.2]
    m = group_metrics(rewards, ["x"] * 8, 4)
    # pass@1: (1/4 + 2/4) / 2. pass@2: group 0 = 1 - C(3,2)/C(4,2) = 1/2, group 1 = 1 - C(2,2)/C(4,2) = 5/6.
    assert m["explore/pass@1"] == pytest.approx(0.375)
    assert m["explore/pass@2"] == pytest.approx((1 / 2 + 5 / 6) / 2)
    assert m["explore/pass@4"] == pytest.approx(1.0)
    assert "explore/pass@8" not in m
    assert m["explore/frac_zero_std"] == 0.0
    assert m["explore/frac_reward_failed"] == 0.0


def test_failed_rewards_are_counted_and_excluded():
    # Group 0 has two usable rows (1.0 correct, 0.0 wrong); group 1 has all four, one correct.
    rewards = [1.0, None, 0.0, float("nan"), 1.0, 0.0, 0.0, 0.0]
    m = group_metrics(rewards, ["x"] * 8, 4)
    assert m["explore/frac_reward_failed"] == 2 / 8
    # pass@1: (1/2 + 1/4) / 2. pass@2: group 0 = 1 (n=2, c=1), group 1 = 1 - C(3,2)/C(4,2) = 1/2.
    assert m["explore/pass@1"] == pytest.approx(0.375)
    assert m["explore/pass@2"] == pytest.approx(0.75)
    # pass@4 needs 4 usable rows: only group 1 (n=4, c=1) has them.
    assert m["explore/pass@4"] == pytest.approx(1.0)


def test_explicit_correctness_overrides_the_threshold():
    m = group_metrics([5.0, 5.0], ["a", "b"], 2, correct=[False, True])
    assert m["explore/pass@1"] == 0.5
    assert m["explore/frac_zero_std"] == 1.0


def test_answers_distinct_and_entropy():
    texts = [r"\boxed{3}", r"so \boxed{ 3 }", r"\boxed{4}", "no answer here"]
    texts += [r"\boxed{\left(1, 2\right)}", r"\boxed{(1,2)}", r"\boxed{(1,2)}", r"\boxed{(1,2)}"]
    m = group_metrics([0.0] * 8, texts, 4)
    # Group 0: answers 3, 3, 4 (one missing): 2 distinct, entropy of (2/3, 1/3). Group 1: one answer.
    assert m["explore/distinct_answers"] == 1.5
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert m["explore/answer_entropy"] == pytest.approx((h + 0.0) / 2)
    assert m["explore/frac_no_answer"] == 1 / 8


def test_answer_normalization():
    assert normalize_answer(r" $\frac{1}{2}$ ") == r"\frac{1}{2}"
    assert normalize_answer(r"\left( 1,\, 2 \right)") == "(1,2)"
    assert normalize_answer("   ") is None
    assert normalize_answer("1/2") != normalize_answer("0.5")  # textual only, by design


def test_empty_completions():
    texts = ["", "   ", r"\boxed{1}", r"\boxed{1}"]
    m = group_metrics([0.0, 0.0, 1.0, 1.0], texts, 4)
    assert m["completions/frac_empty"] == 0.5
    assert m["explore/distinct_1"] == 0.5  # two words, one distinct
    assert "explore/distinct_2" not in m  # no group holds a bigram
    # Empty hypotheses score 0; each box matches the other exactly (closest ref length 1): 1.
    assert m["explore/self_bleu"] == 0.5
    assert m["explore/frac_no_answer"] == 0.5
    assert group_metrics([], [], 4) == {}


def test_groups_of_one():
    m = group_metrics([1.0, 0.0, None], [r"\boxed{1}", "b", "c"], 1)
    assert m["explore/pass@1"] == 0.5  # the failed row is left out
    assert m["explore/frac_zero_std"] == 1.0
    assert "explore/self_bleu" not in m  # needs two completions in a group
    assert m["explore/distinct_answers"] == 1 / 3
    assert m["explore/answer_entropy"] == 0.0


def test_length_stats():
    m = length_stats([1, 3, 5, 7], 2, correct=[True, False, False, None])
    assert m["completions/length_std"] == pytest.approx(math.sqrt(5))  # deviations 3, 1, 1, 3
    assert m["completions/length_p50"] == 4.0
    assert m["completions/length_p90"] == pytest.approx(6.4)  # position 2.7: 5 + 0.7 * 2
    assert m["completions/group_length_std"] == 1.0  # [1, 3] and [5, 7]
    assert m["completions/mean_length_correct"] == 1.0
    assert m["completions/mean_length_incorrect"] == 4.0
    assert length_stats([], 2) == {}


# --- token entropy ---------------------------------------------------------------------------------


def test_entropy_percentiles_and_forking():
    m = entropy_metrics([0.0, 1.0, 2.0, 4.0, float("nan")])
    # Linear interpolation at position q/100 * (4 - 1): 0.3 -> 0.3, 1.5 -> 1.5, 2.7 -> 2 + 0.7 * 2.
    assert m["entropy/p10"] == pytest.approx(0.3)
    assert m["entropy/p50"] == pytest.approx(1.5)
    assert m["entropy/p90"] == pytest.approx(3.4)
    assert m["entropy/forking_frac"] == 3 / 4  # 1, 2, 4 exceed 0.672 nats
    assert (
        entropy_metrics([0.5, 0.7], config=MonitorConfig(forking_threshold=0.6))["entropy/forking_frac"]
        == 0.5
    )
    assert entropy_metrics([]) == {}


def test_entropy_by_token_class():
    tokens = ["3", " +", " the", "\\frac", "<|im_end|>", "12"]
    classes = [entropy_class(t) for t in tokens]
    assert classes == ["numeric", "numeric", "word", "format", "format", "numeric"]
    entropies = [0.1, 0.3, 2.0, 0.0, 1.0, 0.2]
    m = entropy_metrics(entropies, classes)
    assert m["entropy/numeric"] == pytest.approx(0.2)
    assert m["entropy/word"] == pytest.approx(2.0)
    assert m["entropy/format"] == pytest.approx(0.5)
    # Class indices (cheap to gather as a tensor) give the same numbers.
    as_ints = [("numeric", "word", "format").index(c) for c in classes]
    assert entropy_metrics(entropies, as_ints) == m
    assert "entropy/word" not in entropy_metrics([1.0], ["numeric"])
    # token_class's own names are accepted; a name that is no class is an error, not a silent drop.
    assert entropy_metrics([0.2, 0.4], ["digit", "operator"])["entropy/numeric"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unknown token class"):
        entropy_metrics([1.0], ["numbers"])
    with pytest.raises(ValueError, match="2 entropies but 1 token classes"):
        entropy_metrics([1.0, 2.0], ["word"])


# --- across processes ------------------------------------------------------------------------------


def test_a_group_split_between_processes_is_scored_as_one_group():
    # 3 groups of G=4 gathered from 2 processes of 6 rows, in process order (as TRL and the monitor
    # gather): group 1 is rows 4-5 of rank 0 and rows 0-1 of rank 1.
    rank0 = [(1.0, "1"), (0.0, "1"), (0.0, "2"), (0.0, "3"), (1.2, "4"), (1.2, "4")]
    rank1 = [(0.2, "4"), (0.0, "5"), (1.0, "6"), (1.0, "6"), (1.0, "6"), (1.0, "6")]

    def metrics(rows):
        return group_metrics([r for r, _ in rows], [rf"so \boxed{{{a}}}" for _, a in rows], 4)

    m = metrics(rank0 + rank1)
    # Groups [1, 0, 0, 0], [1.2, 1.2, 0.2, 0], [1, 1, 1, 1]: only the last has one reward.
    assert m["explore/frac_zero_std"] == pytest.approx(1 / 3)
    # Correct (reward >= 1): 1, 2 and 4 of 4.
    assert m["explore/pass@1"] == pytest.approx((1 / 4 + 2 / 4 + 4 / 4) / 3)
    assert m["explore/pass@4"] == 1.0
    # Answers {1, 2, 3}, {4, 5}, {6}.
    assert m["explore/distinct_answers"] == pytest.approx((3 + 2 + 1) / 3)
    # The numbers depend on the rows' order: gathered rank 1 first, the groups would be others.
    assert metrics(rank1 + rank0)["explore/frac_zero_std"] == 0.0
    with pytest.raises(ValueError, match="6 rows"):  # a rank alone cannot compute group statistics
        metrics(rank0)
    # Percentiles are of the gathered tokens: rank 0 holds [0, 0, 0, 0], rank 1 holds [10].
    # The median of all five is 0; the mean of the per-rank medians would be 5.
    assert entropy_metrics([0.0] * 4 + [10.0])["entropy/p50"] == 0.0


# --- probe -----------------------------------------------------------------------------------------


def test_probe_metrics_hand_computed():
    a = [
        Sample(r"\boxed{3}", 2, [1.0, 1.0]),
        Sample(r"\boxed{3}", 1, [1.0]),
        Sample(r"\boxed{4}", 0, []),
        Sample(r"\boxed{5}", 0, []),
    ]
    b = [Sample(r"\boxed{7}", 1, [0.0]), Sample(r"\boxed{8}", 1, [0.0])]
    b += [Sample(r"\boxed{8}", 1, [0.0]), Sample("I give up", 1, [0.0])]
    correct = [[True, True, False, False], [True, False, False, False]]
    config = MonitorConfig(probe_num_samples=4, probe_ks=(1, 2, 4), probe_maj_ks=(2, 4))
    m = probe_metrics([a, b], correct, config)
    assert m["probe/pass@1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    # pass@2: a = 1 - C(2,2)/C(4,2) = 5/6; b = 1 - C(3,2)/C(4,2) = 1/2.
    assert m["probe/pass@2"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert m["probe/pass@4"] == 1.0
    # maj@4: a votes 3 (right), b votes 8 (wrong).
    assert m["probe/maj@4"] == 0.5
    # maj@2: a = ([3,3] right, [4,5] tie of two wrongs) = 1/2; b = ([7,8] tie, half right, [8,-] wrong) = 1/4.
    assert m["probe/maj@2"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert m["probe/entropy"] == pytest.approx(3 / 7)  # 3 tokens of 1.0, 4 of 0.0
    assert m["probe/distinct_answers"] == 2.5  # {3, 4, 5} and {7, 8}


def test_probe_k_larger_than_samples_is_an_error():
    samples = [[Sample(r"\boxed{1}", 1, [0.0])] * 4]
    with pytest.raises(ValueError, match=r"probe_ks has k=8"):
        probe_metrics(samples, [[True] * 4])  # default probe_ks (1, 8) on 4 samples
    with pytest.raises(ValueError, match="same shape"):
        probe_metrics(samples, [[True] * 3])


# --- configuration ---------------------------------------------------------------------------------


def test_default_ks_are_powers_of_two_up_to_g():
    assert MonitorConfig().resolve_ks(8) == (1, 2, 4, 8)
    assert MonitorConfig().resolve_ks(6) == (1, 2, 4, 6)
    assert MonitorConfig().resolve_ks(1) == (1,)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ks": (0, 2)}, "ks"),
        ({"distinct_max_n": 0}, "distinct_max_n"),
        ({"self_bleu_max_words": 0}, "self_bleu_max_words"),
        ({"forking_threshold": -0.1}, "forking_threshold"),
        ({"entropy_percentiles": (50, 101)}, "entropy_percentiles"),
        ({"probe_num_samples": 4}, "probe_ks"),  # default probe_ks (1, 8) needs 8 samples
        ({"probe_maj_ks": (16,)}, "probe_maj_ks"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"MonitorConfig.{field} "):
        MonitorConfig(**kwargs)


def test_k_larger_than_the_group_is_an_error():
    config = MonitorConfig(ks=(1, 16))
    with pytest.raises(ValueError, match=r"MonitorConfig.ks has k=16, more than the group size"):
        group_metrics([1.0] * 8, ["x"] * 8, 8, config)
