"""No lost work: the shared output helpers, and progress reports that arrive while work is under way."""

from __future__ import annotations

import pytest

from cft_rl.outputs import settings_key, supersede, write_atomic, write_json


def test_write_atomic_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "dataset"

    def save(files):
        def write(tmp):
            tmp.mkdir()
            for name in files:
                (tmp / name).write_text(name)

        return write

    write_atomic(target, save(["a", "b"]))
    write_atomic(target, save(["c"]))
    assert sorted(p.name for p in target.iterdir()) == ["c"]  # the new folder, not a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]  # no temporary left behind

    def killed(tmp):
        tmp.mkdir()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, killed)
    assert sorted(p.name for p in target.iterdir()) == ["c"]  # a kill mid-write keeps the old one
    write_json(target / "x.json", {"ok": True})
    assert (target / "x.json").read_text() == '{\n  "ok": true\n}\n'


def test_supersede_keeps_everything_it_moves(tmp_path):
    key = settings_key({"max_new_tokens": 4})
    assert key == settings_key({"max_new_tokens": 4}) != settings_key({"max_new_tokens": 6})
    for round_ in range(2):  # the same name and key twice: the second gets a number, none is lost
        for name in ("toy-test.json", "toy-test.parquet"):
            (tmp_path / name).write_text(f"round {round_}")
        kept = supersede(
            tmp_path, [tmp_path / "toy-test.json", tmp_path / "toy-test.parquet"], "toy-test", key
        )
        assert (kept / "toy-test.json").read_text() == f"round {round_}"
    assert sorted(p.name for p in (tmp_path / ".superseded").iterdir()) == [
        f"toy-test.{key}",
        f"toy-test.{key}.1",
    ]
    (tmp_path / "sft" / "critical").mkdir(parents=True)
    folder = supersede(tmp_path, tmp_path / "sft" / "critical", "sft/critical", "abc")
    assert folder == tmp_path / ".superseded" / "sft__critical.abc" and folder.is_dir()


def test_annotate_many_reports_progress_per_batch_of_branches(toy_dir):
    """Progress arrives after every decoding step, long before the solutions are finished: with
    several solutions decoded together, each finishes only when its slowest branch does."""
    from cft_rl.annotate.engine import annotate_many
    from cft_rl.toy.build import load_toy

    model, tokenizer, data = load_toy(toy_dir)
    rows = sorted(data["test"], key=lambda r: len(r["solution"]))[:2]
    examples = [(f"row{i}", r["prompt"], r["solution"], r["answer"]) for i, r in enumerate(rows)]
    events: list[tuple] = []
    finished = {}
    for key, anns in annotate_many(
        model, tokenizer, examples, 2, 12, batch_size=4, on_progress=lambda *e: events.append(e)
    ):
        finished[key] = len(events)  # how many reports had arrived when this solution finished
        assert events[-1][0] == key and events[-1][1] == events[-1][2] == len(anns)  # all judged
    first = min(finished.values())
    assert first > 1, "progress came only with finished solutions"
    partial = [e for e in events[:first] if 0 < e[1] < e[2]]
    assert partial, "no report of a solution partly judged before the first one finished"
    for key in finished:  # per solution: judged counts only go up, to its number of positions
        judged = [j for k, j, _ in events if k == key]
        assert judged == sorted(judged)


@pytest.mark.parametrize("eager", [False, True])
def test_progress_counts_each_position_once(toy_dir, eager):
    from cft_rl.annotate.engine import annotate_many
    from cft_rl.toy.build import load_toy

    model, tokenizer, data = load_toy(toy_dir)
    row = sorted(data["test"], key=lambda r: len(r["solution"]))[0]
    last = {}
    examples = [("row", row["prompt"], row["solution"], row["answer"])]
    [(_, anns)] = annotate_many(
        model,
        tokenizer,
        examples,
        2,
        8,
        batch_size=3,
        eager_alternatives=eager,
        on_progress=lambda key, judged, positions: last.update(judged=judged, positions=positions),
    )
    assert last == {"judged": len(anns), "positions": len(anns)}
