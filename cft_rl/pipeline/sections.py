"""The pipeline's own keys of each recipe section: those the pipeline reads itself, which are no field
of the section's job config.

Dataclasses too, so that a recipe's keys and values are checked (name and type) against them the way
the jobs' fields are (:mod:`cft_rl.pipeline.recipe`); their docstrings are their specs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

REQUIRED_ARMS = ("full", "critical")
EVAL_MODELS = ("base", "sft", "grpo")
SFT_SEED_STRIDE = 1000  # sft.seed_per_grpo_seed: GRPO seed s starts from SFT seed <the arm's> + 1000 * s


@dataclass
class LaunchedSection:
    """Pipeline keys of a section whose jobs can run under a launcher.

    Parameters:
        launch: the launcher command of this section's jobs (default: the recipe's ``launch``).
    """

    launch: str | None = None


@dataclass
class SFTSection(LaunchedSection):
    """Pipeline keys of the ``sft`` section.

    Parameters:
        arms (`list[str | dict]`, *optional*, defaults to `["full", "critical"]`):
            strategy names, or mappings with ``name``, ``strategy`` and any SFT field.
        seed_per_grpo_seed (`bool`, *optional*, defaults to `False`):
            one SFT run per arm and GRPO seed. For GRPO seed ``s``, stage ``sft/<arm>/seed<s>`` trains
            at SFT ``seed`` = the arm's seed (its own ``seed``, else ``sft.seed``, else
            SelectiveSFTConfig's default) + ``1000 * s``; ``grpo/<arm>/seed<s>`` starts from it, and it
            is evaluated as ``eval/sft/<arm>/seed<s>`` (when ``eval.models`` has ``sft``). Why: with one
            warm start per arm, every GRPO seed of the arm shares it, so intervals over seeds miss the
            warm start's own variance, and the negative control (``full_replica``: full at another SFT
            seed) can come out "different" from full. With this on, each seed is a whole SFT -> GRPO
            replicate. The stride 1000: arms whose seeds differ by less (full 42, full_replica 43) never
            share an SFT seed, whatever the GRPO seeds. ``False``: one ``sft/<arm>`` per arm, which
            every GRPO seed starts from.
    """

    arms: list[str | dict] = field(default_factory=lambda: list(REQUIRED_ARMS))
    seed_per_grpo_seed: bool = False


@dataclass
class GRPOSection(LaunchedSection):
    """``grpo.seeds``: one GRPO run per seed and arm."""

    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class EvalSection:
    """``eval.models``: which are evaluated: ``base``, ``sft`` (each arm), ``grpo`` (each run)."""

    models: list[str] = field(default_factory=lambda: list(EVAL_MODELS))


PIPELINE_KEYS = {"annotate": LaunchedSection, "sft": SFTSection, "grpo": GRPOSection, "eval": EvalSection}


def pipeline_keys(section: str) -> set[str]:
    """The keys of ``section`` that the pipeline takes itself (not passed to the job)."""
    cls = PIPELINE_KEYS.get(section)
    return {f.name for f in dataclasses.fields(cls)} if cls else set()
