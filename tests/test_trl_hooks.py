"""The private surface on TRL, checked against the installed TRL and transformers in one place.

The list is the one in :mod:`cft_rl.grpo.trainer`'s docstring: each entry is a dotted path, with the
signature we rely on for a callable (a trailing ``...``: more parameters may follow). An entry passes when
the path resolves (an attribute may also be one its class assigns as ``self.<name> = ...``) and, for a
signature, when its parameters have the documented names, kinds and defaults-or-not, in order.
The last test checks the other way round: every private method of TRL or transformers that a ``cft_rl``
class overrides, and every private attribute it reads from them, is on the list.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
import types
from pathlib import Path

import cft_rl.grpo.trainer

PACKAGE = Path(cft_rl.grpo.trainer.__file__).resolve().parents[1]
ENTRY = re.compile(r"``((?:trl|transformers)\.[\w.]+)(\([^`]*\))?``")


def documented_hooks(doc: str) -> dict[str, str | None]:
    """{dotted path: signature text or None} of every ``trl.``/``transformers.`` entry in ``doc``."""
    section = doc[doc.index("The private surface on TRL") :]
    text = re.sub(r"\s*\n\s*", " ", section)  # entries wrap over lines
    return {path: signature or None for path, signature in ENTRY.findall(text)}


def resolve(path: str):
    """The object at ``path``: the longest importable module prefix, then attributes; (owner, name, value)."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:-1]:
            obj = getattr(obj, name)
        return obj, parts[-1], getattr(obj, parts[-1], _MISSING)
    raise ImportError(f"no module of {path} imports")


_MISSING = object()


def _assigns_self_attribute(cls: type, name: str) -> bool:
    """Whether ``cls`` or a class it inherits from assigns ``self.<name>`` in its source."""
    for klass in inspect.getmro(cls):
        try:
            tree = ast.parse(inspect.getsource(klass).lstrip())
        except (OSError, TypeError):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == name
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                return True
    return False


def _parameters(signature: str) -> list[tuple[str, str, bool]]:
    """(name, kind, has a default) of each parameter of a written signature like ``(self, x=1, ...)``."""
    inner = signature.strip()[1:-1].strip()
    if inner.endswith("..."):
        inner = inner[:-3].rstrip().rstrip(",")
    func = ast.parse(f"def f({inner}): pass").body[0]
    params = [p for p in func.args.posonlyargs + func.args.args]
    defaults = [False] * (len(params) - len(func.args.defaults)) + [True] * len(func.args.defaults)
    found = [(p.arg, "POSITIONAL_OR_KEYWORD", d) for p, d in zip(params, defaults, strict=True)]
    for p in func.args.posonlyargs:
        found[params.index(p)] = (p.arg, "POSITIONAL_ONLY", found[params.index(p)][2])
    if func.args.vararg:
        found.append((func.args.vararg.arg, "VAR_POSITIONAL", False))
    for p, default in zip(func.args.kwonlyargs, func.args.kw_defaults, strict=True):
        found.append((p.arg, "KEYWORD_ONLY", default is not None))
    if func.args.kwarg:
        found.append((func.args.kwarg.arg, "VAR_KEYWORD", False))
    return found


def _installed(value) -> list[tuple[str, str, bool]]:
    return [
        (p.name, p.kind.name, p.default is not inspect.Parameter.empty)
        for p in inspect.signature(value).parameters.values()
    ]


def hook_problems(hooks: dict[str, str | None]) -> list[str]:
    """One line per documented hook that the installed TRL/transformers no longer match."""
    problems = []
    for path, signature in hooks.items():
        try:
            owner, name, value = resolve(path)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{path}: does not resolve ({exc})")
            continue
        if value is _MISSING:
            if not (signature is None and inspect.isclass(owner) and _assigns_self_attribute(owner, name)):
                problems.append(f"{path}: {getattr(owner, '__name__', type(owner).__name__)} has no {name!r}")
            continue
        if not signature:
            continue
        expected, installed = _parameters(signature), _installed(value)
        open_ended = signature.rstrip(")").rstrip().endswith("...")
        if (installed[: len(expected)] if open_ended else installed) != expected:
            problems.append(f"{path}: we rely on {signature}, installed is {inspect.signature(value)}")
    return problems


HOOKS = documented_hooks(cft_rl.grpo.trainer.__doc__)


def test_the_list_is_read():
    """The parser sees every entry (so a broken docstring cannot make the check vacuous)."""
    assert len(HOOKS) >= 15
    assert HOOKS["trl.GRPOTrainer._calculate_rewards"] == (
        "(self, inputs, prompts, completions, completion_ids_list)"
    )
    assert HOOKS["trl.GRPOTrainer._metrics"] is None


def test_every_documented_hook_matches_the_installed_trl():
    assert hook_problems(HOOKS) == []


def test_a_changed_signature_fails(monkeypatch):
    """A TRL release that renames a parameter, drops a hook or an attribute is reported by name."""
    import trl

    class RenamedGRPOTrainer:
        def __init__(self):
            self._metrics = {}

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids):  # renamed last one
            pass

        def _compute_loss(self, model, inputs, extra):  # a new required parameter
            pass

        def _get_per_token_logps_and_entropies(self, model, input_ids, mask, logits_to_keep, batch_size=None):
            pass

    monkeypatch.setattr(trl, "GRPOTrainer", RenamedGRPOTrainer)
    problems = "\n".join(hook_problems(HOOKS))
    assert "trl.GRPOTrainer._calculate_rewards: we rely on" in problems
    assert "completion_ids)" in problems  # the installed signature is shown
    assert "trl.GRPOTrainer._compute_loss: we rely on" in problems
    assert "trl.GRPOTrainer._get_per_token_logps_and_entropies: we rely on" in problems
    assert "trl.GRPOTrainer._generate_and_score_completions: RenamedGRPOTrainer has no" in problems
    assert "trl.GRPOTrainer._tokenizer: RenamedGRPOTrainer has no" in problems
    assert "trl.GRPOTrainer._metrics" not in problems  # assigned in __init__: still there
    assert "trl.SFTTrainer" not in problems


def test_a_moved_internal_fails(monkeypatch):
    import trl.trainer.utils

    monkeypatch.delattr(trl.trainer.utils, "pad")
    monkeypatch.setattr(trl.trainer.utils, "FusedCausalLMOutput", types.SimpleNamespace(entropy=None))
    problems = "\n".join(hook_problems(HOOKS))
    assert "trl.trainer.utils.pad: trl.trainer.utils has no 'pad'" in problems
    assert "FusedCausalLMOutput.log_probs: " in problems and "FusedCausalLMOutput.entropy" not in problems
    assert hook_problems({"trl.nope.Thing._x": None})[0].startswith("trl.nope.Thing._x: does not resolve")


# --- the list is complete: every private TRL/transformers member cft_rl touches is on it --------------

# Classes whose private members cft_rl may read off an object that is not ``self`` (``trainer._x``,
# ``config._x``): the trainers (and so transformers' ``Trainer``), TRL's collator and the model config.
READ_FROM = (
    "trl.GRPOTrainer",
    "trl.SFTTrainer",
    "trl.trainer.sft_trainer.DataCollatorForLanguageModeling",
    "transformers.PreTrainedConfig",
)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@functools.cache
def _members(cls: type) -> set[str]:
    """Private names ``cls`` or its bases define, or assign as ``self.<name>``."""
    names = set()
    for klass in inspect.getmro(cls):
        names |= {n for n in vars(klass) if _private(n)}
        try:
            tree = ast.parse(inspect.getsource(klass).lstrip())
        except (OSError, TypeError):
            continue
        names |= {
            n.attr
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and _private(n.attr)
        }
    return names


def _external_bases(module, node: ast.ClassDef) -> list[type]:
    """The TRL/transformers classes ``node`` (a class of ``module``) inherits from."""
    cls = getattr(module, node.name)
    return [b for b in inspect.getmro(cls)[1:] if b.__module__.split(".")[0] in ("trl", "transformers")]


def _own_names(trees) -> set[str]:
    """Names ``cft_rl`` defines itself: functions, classes and ``self.<name>`` assignments."""
    names = set()
    for tree in trees:
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                names.add(n.name)
            elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and _is_self(n.value):
                names.add(n.attr)
    return names


def _is_self(node) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def private_uses(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{private name: files} of every private TRL/transformers member that ``package`` touches.

    In a subclass of a TRL/transformers class: the methods it defines and the names it reads on ``self``
    (or calls on ``super()``) that such a base defines. Anywhere: names read off another object
    (``trainer._metrics``, ``config._attn_implementation``) that a :data:`READ_FROM` class defines and
    ``package`` does not define itself.
    """
    trees = {f: ast.parse(f.read_text()) for f in sorted(package.rglob("*.py"))}
    readable = set().union(*(_members(resolve(path)[2]) for path in READ_FROM)) - _own_names(trees.values())
    uses: dict[str, set[str]] = {}
    for file, tree in trees.items():
        where = str(file.relative_to(package.parent))
        checked = set()
        for node in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.bases]:
            module = importlib.import_module(where[:-3].replace("/", "."))
            bases = _external_bases(module, node)
            inherited = set().union(*(_members(b) for b in bases)) if bases else set()
            for n in ast.walk(node):
                if isinstance(n, ast.FunctionDef) and n.name in inherited:
                    uses.setdefault(n.name, set()).add(where)
                elif isinstance(n, ast.Attribute) and (_is_self(n.value) or isinstance(n.value, ast.Call)):
                    checked.add(id(n))
                    if n.attr in inherited:
                        uses.setdefault(n.attr, set()).add(where)
        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute) and id(n) not in checked and n.attr in readable:
                uses.setdefault(n.attr, set()).add(where)
    return uses


def test_every_private_use_is_on_the_list():
    listed = {path.rpartition(".")[2] for path in HOOKS}
    missing = {name: sorted(files) for name, files in private_uses().items() if name not in listed}
    assert not missing, (
        f"private TRL/transformers members used but not listed in cft_rl.grpo.trainer: {missing}"
    )


def test_every_import_from_inside_trl_is_on_the_list():
    """``from trl.<module> import name``: not TRL's top-level API, so it is listed (and checked)."""
    listed = set(HOOKS) | {path.rpartition(".")[0] for path in HOOKS}
    inside = {
        f"{node.module}.{alias.name}"
        for file in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(file.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trl.")
        for alias in node.names
    }
    assert inside and not inside - listed, f"imported from inside TRL but not listed: {inside - listed}"


def test_an_unlisted_private_use_is_found(tmp_path, monkeypatch):
    """A new override of a private TRL method, or a new private read off a trainer, is reported."""
    package = tmp_path / "fake_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "trainer.py").write_text(
        "from trl import GRPOTrainer\n"
        "class Mine(GRPOTrainer):\n"
        "    def _generate(self, prompts):\n"
        "        self._own = 1\n"
        "        return super()._generate(prompts)\n"
        "    def _helper(self):\n"
        "        return self._own\n"
        "def peek(trainer):\n"
        "    return trainer._logs\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert private_uses(package) == {"_generate": {"fake_pkg/trainer.py"}, "_logs": {"fake_pkg/trainer.py"}}
