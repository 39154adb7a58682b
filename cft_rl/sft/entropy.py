"""Token entropies under the base model, for the ``entropy`` selection control.

Scoring is one forward pass over the dataset, on the accelerator, done once: on the main process,
whose scores are sent to the others (each rank prepares the whole dataset; the sampler shards it).
"""

from __future__ import annotations

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from cft_rl.sft import SelectionError
from cft_rl.stats import token_entropy


def shared_entropies(scoring_model, encoded: list[dict], batch_size: int, device=None) -> list:
    """:func:`score_entropies` run once, on the main process, and sent to every other process.

    Every rank needs the same scores (each prepares the whole dataset and the sampler shards it),
    and one forward pass over the dataset is enough. ``scoring_model``: the model, or a function
    that loads it, called on the main process only. The scores travel as float32 arrays (what the
    entropies are computed in): the main process keeps the same arrays, so every rank selects alike.
    """
    if scoring_model is None:
        raise SelectionError("strategy 'entropy' needs the base model to score token entropies")
    state = PartialState()
    message = [None]
    if state.is_main_process:
        try:
            model = scoring_model if isinstance(scoring_model, torch.nn.Module) else scoring_model()
            scores = score_entropies(model, encoded, batch_size, device)
            message = [[np.asarray(row, dtype=np.float32) for row in scores]]
        except Exception as error:  # the other ranks wait in the broadcast: tell them, then raise
            if state.num_processes > 1:
                broadcast_object_list([f"{type(error).__name__}: {error}"])
            raise
    if state.num_processes > 1:
        message = broadcast_object_list(message)
    if isinstance(message[0], str):
        raise SelectionError(f"entropy scoring failed on the main process: {message[0]}")
    return message[0]


def score_entropies(model, encoded: list[dict], batch_size: int, device=None) -> list[list[float]]:
    """Per row, the entropy (nats) of the model's next-token distribution at each completion token.

    Runs on ``device`` (default: where the model is); a model elsewhere is moved there for the
    scoring and back after it, unless it is dispatched over devices (``device_map``), where it stays.
    Rows are batched by length (right padding, so real tokens never attend to a pad). A batch holds
    ``batch_size x length x vocabulary`` logits: lower the batch size for large vocabularies.
    """
    home = next(model.parameters()).device
    device = home if device is None or getattr(model, "hf_device_map", None) else torch.device(device)
    model.to(device)
    try:
        return _score(model, encoded, batch_size, device)
    finally:
        model.to(home)


def _score(model, encoded, batch_size, device) -> list[list[float]]:
    was_training = model.training
    model.eval()
    order = sorted(
        range(len(encoded)), key=lambda i: len(encoded[i]["prompt_ids"]) + len(encoded[i]["completion_ids"])
    )
    result: list[list[float]] = [[] for _ in encoded]
    for start in range(0, len(order), batch_size):
        chunk = [encoded[i] for i in order[start : start + batch_size]]
        ids = [r["prompt_ids"] + r["completion_ids"] for r in chunk]
        width = max(len(x) for x in ids)
        input_ids = torch.zeros(len(ids), width, dtype=torch.long, device=device)
        mask = torch.zeros_like(input_ids)
        for k, x in enumerate(ids):
            input_ids[k, : len(x)], mask[k, : len(x)] = torch.tensor(x), 1
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask).logits
        for k, row in enumerate(chunk):
            n, m = len(row["prompt_ids"]), len(row["completion_ids"])
            # Token t of the completion is predicted at position n + t - 1.
            result[order[start + k]] = token_entropy(logits[k, n - 1 : n + m - 1]).tolist()
    model.train(was_training)
    return result
