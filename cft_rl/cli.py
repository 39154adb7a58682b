"""``cft-rl <command>``: the command-line entry point, a table of commands.

Each command is the ``main(argv)`` of the module that does the work, which parses its own flags
(generated from that stage's config dataclass where it has one). Modules are imported only when
their command runs, so ``cft-rl --help`` stays instant.
"""

from __future__ import annotations

import difflib
import importlib
import sys

# command -> ("module:function", one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "verify": (
        "cft_rl.verify.verifier:main",
        "grade one prediction against a gold answer (exit 0 if correct)",
    ),
    "data": ("cft_rl.data.datasets:main", "load a math benchmark into the common record shape and show rows"),
    "toy build": (
        "cft_rl.toy.build:main",
        "build (or reuse) the toy task, tokenizer and base model in --out",
    ),
    "annotate": ("cft_rl.annotate.job:main", "annotate critical tokens of a dataset's solutions (CFT)"),
    "render": (
        "cft_rl.annotate.render:main",
        "show an annotation's critical tokens in the terminal and as HTML",
    ),
    "sft": (
        "cft_rl.sft.run:main",
        "token-selective SFT (full, critical, numeric, answer, random, entropy, sftkey; DFT; LoRA)",
    ),
    "grpo": (
        "cft_rl.grpo.run:main",
        "GRPO from a warm start with the math reward and the exploration/entropy monitors",
    ),
    "eval": (
        "cft_rl.eval.job:main",
        "evaluate a checkpoint on math benchmarks (accuracy, pass@k, maj@k, diversity, entropy)",
    ),
    "compare": (
        "cft_rl.compare.run:main",
        "compare training runs' curves by label (figures, HTML, markdown)",
    ),
    "pipeline": (
        "cft_rl.pipeline.run:main",
        "the whole experiment from one recipe: toy, annotate, SFT arms, GRPO x seeds, eval, compare",
    ),
}
# Errors that name the problem and the fix: printed without a traceback.
CLEAN_ERRORS = (ValueError, FileExistsError, FileNotFoundError)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: cft-rl <command> [flags]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines.append("\n`cft-rl <command> --help` lists a command's flags.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    words = 2 if " ".join(argv[:2]) in COMMANDS else 1
    name = " ".join(argv[:words])
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"{usage()}\n\ncft-rl: error: unknown command {name!r}{hint}", file=sys.stderr)
        return 2
    module, function = COMMANDS[name][0].split(":")
    try:
        return getattr(importlib.import_module(module), function)(argv[words:])
    except CLEAN_ERRORS as exc:
        print(f"cft-rl {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
