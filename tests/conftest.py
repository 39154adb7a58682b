"""Shared fixtures. The tiny toy world is built once per test session (a few seconds on CPU)."""

import importlib.util
import os
from pathlib import Path

import pytest

# Tests never reach a hub; make that explicit even when run without the Makefile.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def toy_config():
    from cft_rl.toy.build import ToyBuildConfig

    return ToyBuildConfig.tiny()


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory, toy_config):
    from cft_rl.toy.build import build_toy

    return build_toy(tmp_path_factory.mktemp("toy") / "world", toy_config, progress=False)


@pytest.fixture(scope="session")
def two_cpu_processes():
    """The command prefix that runs a script as 2 CPU processes under ``accelerate launch``.

    --multi_gpu picks the torchrun launcher; the job's use_cpu=True makes it CPU/gloo DDP (accelerate's
    own --cpu multi-process launch needs MPI)."""
    import sys

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    return launch + ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.fixture
def grpo_config(tmp_path):
    """A factory of few-second GRPO configs on the tiny toy: 2 prompts x G=4 per step, short
    completions, quiet CPU settings, written to ``tmp_path/run``; keyword arguments override any field."""
    from cft_rl.cpu import QUIET_CPU_RUN
    from cft_rl.grpo.run import GRPORunConfig

    def make(**overrides):
        values = dict(
            output_dir=str(tmp_path / "run"),
            num_generations=4,
            per_device_train_batch_size=8,
            max_completion_length=24,
            max_steps=2,
            learning_rate=1e-3,
            logging_steps=1,
            **QUIET_CPU_RUN,
            disable_tqdm=True,
            log_completions=False,
            seed=0,
        )
        return GRPORunConfig(**{**values, **overrides})

    return make


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def load_script(monkeypatch):
    """``load_script(name)``: ``scripts/<name>.py`` as a module (scripts are not a package), with
    ``scripts/`` on ``sys.path`` for the test so that its sibling modules import as when it runs."""
    monkeypatch.syspath_prepend(str(SCRIPTS))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
