"""The verifier and the TRL reward functions: ``from cft_rl.verify import math_reward, verify, check``.

``guard`` runs each verification in a worker process with a hard time limit; ``verifier`` grades;
``rewards`` makes any reward function safe for a trainer (a bad completion scores None, never raises).
"""

from cft_rl import lazy_exports

_VERIFIER = "cft_rl.verify.verifier"
_EXPORTS = {
    name: _VERIFIER
    for name in (
        "Verdict",
        "check",
        "check_batch",
        "format_reward",
        "get_reward_func",
        "math_reward",
        "normalize_answer",
        "shutdown",
        "verify",
        "verify_batch",
        "warmup",
    )
}
_EXPORTS |= {name: "cft_rl.verify.rewards" for name in ("build_reward_funcs", "tolerant_reward")}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
