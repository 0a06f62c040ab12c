"""Gradient-norm clipping per parameter group (one group's large gradient never shrinks another's)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """Clip the group's gradients to a total 2-norm of ``max_norm`` (None: leave them as they are).

    Returns the total norm before clipping as a 0-d tensor (no host sync).
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    if max_norm is not None:
        if not max_norm > 0:
            raise ValueError(f"max_norm must be positive or None, got {max_norm}")
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    # The norm clip_grad_norm_ would report (2-norm of per-tensor 2-norms), gradients untouched.
    norms = [torch.linalg.vector_norm(p.grad.detach(), 2.0) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]), 2.0)
