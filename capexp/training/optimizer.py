"""The optimizer both training phases use: AdamW over a model's trainable parameters, gradients clipped."""

from __future__ import annotations

import torch

__all__ = ["ClippedAdamW"]


class ClippedAdamW:
    """AdamW over the parameters of `model` that require gradients; `step(loss)` is one update, with the
    gradients' global norm clipped to `grad_clip` first (None: not clipped).

    The trained image encoder blocks (`model.encoder`, when there are any) form their own group at
    `encoder_learning_rate`; a schedule scales both groups alike.
    """

    def __init__(self, model: torch.nn.Module, *, learning_rate: float, weight_decay: float,
                 grad_clip: float | None, encoder_learning_rate: float | None = None) -> None:
        encoder = getattr(model, "encoder", None)
        own = {id(p) for p in encoder.parameters()} if encoder is not None else set()
        self.params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in self.params if id(p) not in own]}]
        if own:
            groups.append({"params": [p for p in self.params if id(p) in own], "lr": encoder_learning_rate or learning_rate})
        self.optimizer = torch.optim.AdamW(groups, lr=learning_rate, weight_decay=weight_decay)
        self.grad_clip = grad_clip

    def step(self, loss: torch.Tensor) -> None:
        """Back-propagate `loss` and update the parameters."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
