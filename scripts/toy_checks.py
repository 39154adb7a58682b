"""The base model's table and issue 17's acceptance checks, from the measurements of
``scripts/bench_toy.py`` (kept apart so that the measuring script reads top to bottom, and the checks can
be tested on hand-made measurements without building a model).
"""

from __future__ import annotations

from bench_toy_curve import curve_table
from bench_toy_steps import table as paired_table

from cft_rl.reports import markdown_table

CLASSES = ("digit", "operator", "format", "word")
OUTSIDE_BOX = "format outside the box"
# Issue 17's acceptance bounds.
TRAIN_ACC_RANGE, MAX_SPREAD, MIN_PASS_GAIN, MIN_DISTINCT = (0.40, 0.75), 0.10, 0.15, 6.0
MAX_CRITICAL, MAX_CRITICAL_WORD_FORMAT, MAX_STEPS_SHIFT = 0.20, 0.05, 0.05
MIN_CRITICAL_DECIDING = 0.5  # "mostly critical"


COLUMN_KINDS = ["pct"] * 6 + ["num"] * 3 + ["int"] + ["pct"] * (2 + len(CLASSES))


def column_values(r: dict, k: int) -> list:
    """The measured numbers of one build, in table column order (kinds: :data:`COLUMN_KINDS`)."""
    difficulty = r.get("train_difficulty") or {}  # measurements cached before it was measured lack it
    head = [r["train_greedy"], difficulty.get("easy"), difficulty.get("hard"), r["test_greedy"]]
    head += [r["pass@1"], r[f"pass@{k}"], r["distinct_completions"]]
    return (
        head
        + [r["distinct_answers"], r["entropy"], r["annotated"], r["critical"]["overall"]]
        + [r["critical"].get(c) for c in (*CLASSES, OUTSIDE_BOX)]
    )


def _value(v, kind: str) -> str:
    if v is None:
        return "–"
    if kind == "int":  # a count, or the mean of counts
        return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"
    return f"{v:.1%}" if kind == "pct" else f"{v:.2f}"


def _difference(v, kind: str, signed: bool) -> str:
    """A spread or a change: fractions in percentage points."""
    if v is None:
        return "–"
    sign = "+" if signed else ""
    if kind == "pct":
        return f"{100 * v:{sign}.1f} pt"
    return f"{v:{sign}.1f}" if kind == "int" else f"{v:{sign}.2f}"


def _differences(values: list, signed: bool) -> list[str]:
    return [_difference(v, kind, signed) for v, kind in zip(values, COLUMN_KINDS, strict=True)]


def _defined(values) -> list:
    return [v for v in values if v is not None]


def _column_means(rows: list[list]) -> list:
    """Each column's mean over the rows, leaving out the unmeasured (None where none was measured)."""
    by_column = [_defined(column) for column in zip(*rows, strict=True)]
    return [sum(d) / len(d) if d else None for d in by_column]


def table(results: list[dict], k: int) -> str:
    """A row per seed build, then the mean and spread over them (the steps builds have their own table)."""
    header = ["build", "seed", "steps", "greedy (train)", "train: easy", "train: hard", "greedy (test)"]
    header += ["pass@1", f"pass@{k}"]
    header += [f"distinct/{k}", f"distinct answers/{k}", "entropy (nats)", "annotated solutions"]
    header += ["critical", *(f"critical: {c}" for c in (*CLASSES, OUTSIDE_BOX))]
    pairs = [(r, column_values(r, k)) for r in results if r["scale"] is None]
    rows = [[r["name"], r["seed"], r["steps"], *map(_value, v, COLUMN_KINDS)] for r, v in pairs]
    seeds = [v for _, v in pairs]
    by_column = [_defined(column) for column in zip(*seeds, strict=True)]
    spreads = [max(d) - min(d) if d else None for d in by_column]
    rows.append(["**mean over seeds**", "", "", *map(_value, _column_means(seeds), COLUMN_KINDS)])
    rows.append(["**spread (max−min) over seeds**", "", "", *_differences(spreads, signed=False)])
    return markdown_table(header, rows)


def steps_table(results: list[dict]) -> str:
    """Each steps build against its seed's build, paired on many train problems (empty without any)."""
    paired = [r["paired"] for r in results if r["scale"] is not None]
    return paired_table(paired, 100 * MAX_STEPS_SHIFT) if paired else ""


def _check(label: str, values: list, ok, show) -> dict:
    """One acceptance check: every value measured and passing ``ok``; ``show`` states the figure."""
    if not values or any(v is None for v in values):
        return {"check": label, "pass": False, "measured": "not measured"}
    return {"check": label, "pass": all(map(ok, values)), "measured": show(values)}


def _lowest(values: list) -> str:
    return f"lowest {min(values):.1%}"


def _highest(values: list) -> str:
    return f"highest {max(values):.1%}"


def acceptance(results: list[dict], k: int) -> list[dict]:
    """Issue 17's checks, from the measurements: the seed builds, and the steps builds against the first."""
    seeds = [r for r in results if r["scale"] is None]
    lo, hi = TRAIN_ACC_RANGE
    train = [r["train_greedy"] for r in seeds]
    gains = [r[f"pass@{k}"] - r["pass@1"] for r in seeds]
    distinct, min_distinct = [r["distinct_completions"] for r in seeds], MIN_DISTINCT * k / 8
    checks = [
        _check(f"train greedy accuracy in [{lo:.0%}, {hi:.0%}], every seed", train,
               lambda a: lo <= a <= hi, lambda v: f"{min(v):.1%} to {max(v):.1%}"),
        _check(f"train greedy accuracy spread over seeds ≤ {100 * MAX_SPREAD:.0f} pt", [max(train) - min(train)],
               lambda s: s <= MAX_SPREAD + 1e-9, lambda v: f"{100 * v[0]:.1f} pt over {len(seeds)} seeds"),
        _check(f"pass@{k} ≥ pass@1 + {MIN_PASS_GAIN:.2f}, every seed", gains,
               lambda g: g >= MIN_PASS_GAIN, lambda v: f"smallest gain {min(v):+.3f}"),
        _check(f"distinct completions ≥ {min_distinct:g}/{k}, every seed", distinct,
               lambda d: d >= min_distinct, lambda v: f"lowest {min(v):.2f}/{k}"),
    ]  # fmt: skip
    # Format tokens are judged outside the final \boxed{...}: its command and braces say which number is
    # the answer, so replacing them always loses it (about 98% of them come out critical, by construction).
    bounds = [
        ("overall", "critical fraction", MAX_CRITICAL),
        ("word", "critical fraction of word tokens", MAX_CRITICAL_WORD_FORMAT),
        (OUTSIDE_BOX, "critical fraction of format tokens outside the box", MAX_CRITICAL_WORD_FORMAT),
    ]
    for cls, what, bound in bounds:
        fractions = [r["critical"][cls] for r in seeds]
        label = f"{what} ≤ {bound:.0%}, every seed"
        checks.append(_check(label, fractions, lambda f, b=bound: f <= b, _highest))
    for cls in ("digit", "operator"):  # the tokens that decide the answer must mostly be critical
        fractions = [r["critical"][cls] for r in seeds]
        label = f"critical fraction of {cls} tokens > {MIN_CRITICAL_DECIDING:.0%}, every seed"
        checks.append(_check(label, fractions, lambda f: f > MIN_CRITICAL_DECIDING, _lowest))
    checks.append(_steps_check(results))
    return checks


def _steps_check(results: list[dict]) -> dict:
    """Every steps build against the build of its own seed, each on its own (not their mean), by the
    paired change on many problems (:func:`steps_table`)."""
    own = {r["seed"]: r for r in results if r["scale"] is None}
    steps = [r for r in results if r["scale"] is not None]
    changes = [r["paired"]["change"] for r in steps]  # in points
    bases = sorted({own[r["seed"]]["name"] for r in steps}) or [results[0]["name"]]
    of = bases[0] if len(bases) == 1 else f"its seed's build ({', '.join(bases)})"
    label = f"steps builds: train greedy accuracy within {100 * MAX_STEPS_SHIFT:.0f} pt of {of}"
    named = len(bases) > 1

    def show(measured):
        return ", ".join(
            (f"{r['name']} " if named else "") + f"{c['mean']:+.1f} pt [{c['low']:+.1f}, {c['high']:+.1f}]"
            for r, c in zip(steps, measured, strict=True)
        )

    return _check(label, changes, lambda c: abs(c["mean"] / 100) <= MAX_STEPS_SHIFT + 1e-9, show)


def render(results: list[dict], checks: list[dict], args) -> str:
    k, first = args.samples, results[0]
    settings = first["annotation"]["settings"]
    problems = first["problems"]
    times = ", ".join(f"{r['name']} {r['build_seconds']:.0f} s" for r in results)
    settings_note = f" ({', '.join(args.set)} on the default preset)" if args.set else ""
    rerun = ", ".join(sorted({f"seed{r['seed']}" for r in results if r["scale"] is not None})) or "no seed"
    one_run = (
        " Under this constant learning rate each seed's builds of every length were saved by one run as it "
        "passed that length (`cft_rl.toy.build.build_lengths`; the same weights as separate builds, checked "
        "bit for bit by tests/test_toy_schedule.py), so a build time is the time that run took to get there."
        if first["lr_schedule"] == "constant"
        else ""
    )
    intro = (
        f"## Toy world base model over build seeds{settings_note}\n\n"
        f"Greedy accuracy on the first {problems['train']} train problems (the prompts the annotator and "
        f"GRPO use; 'train: easy' and 'train: hard' split them by whether a problem ends with the "
        "multiplication that pretraining mostly leaves out, `ToyTaskConfig.hard_prob`) and the first "
        f"{problems['test']} held-out test problems; pass@1, pass@{k}, distinct "
        f"completions and distinct answers of {k} samples, and mean token entropy, at T=1 on those test "
        f"problems; budget {args.max_new_tokens} tokens. The critical fractions are those of the model's "
        f"own correct greedy solutions of the first {settings['limit']} train problems, annotated as the "
        f"pipeline does (recipes/toy/pipeline.yaml: k={settings.get('num_alternatives')}, "
        f"continuations of {settings.get('max_continuation_tokens')} tokens, fast engine; the annotator "
        "writes its solutions without padding, in a branch pool, so its count of solved problems need not "
        "match the padded batched greedy accuracy exactly), by token class (`cft_rl.token_classes.token_class`); the column 'format outside the box' leaves out the final "
        "`\\boxed{...}`, whose command and braces decide which number is the answer. Mean and spread are over "
        f"the seed builds; the steps builds rerun {rerun} with scaled pretraining steps, each compared "
        f"with its own seed's build (second table).{one_run}\n\n"
    )
    check_rows = [[c["check"], c["measured"], "yes" if c["pass"] else "**no**"] for c in checks]
    curves = curve_table(results)
    if curves:
        curves = (
            "\n\nGreedy accuracy along the pretraining run, on the first train problems, easy and hard apart "
            "(recorded by `scripts/bench_toy_curve.py` while the build was made; under a cosine schedule a "
            "point along a run is not a shorter build, whose learning rate would have decayed):\n\n" + curves
        )
    steps = steps_table(results)
    if steps:
        problems = next(r["paired"]["problems"] for r in results if r["scale"] is not None)
        steps = (
            f"\n\nEach steps build against its seed's build: greedy accuracy on the first {problems} train "
            "problems, and the change as the mean of the per-problem differences (the same problems), with "
            "its standard error and 95% t interval (`scripts/bench_toy_steps.py`'s measurement):\n\n" + steps
        )
    return (
        intro
        + table(results, k)
        + steps
        + f"\n\n{first['parameters'] / 1e6:.2f} M parameters. Build time (from scratch): {times}."
        + curves
        + "\n\nAcceptance (issue 17):\n\n"
        + markdown_table(["check", "measured", "pass"], check_rows)
    )
