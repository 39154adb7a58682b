"""cft_rl: critical-token SFT warm-starts and GRPO for math reasoning, on Hugging Face TRL.

The package is layered by stage: pure helpers at the top level (``answers``, ``cpu``, ``reports``), the
shared layers ``verify`` and ``data``, the stages ``toy``, ``annotate``, ``sft``, ``grpo``, ``eval`` and
``compare``, then ``pipeline`` and the ``cli``.
"""

import importlib

__version__ = "0.1.0"


def lazy_exports(package: str, exports: dict[str, str]):
    """A module ``__getattr__`` for ``package`` that imports each re-exported name from its module on first use.

    Subpackages re-export their public names this way so that importing one of their modules (the
    verifier's worker process runs ``python -m cft_rl.verify.guard``) does not import all the others.
    """

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
