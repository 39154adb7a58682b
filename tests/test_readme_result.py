"""scripts/readme_result.py: the README's experiment block comes from a summary.json, and only that
block is rewritten."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def script(load_script):
    return load_script("readme_result")


def _effect(arm, metric, diff, low, high, significant, measure="final"):
    effect = dict(arm=arm, metric=metric, measure=measure, diff=diff, low=low, high=high)
    return {**effect, "significant": significant, "seeds": 5, "baseline_seeds": 5}


SUMMARY = {
    "baseline": "full",
    "interval": "t",
    "confidence": 0.95,
    "effects": [
        _effect("critical", "probe/entropy", 0.0351, 0.0312, 0.0394, True),
        _effect("critical", "probe/entropy", 9.0, 8.0, 10.0, True, measure="auc"),  # not in the table
        _effect("critical", "probe/pass@1", -0.0124, -0.0531, 0.0282, False),
        _effect("collapse", "probe/entropy", -0.108, -0.114, -0.102, True),
    ],
    "controls": {"collapse": {"line": "**PASS** collapse (positive control: must differ from full): ..."}},
    "learning_lines": {
        "full": "GRPO from full: probe/pass@1 rose +0.040 (SE 0.010, 4.0 SE) over the lr-0 control"
    },
}


def test_the_table_holds_each_arms_final_differences(script):
    table = script.verdict_table(SUMMARY)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert list(rows) == ["collapse", "critical"]
    assert "+0.035 [+0.031, +0.039] *" in rows["critical"]
    assert "-0.012 [-0.053, +0.028] |" in rows["critical"]  # not significant: no star
    assert "+9.000" not in table  # the AUC row is left out
    assert rows["collapse"].count("n/a") == 4  # metrics the summary lacks for this arm


def test_only_the_marked_block_is_rewritten(script, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\nbefore\n{script.START}\nold result\n{script.END}\nafter, by hand\n")
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps(SUMMARY))
    assert script.main(["--summary", str(summary), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\nbefore\n") and text.endswith("after, by hand\n")
    assert "old result" not in text
    assert "5 GRPO seeds per arm" in text and "**PASS** collapse" in text and "4.0 SE" in text


def test_a_readme_without_the_markers_is_an_error_not_an_append(script, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    with pytest.raises(SystemExit, match="no <!-- experiment-result -->"):
        script.write(readme, "body")
    assert readme.read_text() == "# Title\n"
