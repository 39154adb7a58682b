"""``cft-rl <command>``: the command-line entry point.

Each command is a thin wrapper over a module's Python API; heavy imports happen inside the command so
``cft-rl --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_verify(args: argparse.Namespace) -> int:
    from cft_rl.verify.verifier import check

    verdict = check(args.prediction, args.gold, timeout=args.timeout)
    print(json.dumps(verdict.__dict__, ensure_ascii=False))
    return 0 if verdict.score == 1.0 else 1


def _cmd_data(args: argparse.Namespace) -> int:
    from cft_rl.data.datasets import BENCHMARKS, load_benchmark

    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    for name in names:
        ds = load_benchmark(name, data_root=args.data_root, limit=args.limit)
        print(f"{name}: {len(ds)} rows")
        for row in ds.select(range(min(args.show, len(ds)))):
            print(json.dumps({k: row[k] for k in ("id", "question", "answer")}, ensure_ascii=False)[:400])
    return 0


def _cmd_toy_build(args: argparse.Namespace) -> int:
    import yaml

    from cft_rl.toy.build import ToyBuildConfig, build_toy

    values = yaml.safe_load(Path(args.config).read_text()) or {} if args.config else {}
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        values[key] = yaml.safe_load(value)
    if args.seed is not None:
        values["seed"] = args.seed
    config = ToyBuildConfig.tiny(**values) if args.tiny else ToyBuildConfig.from_dict(values)
    out = build_toy(args.out, config)
    print(f"toy world ready in {out} (key {config.key()})")
    return 0


def _cmd_annotate(args: argparse.Namespace) -> int:
    import yaml

    from cft_rl.annotate.job import AnnotateConfig, describe, run_annotation

    values = (yaml.safe_load(Path(args.config).read_text()) or {}) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if k in _ANNOTATE_FLAGS and v is not None}
    config = AnnotateConfig.from_dict({**values, **flags})  # flags override the YAML
    written = run_annotation(config)
    print(f"annotation written to {written}")
    summary = Path(config.out) / "summary.json"
    if written.name == "dataset" and summary.is_file():  # merged: say what it holds
        print(describe(json.loads(summary.read_text())))
    return 0


_ANNOTATE_FLAGS = [
    "model",
    "dataset",
    "out",
    "split",
    "source",
    "limit",
    "num_shards",
    "shard_index",
    "engine",
    "num_alternatives",
    "max_continuation_tokens",
    "max_solution_tokens",
    "max_new_tokens",
    "batch_size",
    "eager_alternatives",
    "wait_for_shards",
]
_BOOL_FLAGS = ("eager_alternatives", "wait_for_shards")


def _cmd_render(args: argparse.Namespace) -> int:
    import datasets

    from cft_rl.annotate.render import render_terminal, write_html

    path = Path(args.dir)
    path = path / "dataset" if (path / "dataset").is_dir() else path
    if not path.is_dir():
        raise ValueError(
            f"{args.dir} holds no annotation dataset; run `cft-rl annotate --out {args.dir}` first"
        )
    rows = datasets.load_from_disk(str(path))
    if not len(rows):
        summary = path.parent / "summary.json"
        why = ""
        if summary.is_file():
            from cft_rl.annotate.job import describe

            why = f" ({describe(json.loads(summary.read_text()))})"
        print(f"{path} holds no annotated rows{why}")
    shown = rows.select(range(min(args.limit, len(rows))))
    for row in shown:
        print(render_terminal(row, color=not args.no_color and sys.stdout.isatty()), end="\n\n")
    if args.html:
        print(f"wrote {write_html(rows, args.html)}")
    return 0


def _cmd_sft(argv: list[str]) -> int:
    from cft_rl.sft.trainer import main as sft_main

    return sft_main(argv)


def _cmd_grpo(argv: list[str]) -> int:
    from cft_rl.grpo.run import main as grpo_main

    return grpo_main(argv)


# Subcommands whose flags belong to TRL's parser (--config recipe.yaml, --any_field value).
_TRL_COMMANDS = {"sft": _cmd_sft, "grpo": _cmd_grpo}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cft-rl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("verify", help="grade one prediction against a gold answer (exit 0 if correct)")
    p.add_argument("prediction", help="model output text; its final answer is extracted")
    p.add_argument("gold", help="the gold answer, e.g. 72 or \\frac{1}{2}")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds before the verification gives up")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("data", help="load a math benchmark into the common record shape and show rows")
    p.add_argument("name", help="benchmark name, or 'all'")
    p.add_argument(
        "--data-root", default=None, help="folder with the benchmark files (default ../shared/data)"
    )
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--show", type=int, default=2, help="rows to print")
    p.set_defaults(func=_cmd_data)

    toy = sub.add_parser("toy", help="the offline toy world").add_subparsers(
        dest="toy_command", required=True
    )
    p = toy.add_parser("build", help="build (or reuse) the toy task, tokenizer and base model in --out")
    p.add_argument("--out", required=True, help="folder to build into; loads with from_pretrained(DIR)")
    p.add_argument("--config", default=None, help="YAML file of ToyBuildConfig settings")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override settings")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--tiny", action="store_true", help="the seconds-long variant used by the tests")
    p.set_defaults(func=_cmd_toy_build)

    p = sub.add_parser(
        "annotate",
        help="annotate critical tokens of a dataset's solutions (CFT)",
        description="Each flag is the AnnotateConfig field of that name (see cft_rl.annotate.job).",
    )
    p.add_argument("--config", default=None, help="YAML file of AnnotateConfig settings; flags override")
    for flag in _ANNOTATE_FLAGS:
        name = "--" + flag.replace("_", "-")
        if flag in _BOOL_FLAGS:  # --eager-alternatives / --no-eager-alternatives; unset: the default
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=None)
            continue
        numeric = flag in ("limit", "num_shards", "shard_index", "batch_size")
        numeric = numeric or flag.startswith(("num_", "max_"))
        p.add_argument(name, type=int if numeric else str, default=None)
    p.set_defaults(func=_cmd_annotate)

    p = sub.add_parser("render", help="show an annotation's critical tokens in the terminal and as HTML")
    p.add_argument("dir", help="an annotate --out folder (or its dataset/ folder)")
    p.add_argument("--limit", type=int, default=5, help="rows to print")
    p.add_argument("--html", default=None, help="write a self-contained HTML page of all rows here")
    p.add_argument("--no-color", action="store_true")
    p.set_defaults(func=_cmd_render)

    # These modules define their arguments and run functions; their heavy imports happen inside.
    from cft_rl.compare import run as compare
    from cft_rl.eval import job as eval_job
    from cft_rl.pipeline import run as pipeline

    for name, module, help_, description in (
        (
            "eval",
            eval_job,
            "evaluate a checkpoint on math benchmarks (accuracy, pass@k, maj@k, diversity, entropy)",
            "cft-rl eval MODEL BENCHMARK... | --suite paper; cft-rl eval --table EVAL_DIR...",
        ),
        (
            "compare",
            compare,
            "compare training runs' curves by label (figures, HTML and markdown report)",
            "Reads each RUN_DIR's trainer_state.json (or its latest checkpoint-*/'s).",
        ),
        (
            "pipeline",
            pipeline,
            "the whole experiment from one recipe: toy, annotate, SFT arms, GRPO x seeds, eval, compare",
            "Runs every stage not yet done; rerun to resume. See recipes/*/pipeline.yaml.",
        ),
    ):
        p = sub.add_parser(name, help=help_, description=description)
        module.add_arguments(p)
        p.set_defaults(func=module.run_from_args)

    # Parsed by TRL's parser (see cft_rl.sft.trainer.main); listed here so that `cft-rl --help` shows it.
    sub.add_parser(
        "sft",
        add_help=False,
        help="token-selective SFT (full, critical, numeric, answer, random, entropy, sftkey; DFT; LoRA)",
        description="cft-rl sft --config recipe.yaml [--field value ...]: every field of "
        "SelectiveSFTConfig, TRL's ModelConfig and ScriptArguments; flags override the recipe.",
    )
    sub.add_parser(
        "grpo",
        add_help=False,
        help="GRPO from a warm start with the math reward and the exploration/entropy monitors",
        description="cft-rl grpo --config recipe.yaml [--field value ...]: every field of GRPORunConfig "
        "and TRL's ModelConfig/ScriptArguments; flags override the recipe.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in _TRL_COMMANDS:  # TRL's parser takes every flag after the command
        command = _TRL_COMMANDS[argv[0]]
        args = argparse.Namespace(command=argv[0], func=lambda _: command(argv[1:]))
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (
        ValueError,
        FileExistsError,
        FileNotFoundError,
    ) as exc:  # our errors name the problem and the fix; no traceback needed
        print(f"cft-rl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
