"""One loader for every job's model and tokenizer: a checkpoint folder, a LoRA adapter or a Hub id.

``eval``, ``sft``, ``grpo`` and ``annotate`` all load through here, so a name means the same thing to
each of them:

- an existing folder is a checkpoint: full weights (``config.json``) or a LoRA adapter
  (``adapter_config.json``, loaded on its base model and merged, or kept as a ``PeftModel``);
- anything else that is a valid Hub repo id (``name`` or ``namespace/name``; dots are part of a name,
  as in ``Qwen/Qwen2.5-Math-1.5B``) is a Hub id: found in the local HF cache, else downloaded, unless
  the Hub is offline (``HF_HUB_OFFLINE=1``), when it fails at once naming both readings;
- a name that only reads as a path (``./x``, ``/abs/x``, ``~/x``, or ``outputs/x`` while ``outputs/``
  is a local folder) is never looked up on the Hub: it fails at once with "no such folder".

:func:`model_init_kwargs` merges a recipe's loading settings as TRL's own ``sft``/``grpo`` scripts do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"


class ModelNotFoundError(FileNotFoundError):
    """The model names neither a usable folder nor a Hub id that can be loaded; the message says why."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model name points.

    Parameters:
        name (`str`): What ``from_pretrained`` takes: the folder (user-expanded) or the Hub id.
        folder (`Path` or `None`): The model's files on this machine: the folder itself, or the cached
            snapshot of a Hub id; None for a Hub id that is not cached yet (the Hub is online).
        revision (`str` or `None`): The Hub revision, for a Hub id.
    """

    name: str
    folder: Path | None
    revision: str | None = None

    def has_file(self, filename: str) -> bool:
        if self.folder is not None:
            return (self.folder / filename).is_file()
        from huggingface_hub import file_exists

        return file_exists(self.name, filename, revision=self.revision)

    def read_json(self, filename: str) -> dict:
        if self.folder is not None:
            return json.loads((self.folder / filename).read_text())
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(self.name, filename, revision=self.revision)).read_text())

    @property
    def is_adapter(self) -> bool:
        return self.has_file(ADAPTER_CONFIG)


def _may_be_hub_id(text: str) -> bool:
    """A valid Hub repo id (``name`` or ``namespace/name``) that does not start like a path."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if text.startswith((".", "/", "~")) or "\\" in text:
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def resolve_model(name: str | Path, revision: str | None = None) -> ModelSource:
    """The :class:`ModelSource` of ``name``, or a :class:`ModelNotFoundError` at once (no Hub retries).

    Checks only the file system and the local HF cache (``HF_HUB_CACHE``); the Hub is reached later, by
    ``from_pretrained``, only for a Hub id that is not cached, while the Hub is online, and whose
    namespace is not a local folder (then ``outputs/x`` is a missing path, not a Hub id).
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    text = str(name)
    path = Path(text).expanduser()
    if path.is_dir():
        return ModelSource(str(path), path)
    where = path.resolve()
    folder = f"{where} is a file, not a model folder" if path.exists() else f"no such folder {where}"
    hub_id = not path.exists() and _may_be_hub_id(text)
    if hub_id:
        try:  # local_files_only: the cache and nothing else, so a miss costs no request and no retry
            return ModelSource(
                text, Path(snapshot_download(text, revision=revision, local_files_only=True)), revision
            )
        except LocalEntryNotFoundError:
            pass
    if not hub_id or ("/" in text and Path(text.split("/", 1)[0]).is_dir()):
        raise ModelNotFoundError(
            f"model {text!r} not found: {folder}. Pass a checkpoint folder (e.g. the output_dir of "
            "`cft-rl sft`) or a Hub id such as Qwen/Qwen2.5-Math-1.5B"
        )
    if constants.HF_HUB_OFFLINE:
        raise ModelNotFoundError(
            f"model {text!r} not found: as a path, {folder}; as a Hub id, it is not in the local cache, "
            f"and the Hub is offline (HF_HUB_OFFLINE=1; cache {constants.HF_HUB_CACHE}). Pass an "
            f"existing folder, or download the model while online (`hf download {text}`)"
        )
    return ModelSource(text, None, revision)


def model_init_kwargs(args, model_args) -> dict:
    """The ``from_pretrained`` settings of a run, merged as TRL's ``sft``/``grpo`` scripts merge them.

    ``model_args`` (TRL's ``ModelConfig``) gives ``revision``, ``attn_implementation`` and ``dtype``,
    ``args`` (the trainer config) ``trust_remote_code``; the recipe's own ``args.model_init_kwargs`` are
    kept and, on a conflict, win (e.g. ``model_init_kwargs: {dtype: bfloat16}`` over ``--dtype``).
    """
    merged = {
        "revision": model_args.model_revision,
        "trust_remote_code": args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    merged.update(args.model_init_kwargs or {})
    return merged


def _from_pretrained_kwargs(model_kwargs: dict) -> dict:
    import torch  # heavy: resolving a name or loading a tokenizer needs no torch

    kwargs = {k: v for k, v in model_kwargs.items() if v is not None}
    dtype = kwargs.get("dtype")
    if isinstance(dtype, str) and dtype != "auto":  # recipes write "bfloat16"; TRL converts it too
        kwargs["dtype"] = getattr(torch, dtype)
    return kwargs


def load_tokenizer(name: str | Path, revision: str | None = None, trust_remote_code: bool = False):
    """The tokenizer of a checkpoint folder or Hub id; for a LoRA adapter saved without one, its base
    model's. A missing pad token becomes eos (generation pads; many base tokenizers have none)."""
    from transformers import AutoTokenizer

    source = resolve_model(name, revision)
    has_own = source.has_file("tokenizer.json") or source.has_file("tokenizer_config.json")
    if source.is_adapter and not has_own:
        base = source.read_json(ADAPTER_CONFIG)["base_model_name_or_path"]
        return load_tokenizer(base, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(
        source.name, revision=source.revision, trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str | Path, merge: bool = True, trainable: bool = False, **model_kwargs):
    """The model of a checkpoint folder or Hub id: full weights, or base model + LoRA adapter.

    An adapter is merged into its base model by default, giving a plain model whose every parameter
    trains, like any model ``from_pretrained`` returns; ``merge=False`` keeps the ``PeftModel``, its
    adapter trainable with ``trainable=True`` (to go on training the same adapter). ``model_kwargs``
    go to ``from_pretrained`` (``dtype``, ``revision``, ``trust_remote_code``...; None values dropped).
    """
    kwargs = _from_pretrained_kwargs(model_kwargs)
    source = resolve_model(name, kwargs.get("revision"))
    if source.is_adapter:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(source.name, is_trainable=trainable, **kwargs)
        if not merge:
            return model
        # peft froze the base model to train the adapter; merged, nothing is left to keep frozen.
        return model.merge_and_unload().requires_grad_(True)
    if not source.has_file("config.json"):
        raise ModelNotFoundError(
            f"{name} is not a warm-start checkpoint (no config.json or adapter_config.json); "
            "pass the output_dir of `cft-rl sft`, or any Hugging Face model directory or Hub id"
        )
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(source.name, **kwargs)
