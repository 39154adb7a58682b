"""`cft-rl compare` on synthetic TRL log histories, with hand-computed expected values."""

import base64
import json
import re

import numpy as np
import pytest

from cft_rl.compare.analysis import (
    CompareConfig,
    build_report,
    default_label,
    find_trainer_state,
    load_runs,
    select_metrics,
)
from cft_rl.compare.curves import aggregate, curve_stats, entropy_collapse, fit_entropy_reward


def write_run(folder, entries, checkpoint=None, global_step=None):
    """A TRL-shaped trainer_state.json, in ``folder`` or in ``folder/checkpoint-N``."""
    target = folder / f"checkpoint-{checkpoint}" if checkpoint is not None else folder
    target.mkdir(parents=True, exist_ok=True)
    step = global_step if global_step is not None else max(e["step"] for e in entries)
    state = {"global_step": step, "logging_steps": 10, "log_history": entries}
    (target / "trainer_state.json").write_text(json.dumps(state))
    return folder


def history(steps, **metrics):
    return [
        {"step": s, "epoch": s / 100, **{k: v[i] for k, v in metrics.items()}} for i, s in enumerate(steps)
    ]


@pytest.fixture
def runs(tmp_path):
    """Two labels x two seeds. cft-seed0 logs every 5 steps, cft-seed1 lacks the probe metric."""
    probe = [{"step": s, "probe/pass@4": p} for s, p in ((0, 0.2), (20, 0.3), (40, 0.4))]
    steps = [10, 20, 30, 40]
    dirs = [
        write_run(
            tmp_path / "sft-seed0",
            history(steps, reward=[0.2, 0.4, 0.5, 0.6], entropy=[1.0, 0.8, 0.6, 0.4]) + probe,
        ),
        write_run(
            tmp_path / "sft-seed1",
            history(steps, reward=[0.3, 0.5, 0.6, 0.7], entropy=[1.0, 0.9, 0.8, 0.7]) + probe,
        ),
        write_run(
            tmp_path / "cft-seed0",
            history(range(5, 45, 5), reward=[s / 100 for s in range(5, 45, 5)], entropy=[1.2] * 8) + probe,
        ),
        # A plain TRL run: the final train-summary entry repeats the last step without metrics.
        write_run(
            tmp_path / "cft-seed1",
            history(steps, reward=[s / 100 + 0.1 for s in steps], entropy=[1.2, 1.1, 1.0, 1.0])
            + [{"step": 40, "train_loss": 0.1, "train_runtime": 3.0}],
        ),
    ]
    return [str(d) for d in dirs]


def test_trainer_state_from_the_latest_checkpoint(tmp_path):
    run = tmp_path / "run"
    write_run(run, history([5], reward=[0.1]), checkpoint=5)
    write_run(run, history([5, 10], reward=[0.1, 0.2]), checkpoint=10)
    write_run(run, history([5, 10, 15], reward=[0.1, 0.2, 0.3]), checkpoint=15, global_step=15)
    assert find_trainer_state(run) == run / "checkpoint-15" / "trainer_state.json"
    write_run(run, history([5, 10, 15, 20], reward=[0.1, 0.2, 0.3, 0.4]))  # save_state at the end
    assert find_trainer_state(run) == run / "trainer_state.json"


def test_bad_run_dirs_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_trainer_state(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no trainer_state.json.*checkpoint-"):
        find_trainer_state(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "trainer_state.json").write_text('{"global_step": 3}')
    with pytest.raises(ValueError, match="no log_history"):
        load_runs([tmp_path / "odd"])
    with pytest.raises(ValueError, match="2 labels for 1 run dirs"):
        load_runs([tmp_path / "odd"], ["a", "b"])


def test_default_label_drops_the_seed(tmp_path):
    assert default_label(tmp_path / "cft-seed1") == "cft"
    assert default_label(tmp_path / "init=cft_seed_12") == "init=cft"
    assert default_label(tmp_path / "init=sft" / "seed=0") == "init=sft"
    assert default_label(tmp_path / "plain") == "plain"


def test_metric_selection_globs_and_unknown_names(runs):
    loaded = load_runs(runs)
    assert select_metrics(loaded, None) == ["entropy", "reward", "probe/pass@4"]
    assert select_metrics(loaded, ["rew*", "entropy"]) == ["reward", "entropy"]
    with pytest.raises(ValueError, match="no run logs a metric matching 'explore/pass@8'.*reward"):
        select_metrics(loaded, ["explore/pass@8"])


def test_aggregate_aligns_different_logging_steps():
    every_10 = (np.array([0.0, 10, 20]), np.array([0.0, 1, 2]))
    every_5 = (np.array([0.0, 5, 10, 15, 20]), np.array([2.0, 2, 2, 2, 2]))
    stopped = (np.array([0.0, 10]), np.array([4.0, 4]))
    curve = aggregate("x", [every_10, every_5, stopped])
    assert curve.steps.tolist() == [0, 5, 10, 15, 20]
    assert curve.mean.tolist() == pytest.approx([2.0, (0.5 + 2 + 4) / 3, 7 / 3, (1.5 + 2) / 2, 2.0])
    assert curve.low.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]  # interpolated 0.5 at step 5
    assert curve.high.tolist() == [4.0, 4.0, 4.0, 2.0, 2.0]  # "stopped" leaves after step 10
    ci = aggregate("x", [(np.array([0.0]), np.array([1.0])), (np.array([0.0]), np.array([3.0]))], "ci")
    # mean 2, sample std sqrt(2), standard error 1, t(df=1) = 12.706
    assert (ci.low[0], ci.high[0]) == pytest.approx((2 - 12.706, 2 + 12.706))


def test_curve_stats_entropy_collapse_and_fit_by_hand():
    stats = curve_stats(np.array([0.0, 10, 20]), np.array([1.0, 3, 2]))
    assert stats == pytest.approx({"final": 2.0, "peak": 3.0, "auc": (20 + 25) / 20})
    steps, ent = np.array([0.0, 10, 20, 30]), np.array([1.0, 0.8, 0.45, 0.3])
    assert entropy_collapse(steps, ent, 0.5) == 20
    assert entropy_collapse(steps, ent, 0.2) is None
    h = np.array([0.2, 0.5, 0.9, 1.3])
    fit = fit_entropy_reward(h, -2 * np.exp(h) + 5)
    assert fit == pytest.approx(
        {"a": 2.0, "b": 5.0, "ceiling": 3.0, "r2": 1.0, "points": 4, "degenerate": None}
    )
    none = {"a": None, "b": None, "ceiling": None, "r2": None}
    assert fit_entropy_reward([0.5, 0.5, 0.5], [1, 2, 3]) == {
        **none,
        "points": 3,
        "degenerate": "entropy constant",
    }
    # A constant reward is "fitted" exactly, but R² is 0 / 0 there: no fit, not R² = 1.
    assert fit_entropy_reward(h, [0.5] * 4) == {**none, "points": 4, "degenerate": "reward constant"}
    assert fit_entropy_reward(h[:2], [0, 1])["degenerate"] == "too few points (2, need 3)"


def _row(markdown, metric, label):
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:2] == [metric, label]:
            return cells[2:]
    raise AssertionError(f"no row for {metric}/{label}")


def test_compare_cli_writes_figures_and_a_correct_table(runs, tmp_path, capsys):
    from cft_rl.cli import main

    out = tmp_path / "report"
    assert main(["compare", *runs, "--out", str(out), "--fit"]) == 0
    for name in ("overview", "entropy", "reward", "probe_pass_4"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 5000
    markdown = (out / "report.md").read_text()
    # reward, sft: finals 0.6 / 0.7, AUC (0.3+0.45+0.55)*10/30 and (0.4+0.55+0.65)*10/30.
    assert _row(markdown, "reward", "sft") == ["2", "0.65", "0.65", f"{(13 / 30 + 16 / 30) / 2:.4g}"]
    # cft: seed 0 is 0.05..0.40 every 5 steps (AUC: mean of a line), seed 1 is 0.2..0.5.
    assert _row(markdown, "reward", "cft") == ["2", "0.45", "0.45", f"{(0.225 + 0.35) / 2:.4g}"]
    assert _row(markdown, "probe/pass@4", "cft") == ["1", "0.4", "0.4", "0.3"]  # only seed 0 has it
    assert "`probe/pass@4` is missing in" in markdown and "cft-seed1" in markdown
    assert "**yes**, step 40" in markdown  # sft-seed0: 0.4 < 0.5 x 1.0
    assert markdown.count("| no |") == 3
    html = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "http" not in html  # self-contained: nothing to fetch
    assert f"wrote {out}/report.html" in capsys.readouterr().out


def test_fit_reports_the_implied_reward_ceiling(tmp_path):
    h = np.array([1.0, 0.8, 0.6, 0.4])
    run = write_run(
        tmp_path / "exact",
        history([10, 20, 30, 40], entropy=h.tolist(), reward=(1.5 - 0.5 * np.exp(h)).tolist()),
    )
    report = build_report(CompareConfig(runs=[str(run)], fit=True, out=str(tmp_path / "o")))
    expected = {"a": 0.5, "b": 1.5, "ceiling": 1.0, "r2": 1.0, "points": 4, "degenerate": None}
    assert report.fits["exact"] == pytest.approx(expected)
    flat = write_run(tmp_path / "flat", history([10, 20], entropy=[1.0, 1.0], reward=[0.1, 0.2]))
    report = build_report(CompareConfig(runs=[str(flat)], fit=True, out=str(tmp_path / "o")))
    assert report.fits["flat"]["degenerate"].startswith("too few points")
    assert any("degenerate" in n and "no fit" in n for n in report.notes)


def test_fit_on_a_constant_reward_is_reported_degenerate_not_r2_one(tmp_path):
    from cft_rl.cli import main

    steps = [10, 20, 30, 40]
    run = write_run(tmp_path / "const", history(steps, entropy=[1.0, 0.8, 0.6, 0.4], reward=[0.25] * 4))
    out = tmp_path / "report"
    assert main(["compare", str(run), "--out", str(out), "--fit", "--metrics", "reward"]) == 0
    markdown = (out / "report.md").read_text()
    fit_section = markdown.split("## Fit")[1]
    fit_row = next(line for line in fit_section.splitlines() if line.startswith("| const |"))
    assert "degenerate: reward constant" in fit_row and "| 1 |" not in fit_row
    assert "const: degenerate: reward constant over the 4 steps" in markdown
    fits = json.loads((out / "report.json").read_text())["fits"]
    assert fits["const"]["r2"] is None and fits["const"]["degenerate"] == "reward constant"


def test_compare_rejects_an_unknown_metric_on_the_command_line(runs, tmp_path, capsys):
    from cft_rl.cli import main

    assert main(["compare", *runs, "--metrics", "entropy/bogus", "--out", str(tmp_path / "o")]) == 2
    assert "no run logs a metric matching 'entropy/bogus'" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_html_report_loads_in_headless_chromium(runs, tmp_path):
    """Needs `pip install playwright` and `playwright install chromium` (a download: internet), or any
    Chromium binary named by ``$CFT_RL_CHROMIUM`` (e.g. the one in npm's ``@sparticuz/chromium``)."""
    import os

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from cft_rl.compare.run import main

    out = tmp_path / "report"
    assert main([*runs, "--out", str(out)]) == 0
    errors = []
    with sync_api.sync_playwright() as pw:
        try:
            binary = os.environ.get("CFT_RL_CHROMIUM")
            options = {"executable_path": binary, "args": ["--no-sandbox", "--disable-gpu"]} if binary else {}
            browser = pw.chromium.launch(**options)
        except Exception as exc:  # no browser binary: installing it needs the internet
            pytest.skip(
                f"headless Chromium unavailable ({type(exc).__name__}); run `playwright install chromium`"
            )
        page = browser.new_page()
        page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto((out / "report.html").as_uri())
        page.wait_for_load_state("load")
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(out / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert (out / "report.png").stat().st_size > 10000


# --- effects against the baseline: a planted collapse is seen, a replica is not --------------------


def planted_probe(rng, collapsed: bool) -> list[dict]:
    """Probe entries at steps 0-30: the warm start's step-0 probe (the same for every seed and arm, as the
    probe's fixed seed makes it), then pass@1 rising 0.02 a step-10; a collapsed arm has one distinct
    answer fewer per prompt and an exploration gap pass@4 - pass@1 of 0.1 instead of 0.3."""
    entries = [{"step": 0, "probe/entropy": 1.0, "probe/pass@1": 0.2, "probe/pass@4": 0.5}]
    entries[0]["probe/distinct_answers"] = 3.0
    for i, step in enumerate((10, 20, 30), start=1):
        pass1 = 0.2 + 0.02 * i + rng.normal(0, 0.005)
        gap = (0.1 if collapsed else 0.3) + rng.normal(0, 0.01)
        distinct = (2.0 if collapsed else 3.0) + rng.normal(0, 0.05)
        entries.append({"step": step, "probe/pass@1": pass1, "probe/pass@4": pass1 + gap})
        entries[-1]["probe/distinct_answers"] = distinct
    return entries


@pytest.fixture
def arms(tmp_path):
    """Three labels x 4 seeds: ``full`` (the baseline), ``replica`` (the same process, other seeds: a
    negative control) and ``collapse`` (probe entropy planted 0.3 nats lower, and fewer distinct answers
    and a narrower exploration gap: a positive control)."""
    rng, probe_rng = np.random.default_rng(0), np.random.default_rng(1)
    dirs = []
    for label, shift in (("full", 0.0), ("replica", 0.0), ("collapse", -0.3)):
        for seed in range(4):
            entropy = 1.0 + shift + rng.normal(0, 0.02, 3)
            dirs.append(
                write_run(
                    tmp_path / f"{label}-seed{seed}",
                    history([10, 20, 30], **{"probe/entropy": entropy.tolist(), "reward": [0.2, 0.3, 0.4]})
                    + planted_probe(probe_rng, collapsed=label == "collapse"),
                )
            )
    return [str(d) for d in dirs]


def test_a_planted_collapse_is_significant_and_a_replica_is_not(arms, tmp_path):
    from cft_rl.compare.report import write_report
    from cft_rl.compare.summary import verdicts

    config = CompareConfig(runs=arms, out=str(tmp_path / "report"), metrics=["probe/entropy", "reward"])
    report = build_report(config)
    assert report.baseline == "full"  # the default baseline, by name
    effect = {(r["arm"], r["metric"], r["measure"]): r for r in report.effects}
    collapse = effect["collapse", "probe/entropy", "final"]
    assert (
        collapse["significant"] and collapse["high"] < 0 and collapse["diff"] == pytest.approx(-0.3, abs=0.05)
    )
    assert not effect["replica", "probe/entropy", "final"]["significant"]
    assert not effect["replica", "probe/entropy", "auc"]["significant"]
    assert effect["collapse", "reward", "final"]["note"] == "no spread across seeds in either arm"
    lines = verdicts(report)
    assert lines["collapse"].startswith("collapse vs full: probe/entropy -0.") and " *" in lines["collapse"]
    assert "*" not in lines["replica"].split("reward")[0]  # probe entropy: no star for the replica
    out = write_report(report, config)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"] == "full" and summary["verdicts"] == lines
    assert len(summary["effects"]) == 2 * 2 * 2  # 2 arms x 2 metrics x (final, AUC)
    markdown = (out / "report.md").read_text()
    assert markdown.index("## Verdict") < markdown.index("## Final, peak")
    html = (out / "report.html").read_text()
    assert html.index("Verdict") < html.index("<h2>Curves</h2>")  # the headline comes first


def test_an_unknown_baseline_is_named_and_without_one_there_is_no_verdict(arms, tmp_path):
    with pytest.raises(ValueError, match="baseline 'sft' is not a label of these runs"):
        build_report(CompareConfig(runs=arms, baseline="sft", out=str(tmp_path / "o")))
    no_full = [r for r in arms if "full-" not in r]
    report = build_report(CompareConfig(runs=no_full, out=str(tmp_path / "o")))
    assert report.effects == [] and any("no baseline label" in n for n in report.notes)
    chosen = build_report(CompareConfig(runs=no_full, baseline="replica", out=str(tmp_path / "o")))
    assert {r["arm"] for r in chosen.effects} == {"collapse"}


def test_smoothing_changes_the_plotted_curve_not_the_statistics(arms, tmp_path):
    raw = build_report(CompareConfig(runs=arms, out=str(tmp_path / "o"), metrics=["probe/entropy"]))
    smooth = build_report(
        CompareConfig(runs=arms, out=str(tmp_path / "o"), metrics=["probe/entropy"], smooth=0.9)
    )
    assert smooth.stats == raw.stats and smooth.effects == raw.effects
    a, b = raw.curves["probe/entropy"][0], smooth.curves["probe/entropy"][0]
    assert a.mean[0] == pytest.approx(b.mean[0]) and not np.allclose(a.mean[1:], b.mean[1:])


# --- the report answers: power, controls, the exploration gap, GRPO over its lr-0 control -------------


def test_the_minimum_detectable_difference_is_reported_per_arm(tmp_path):
    from cft_rl.compare.report import write_report

    dirs = []
    for label, finals in (("full", [4, 5, 6]), ("grpo", [1, 2, 3])):
        for seed, final in enumerate(finals):
            dirs.append(
                str(write_run(tmp_path / f"{label}-seed{seed}", history([10, 20], reward=[0, final])))
            )
    config = CompareConfig(runs=dirs, out=str(tmp_path / "report"), metrics=["reward"])
    report = build_report(config)
    # sd 1 and 1 over 3 seeds each: (t(0.975, 4) + t(0.80, 4)) * sqrt(2/3) = (2.7764 + 0.9410) * 0.8165
    final = next(r for r in report.effects if r["measure"] == "final")
    assert final["mde"] == pytest.approx(3.0353, abs=1e-3)
    out = write_report(report, config)
    sentence = "grpo vs full: with 3 seeds per arm, this run could detect a difference of 3.04 in reward at 80% power"
    assert sentence in (out / "report.md").read_text() and sentence in (out / "report.html").read_text()
    power = json.loads((out / "summary.json").read_text())["power"]
    assert power["mde"]["grpo"]["reward"] == pytest.approx(3.0353, abs=1e-3) and power["power"] == 0.8


def test_the_exploration_gap_is_derived_from_the_probe_pass_at_k(arms, tmp_path):
    from cft_rl.compare.analysis import exploration_gap

    assert exploration_gap({"probe/pass@1", "probe/pass@2", "probe/pass@16"}) == "probe/pass@16-pass@1"
    assert exploration_gap({"probe/pass@1"}) is None and exploration_gap({"probe/pass@8"}) is None
    run = load_runs([arms[0]])[0]
    steps, gap = run.series("probe/pass@4-pass@1")
    _, k = run.series("probe/pass@4")
    _, one = run.series("probe/pass@1")
    assert steps.tolist() == [0, 10, 20, 30] and gap == pytest.approx(k - one)
    assert gap[0] == pytest.approx(0.3)
    report = build_report(CompareConfig(runs=arms, out=str(tmp_path / "o")))  # the default metrics
    assert "probe/pass@4-pass@1" in report.metrics
    effect = {(r["arm"], r["metric"], r["measure"]): r for r in report.effects}
    planted = effect["collapse", "probe/pass@4-pass@1", "final"]
    assert planted["significant"] and planted["diff"] == pytest.approx(-0.2, abs=0.03)
    assert not effect["replica", "probe/pass@4-pass@1", "final"]["significant"]


def test_controls_pass_on_the_planted_collapse_and_the_replica_and_fail_swapped(arms, tmp_path):
    from cft_rl.compare.report import write_report

    controls = {"collapse": "differs", "replica": "same"}
    config = CompareConfig(runs=arms, out=str(tmp_path / "report"), metrics=["reward"], controls=controls)
    report = build_report(config)  # the control metrics need not be among the report's
    judged = {c["arm"]: c for c in report.controls}
    assert {arm: c["status"] for arm, c in judged.items()} == {"collapse": "PASS", "replica": "PASS"}
    assert list(judged["collapse"]["metrics"]) == [
        "probe/entropy",
        "probe/distinct_answers",
        "probe/pass@4-pass@1",
    ]
    assert all(m["significant"] for m in judged["collapse"]["metrics"].values())
    out = write_report(report, config)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["controls"]["collapse"]["status"] == "PASS" and summary["controls"]["replica"]["why"] == []
    markdown = (out / "report.md").read_text()
    assert markdown.index("## Verdict") < markdown.index("## Controls") < markdown.index("## Final, peak")
    line = "- **PASS** collapse (positive control: must differ from full; 95% intervals): probe/entropy -0.3"
    assert line in markdown
    assert (
        "- **PASS** replica (negative control: must match full; 98.3% intervals: a family-wise 5% over 3"
        in markdown
    )
    page = (out / "report.html").read_text()
    assert page.index("Verdict") < page.index("<h2>Controls") < page.index("<h2>Curves</h2>")
    assert "<strong>PASS</strong> replica" in page

    swapped = build_report(
        CompareConfig(runs=arms, out=str(tmp_path / "o"), controls={"collapse": "same", "replica": "differs"})
    )
    judged = {c["arm"]: c for c in swapped.controls}
    assert {arm: c["status"] for arm, c in judged.items()} == {"collapse": "FAIL", "replica": "FAIL"}
    assert judged["collapse"]["why"] == [
        "separates on probe/entropy, probe/distinct_answers, probe/pass@4-pass@1"
    ]
    assert judged["replica"]["why"][0].startswith("does not separate on probe/entropy")


def test_a_positive_control_must_separate_on_every_metric_and_a_missing_one_fails():
    from cft_rl.compare.controls import judge_control

    def row(diff, low, high):
        return {
            "diff": diff,
            "low": low,
            "high": high,
            "method": "t",
            "note": None,
            "significant": low > 0 or high < 0,
        }

    rows = {"probe/entropy": row(-0.3, -0.4, -0.2), "probe/distinct_answers": row(-0.1, -0.3, 0.1)}
    partial = judge_control("collapse", "differs", "full", rows)
    assert partial["status"] == "FAIL" and partial["why"] == ["does not separate on probe/distinct_answers"]
    assert judge_control("replica", "same", "full", rows)["why"] == ["separates on probe/entropy"]
    both = judge_control(
        "collapse", "differs", "full", {**rows, "probe/distinct_answers": row(-1, -1.2, -0.8)}
    )
    assert both["status"] == "PASS"
    missing = judge_control(
        "replica", "same", "full", {"probe/entropy": row(0, -0.1, 0.1), "probe/pass@*-pass@1": None}
    )
    assert missing["status"] == "FAIL" and missing["why"] == ["not logged: probe/pass@*-pass@1"]
    undefined = {"probe/entropy": {**row(0, -1, 1), "low": None, "high": None, "significant": False}}
    assert judge_control("replica", "same", "full", undefined)["why"] == ["no interval: probe/entropy"]


def test_a_negative_control_is_judged_at_a_family_wise_five_percent(tmp_path):
    # Three independent metrics at 95% each would fail an identical arm in 1 - 0.95^3 = 14% of runs;
    # the negative control is judged at 1 - 0.05/3 each (Bonferroni), the positive one at 95% (it must
    # separate on every metric, an intersection-union test, which needs no correction).
    from cft_rl.compare.controls import control_confidence

    assert control_confidence("same", 3) == pytest.approx(1 - 0.05 / 3)
    assert control_confidence("same", 1) == pytest.approx(0.95)
    assert control_confidence("differs", 3) == pytest.approx(0.95)

    # Five seeds per arm, spread [0, .01, -.01, .02, -.02] in both: SE of the difference 0.01 and
    # Welch df 8, so the half-widths are t(0.975, 8) * 0.01 = 0.0231 and t(1 - 0.05/6, 8) * 0.01 = 0.0302.
    spread = [0.0, 0.01, -0.01, 0.02, -0.02]

    def judged(shift):
        dirs = []
        for label, d in (("full", 0.0), ("replica", shift)):
            for seed, e in enumerate(spread):
                final = {
                    "probe/entropy": 1.0 + e + d,
                    "probe/distinct_answers": 3 + e,
                    "probe/pass@1": 0.4 + e,
                }
                entries = [{"step": 0, **final, "probe/entropy": 1.0}, {"step": 10, **final}]
                entries[1]["probe/pass@4"] = entries[0]["probe/pass@4"] = 0.6 + e
                dirs.append(str(write_run(tmp_path / f"{shift}" / f"{label}-seed{seed}", entries)))
        config = CompareConfig(
            runs=dirs, out=str(tmp_path / "o"), metrics=["probe/pass@1"], controls={"replica": "same"}
        )
        (control,) = build_report(config).controls
        return control

    inside = judged(0.026)  # outside the 95% interval, inside the 98.3% one
    row = inside["metrics"]["probe/entropy"]
    assert inside["status"] == "PASS" and inside["confidence"] == pytest.approx(1 - 0.05 / 3)
    assert (row["low"], row["high"]) == pytest.approx((0.026 - 0.0302, 0.026 + 0.0302), abs=3e-4)
    outside = judged(0.035)  # beyond both
    assert outside["status"] == "FAIL" and outside["why"] == ["separates on probe/entropy"]


def test_bad_controls_are_named_with_the_valid_values(arms, tmp_path):
    with pytest.raises(
        ValueError, match=r"arm 'collapse' expects 'differ'; valid expectations are differs, same"
    ):
        CompareConfig(runs=arms, controls={"collapse": "differ"})
    with pytest.raises(ValueError, match="controls must map arm labels"):
        CompareConfig(runs=arms, controls="collapse=differs")
    out = str(tmp_path / "o")
    with pytest.raises(ValueError, match=r"arm 'colapse' is not a label of these runs"):
        build_report(CompareConfig(runs=arms, out=out, controls={"colapse": "differs"}))
    with pytest.raises(ValueError, match=r"arm 'full' is the baseline"):
        build_report(CompareConfig(runs=arms, out=out, controls={"full": "same"}))
    no_full = [r for r in arms if "full-" not in r]
    with pytest.raises(ValueError, match="set baseline"):
        build_report(CompareConfig(runs=no_full, out=out, controls={"collapse": "differs"}))


def test_controls_flag_takes_a_yaml_mapping(arms, monkeypatch):
    from cft_rl.compare import run as compare_run

    seen = []
    monkeypatch.setattr(compare_run, "build_report", lambda config: seen.append(config) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        compare_run.main([*arms, "--controls", "{collapse: differs, replica: same}"])
    assert seen[0].controls == {"collapse": "differs", "replica": "same"}


def test_rl_learning_is_each_seeds_rise_over_its_step_0_probe_by_hand():
    from types import SimpleNamespace

    from cft_rl.compare.curves import rl_learning
    from cft_rl.compare.summary import learning_lines

    def arr(*values):
        return np.array(values, float)

    grpo = aggregate("full", [(arr(0, 10), arr(0.2, 0.25)), (arr(0, 10), arr(0.3, 0.37))])
    late = aggregate(
        "late",
        [
            (arr(10, 20), arr(0.1, 0.2)),
            (
                arr(
                    0,
                ),
                arr(
                    0.5,
                ),
            ),
        ],
    )  # no step 0; one point
    curves = {"probe/pass@1": [grpo, late], "probe/seconds": [grpo], "reward": [grpo]}
    notes = []
    learning = rl_learning(curves, notes)
    assert set(learning) == {"full", "late"} and set(learning["full"]) == {"probe/pass@1"}
    # rises 0.05 and 0.07: mean 0.06, sd 0.01414, SE 0.01, z 6; t(0.975, 1) = 12.7062
    rise = learning["full"]["probe/pass@1"]
    assert rise["mean"] == pytest.approx(0.06) and rise["se"] == pytest.approx(0.01) and rise["n"] == 2
    assert (rise["low"], rise["high"]) == pytest.approx((0.06 - 0.127062, 0.06 + 0.127062), abs=1e-5)
    assert rise["z"] == pytest.approx(6.0) and rise["from_steps"] == [0.0]
    assert learning["late"]["probe/pass@1"]["n"] == 1 and learning["late"]["probe/pass@1"]["from_steps"] == [
        10.0
    ]
    assert notes == [
        "late: `probe/pass@1` has no step-0 probe in 1 of 1 seeds: the rise over the lr-0 control is "
        "measured from step 10"
    ]
    line = learning_lines(SimpleNamespace(learning=learning))["full"]
    assert line == "GRPO from full: probe/pass@1 rose +0.060 (SE 0.010, 6.0 SE) over the lr-0 control"


def test_rl_learning_in_the_report_and_summary(arms, tmp_path):
    from cft_rl.compare.report import write_report

    config = CompareConfig(runs=arms, out=str(tmp_path / "report"))
    report = build_report(config)
    full = report.learning["full"]
    assert full["probe/pass@1"]["mean"] == pytest.approx(0.06, abs=0.01) and full["probe/pass@1"]["z"] > 3
    assert report.learning["collapse"]["probe/entropy"]["mean"] == pytest.approx(-0.3, abs=0.03)
    assert "reward" not in full and "probe/pass@4-pass@1" in full
    out = write_report(report, config)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["learning"]["full"]["probe/pass@1"]) >= {"mean", "se", "low", "high", "n", "z"}
    assert summary["learning"]["full"]["probe/pass@1"]["n"] == 4
    markdown = (out / "report.md").read_text()
    assert "- GRPO from full: probe/pass@1 rose +0.0" in markdown and "over the lr-0 control" in markdown
    assert markdown.index("## Verdict") < markdown.index("## Controls") < markdown.index("## RL learning")
    assert "No controls named" in markdown
    assert "<h2>RL learning" in (out / "report.html").read_text()
