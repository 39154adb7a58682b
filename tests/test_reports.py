"""The shared benchmarks file: each script rewrites only its own section, under the command that reruns it."""

import shlex

from cft_rl.reports import bench_command, write_section


def test_a_section_command_reruns_with_the_same_arguments():
    argv = ["--title", "steps ±10% (seed 0)", "--set", 'lr_schedule="constant"', "--pair", "a b", "c"]
    command = bench_command("scripts/bench_x.py", argv)
    assert shlex.split(command) == ["python", "scripts/bench_x.py", *argv]


def test_a_section_is_replaced_and_the_others_kept(tmp_path):
    path = tmp_path / "benchmarks.md"
    write_section("a", "first", "python a.py", path)
    write_section("b", "other", "python b.py", path)
    write_section("a", "second", "python a.py --again", path)
    text = path.read_text()
    assert "second" in text and "first" not in text and "other" in text
    assert text.count("<!-- bench:a:start -->") == 1
    assert "Command: `python a.py --again`" in text
    assert text.index("bench:a:start") < text.index("bench:b:start")  # rewritten in place
