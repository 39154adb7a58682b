"""The toy world: task, tokenizer and base model, built offline on CPU: ``from cft_rl.toy import build_toy``."""

from cft_rl import lazy_exports

_EXPORTS = {"ToyBuildConfig": "cft_rl.toy.config"} | dict.fromkeys(
    ("build_toy", "is_built", "load_toy"), "cft_rl.toy.build"
)
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
