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


@pytest.fixture
def arms(tmp_path):
    """Three labels x 4 seeds: ``full`` (the baseline), ``replica`` (the same process, other seeds: a
    negative control) and ``collapse`` (probe entropy planted 0.3 nats lower: a positive control)."""
    rng = np.random.default_rng(0)
    dirs = []
    for label, shift in (("full", 0.0), ("replica", 0.0), ("collapse", -0.3)):
        for seed in range(4):
            entropy = 1.0 + shift + rng.normal(0, 0.02, 3)
            dirs.append(
                write_run(
                    tmp_path / f"{label}-seed{seed}",
                    history([10, 20, 30], **{"probe/entropy": entropy.tolist(), "reward": [0.2, 0.3, 0.4]}),
                )
            )
    return [str(d) for d in dirs]


def test_a_planted_collapse_is_significant_and_a_replica_is_not(arms, tmp_path):
    from cft_rl.compare.report import verdicts, write_report

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
