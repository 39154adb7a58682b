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
import enum
import types
import typing
from collections.abc import Mapping

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
