"""The tensor maths of token-selective SFT: the weighted loss and the sums behind its metrics.

Pure functions of per-token tensors, so they can be checked against hand-computed numbers. All
tensors are aligned with the *predicted* tokens: ``log_probs[b, t]`` is the model's log-probability of
the token that ``weights[b, t]`` weighs (the trainer passes ``weights[:, 1:]`` against the fused head's
next-token log-probabilities).

The loss (CFT, arXiv 2510.10974, Eq. 8, with optional DFT weighting, arXiv 2508.05629)::

    loss = sum_t  w_t * (-log p_t) * [p_t, detached, with DFT]  /  N

where ``N`` is the number of selected tokens (``w_t > 0``): by default those of this batch, or the
``num_items`` the trainer counted over the whole gradient-accumulation window and every device, which
makes the loss one mean over all selected tokens however the batch was split. With all weights 1 on
the completion, this is TRL's plain SFT loss, term for term.
"""

from __future__ import annotations

import torch

# The order of the sums returned by `selection_sums`; the trainer reduces them as one tensor.
SUM_KEYS = ("selected", "completion", "selected_nll", "completion_nll", "selected_entropy")


def selective_loss(
    log_probs: torch.Tensor,
    weights: torch.Tensor,
    num_items: torch.Tensor | int | float | None = None,
    dft: bool = False,
) -> torch.Tensor:
    """Weighted NLL of the selected tokens, divided by their count (``num_items`` when given).

    Unselected tokens contribute exactly zero, to the value and to the gradient, even where their
    log-probability is not finite. A batch that selects nothing gives a finite zero, not ``0 / 0``.
    """
    selected = weights > 0
    per_token = -log_probs * weights
    if dft:
        # DFT rescales each token's loss by its own (detached) probability: confident tokens keep
        # their gradient, unlikely ones are damped. It combines with any selection.
        per_token = per_token * log_probs.detach().exp()
    # `where`, not a product: 0 * inf is nan, and a nan on an unselected token must not leak in.
    per_token = torch.where(selected, per_token, torch.zeros_like(per_token))
    count = selected.sum() if num_items is None else num_items
    return per_token.sum() / torch.as_tensor(count, device=per_token.device).clamp(min=1)


def selection_sums(
    log_probs: torch.Tensor, entropy: torch.Tensor, weights: torch.Tensor, completion: torch.Tensor
) -> torch.Tensor:
    """Detached sums, in ``SUM_KEYS`` order, over the selected and over all completion tokens.

    Sums (not means) so that they add up across devices before dividing: a device with few
    selected tokens must weigh less in the mean than one with many.
    """
    selected = (weights > 0) & completion
    nll = -log_probs.detach().float()
    zero = torch.zeros_like(nll)
    return torch.stack(
        [
            selected.sum().float(),
            completion.sum().float(),
            torch.where(selected, nll, zero).sum(),
            torch.where(completion, nll, zero).sum(),
            torch.where(selected, entropy.detach().float(), zero).sum(),
        ]
    )


def selection_metrics(sums: torch.Tensor) -> dict[str, float]:
    """The logged metrics from (reduced) ``selection_sums``; a mean over no token logs 0.0.

    - ``selected/fraction``: share of completion tokens that carry the loss;
    - ``selected/nll``: mean NLL over the selected tokens (the trained objective, before DFT);
    - ``selected/entropy``: mean entropy of the model's distribution at the selected tokens;
    - ``completion/nll``: mean NLL over every completion token, evaluated, not trained: under CFT
      it can rise while the trained loss falls.
    """
    values = dict(zip(SUM_KEYS, sums.tolist(), strict=True))

    def ratio(num: float, den: float) -> float:
        return num / den if den > 0 else 0.0

    return {
        "selected/fraction": ratio(values["selected"], values["completion"]),
        "selected/nll": ratio(values["selected_nll"], values["selected"]),
        "selected/entropy": ratio(values["selected_entropy"], values["selected"]),
        "completion/nll": ratio(values["completion_nll"], values["completion"]),
    }
