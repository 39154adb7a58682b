"""Does a recipe value fit its config field's type? Checked before a job runs, not when it parses.

A pipeline recipe's sections go to dataclasses (``AnnotateConfig``, ``EvalConfig``, ...) that take
their values as they are, and to TRL's configs, which ``TrlParser`` converts from the YAML the
pipeline writes. A wrong value (``grpo.learning_rate=abc``) then fails only when that stage starts,
hours in, after the stages before it ran and its old folder was moved aside. :func:`check_values`
finds it up front.

Two strictness levels follow the two consumers: a dataclass takes what it is given, so a float field
needs a number; ``TrlParser`` runs a string through the field's type as a command-line flag, so
``learning_rate: 3e-4`` (which YAML reads as the *string* "3e-4") is fine there. Types this module
does not know (a config object, an enum it cannot read) are accepted: the job remains the judge.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import inspect
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path

_TRUE_FALSE = {"true", "false", "yes", "no", "t", "f", "y", "n", "1", "0"}  # transformers' string_to_bool


def field_types(*classes: type) -> dict[str, tuple[str, object]]:
    """``{field: (owning class name, resolved type)}`` over ``classes``; the first class wins."""
    found: dict[str, tuple[str, object]] = {}
    for cls in classes:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # an annotation that cannot be resolved here: its fields go unchecked
            hints = {}
        for f in dataclasses.fields(cls):
            found.setdefault(f.name, (cls.__name__, hints.get(f.name, typing.Any)))
    return found


def _parses(text: str, kind: type) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def fits(value, annotation, from_text: bool) -> bool:
    """Whether ``value`` fits ``annotation``; ``from_text``: strings are converted as flags would be."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, arg, from_text) for arg in args)
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool) or (
            from_text and isinstance(value, str) and value.lower() in _TRUE_FALSE
        )
    if annotation in (int, float):
        number = (int,) if annotation is int else (int, float)
        if isinstance(value, number) and not isinstance(value, bool):
            return True
        return from_text and isinstance(value, str) and _parses(value, annotation)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        item = args[0] if args else typing.Any
        return all(fits(v, item, from_text) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, Mapping)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, annotation) or value in {m.value for m in annotation}
    if dataclasses.is_dataclass(annotation):  # a nested section, e.g. toy.task
        return isinstance(value, Mapping | annotation)
    return True


def _describe(annotation) -> str:
    """A type as a recipe's reader would write it: ``int | 'auto' | None``, not ``Union[...]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_describe(arg) for arg in args)
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in args)
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def check_values(values: Mapping, classes: tuple[type, ...], where: str, from_text: bool = False) -> None:
    """Raise ``ValueError`` naming the first key whose value does not fit its field's type.

    Keys that are no field of ``classes`` are skipped (the caller checks names). A nested dataclass
    field given as a mapping has its own keys checked too.
    """
    types_ = field_types(*classes)
    for key, value in values.items():
        if key not in types_:
            continue
        owner, annotation = types_[key]
        if not fits(value, annotation, from_text):
            hint = ""
            if isinstance(value, str) and _parses(value, float):  # e.g. 1e-4, which YAML reads as text
                hint = f" (YAML reads {value} as text; write it with a dot, e.g. 1.0e-4, for a number)"
            raise ValueError(
                f"{where}{key} = {value!r} ({type(value).__name__}) does not fit {owner}.{key}, "
                f"which takes {_describe(annotation)}{hint}"
            )
        if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
            check_values(value, (annotation,), f"{where}{key}.", from_text)


# --- keys and command-line flags, from the same dataclass ------------------------------------------


def unknown_key(keys, valid, where: str = "", source: str = "the recipe") -> str | None:
    """The error for the first of ``keys`` not in ``valid`` (with a did-you-mean), or None."""
    for key in keys:
        if key in valid:
            continue
        close = difflib.get_close_matches(str(key), sorted(valid), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown key {where}{key!r} in {source}{hint}"
    return None


# ``name: text``, ``a / b: text`` or TRL's ``name (`type`, *optional*, defaults to `x`):`` + text below.
_ENTRY = re.compile(r"(\w+(?:\s*[,/]\s*\w+)*)(?:\s+\(.*\))?:(?:\s+(.*))?")


def field_help(cls: type) -> dict[str, str]:
    """``{field: its text}`` from the ``Parameters:`` (or ``Args:``) section of ``cls``'s docstring.

    An entry is ``name: text`` (or ``a / b: text``, shared) one indent into the section, or TRL's
    ``name (`type`, *optional*, defaults to `x`):`` with its text below; deeper lines continue it.
    The docstring is the spec, so the flags' help is read from it, not retyped."""
    lines = (inspect.getdoc(cls) or "").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() in ("Parameters:", "Args:")), None)
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines[start + 1 :] if start is not None else ():
        indent = len(line) - len(line.lstrip())
        if not line.strip():
            continue
        if indent < 4:
            break
        entry = _ENTRY.fullmatch(line.strip()) if indent == 4 else None
        if entry:
            current = [entry.group(2)] if entry.group(2) else []
            found.update({name: current for name in re.split(r"\s*[,/]\s*", entry.group(1))})
        elif current is not None:
            current.append(line.strip())
    return {name: " ".join(parts).replace("%", "%%") for name, parts in found.items()}


def config_parser(cls: type, prog: str, description: str | None = None, positional: Mapping = {}):
    """An ``HfArgumentParser`` of ``cls``: every field a flag (``--max_new_tokens`` and
    ``--max-new-tokens``), its help from the docstring, and ``--config FILE.yaml``.

    ``positional``: ``{field: nargs}`` that may also come as bare words (``cft-rl eval MODEL``).
    Required fields are checked by :func:`config_from_flags`, after the YAML: they may come from it.
    """
    import argparse

    import yaml
    from transformers import HfArgumentParser  # heavy: imported only when a command parses flags

    parser = HfArgumentParser(cls, prog=prog, description=description)
    helps, types_ = field_help(cls), field_types(cls)
    for action in list(parser._actions):
        action.required = False
        action.help = action.help or helps.get(action.dest)
        kind = types_.get(action.dest, (None, None))[1]
        if dataclasses.is_dataclass(kind) or typing.get_origin(kind) is dict:
            action.type = yaml.safe_load  # a nested section or a mapping: toy --task '{max_operand: 20}'
        if kind not in (bool, bool | None) or action.option_strings[:1] != [f"--{action.dest}"]:
            continue
        action.nargs, action.const = "?", True  # `--flag` alone means true; `--flag false` too
        if f"--no_{action.dest}" not in parser._option_string_actions:
            no = (f"--no_{action.dest}", f"--no-{action.dest.replace('_', '-')}")
            parser.add_argument(*no, dest=action.dest, action="store_false", help=f"--{action.dest} false")
    parser.add_argument(
        "--config", default=None, help=f"YAML file of {cls.__name__} settings; flags override"
    )
    for name, nargs in positional.items():  # SUPPRESS: no word given leaves the flag's value alone
        parser.add_argument(name, nargs=nargs, default=argparse.SUPPRESS, help=helps.get(name))
    return parser


def parse_flags(parser, cls: type, argv: list[str] | None, base: Mapping = {}):
    """Parse ``argv``; ``base`` and then a ``--config`` YAML's values (checked first, key by key and
    by type) become the flags' defaults; an unknown flag is an error naming it, with a did-you-mean."""
    import yaml

    _set_defaults(parser, base)
    args = _parse_known(parser, argv)
    if args.config:
        path = args.config
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of {cls.__name__} settings")
        valid = [f.name for f in dataclasses.fields(cls)]
        if problem := unknown_key(values, valid, source=path):
            raise ValueError(f"{problem} (valid settings: {', '.join(valid)})")
        check_values(values, (cls,), f"{path}: ")
        _set_defaults(parser, values)
        args = _parse_known(parser, argv)
    return args


def _set_defaults(parser, values: Mapping) -> None:
    for action in parser._actions:  # flags only: a bare-word positional keeps SUPPRESS
        if action.option_strings and action.dest in values:
            action.default = values[action.dest]


def _parse_known(parser, argv):
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [s for s in parser._option_string_actions if s.startswith("--")]
        close = difflib.get_close_matches(unknown[0].partition("=")[0], flags, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        parser.error(f"unrecognized argument {unknown[0]}{hint} (all of them: {' '.join(unknown)})")
    return args


def config_from_flags(cls: type, args):
    """``cls`` from parsed flags; a required field left unset is an error naming its flag."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    unset = dataclasses.MISSING
    required = [f.name for f in dataclasses.fields(cls) if f.default is unset and f.default_factory is unset]
    missing = [name for name in required if values.get(name) in (None, "")]
    if missing:
        flags = ", ".join(f"--{name}" for name in missing)
        raise ValueError(f"missing required setting(s) {missing}: pass {flags} (or set them in --config)")
    return cls.from_dict(values) if hasattr(cls, "from_dict") else cls(**values)
