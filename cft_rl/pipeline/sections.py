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


@dataclass
class LaunchedSection:
    """Pipeline keys of a section whose jobs can run under a launcher.

    Parameters:
        launch: the launcher command of this section's jobs (default: the recipe's ``launch``).
    """

    launch: str | None = None


@dataclass
class SFTSection(LaunchedSection):
    """``sft.arms``: strategy names, or mappings with ``name``, ``strategy`` and any SFT field."""

    arms: list[str | dict] = field(default_factory=lambda: list(REQUIRED_ARMS))


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
