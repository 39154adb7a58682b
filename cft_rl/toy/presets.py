"""Named toy builds, and the base model shipped inside the package.

Why ship a model at all: the default toy base model comes out of a few minutes of CPU pretraining, and
its float rounding depends on the CPU: the same settings gave 26% greedy accuracy on one machine and 48%
on another when the build sat near an accuracy cliff. The default preset's build is therefore embedded
in the package (``cft_rl/toy/embedded/default``, about 3 MB), and building the default settings copies
it instead of training. Every machine then starts the demo and the experiment from the same weights.

The builder is kept, and is the only way the embedded folder is made::

    cft-rl toy build --preset default --rebuild --out /tmp/default   # trains from scratch
    rm -rf cft_rl/toy/embedded/default && cp -r /tmp/default cft_rl/toy/embedded/default

A test checks that the embedded manifest's settings key is the default preset's key, so a change to the
defaults, the task or the build procedure (``BUILD_VERSION``) cannot ship a stale model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from cft_rl.toy.build import MANIFEST, ToyBuildConfig

EMBEDDED = Path(__file__).parent / "embedded"

# name -> settings. "default" is the demo's base model (and the embedded one); "tiny" builds in seconds
# for tests.
PRESETS: dict[str, Callable[[], ToyBuildConfig]] = {
    "default": ToyBuildConfig,
    "tiny": ToyBuildConfig.tiny,
}


def preset(name: str) -> ToyBuildConfig:
    """The settings of preset ``name``; an unknown name is an error listing the presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown toy preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


def embedded_build(config: ToyBuildConfig) -> Path | None:
    """The embedded build made with exactly these settings, or None."""
    for folder in sorted(EMBEDDED.glob("*")) if EMBEDDED.is_dir() else []:
        manifest = folder / MANIFEST
        if manifest.is_file() and json.loads(manifest.read_text()).get("key") == config.key():
            return folder
    return None
