"""GPT-ST pre-training losses (GPTST_SPEC section 6) and the two-group gradient clipping.

- Reconstruction: MAE over the MASKED cells only, in raw units, ignoring missing readings; the
  masking rules are :mod:`gptst.metrics`' (a cell counts when its true value is not NaN
  and not ``null_value``).
- KL(p || q): p = the first capsule block's soft assignment (detached: a target, never trained
  through this term), q = softmax of the mask predictor's logits. Averaged per cell, so its scale
  does not grow with batch or graph size (the reference sums it).
- Total = reconstruction + (epoch > E0) * kl_weight * KL.
- The autoencoder and the predictor are clipped separately (the reference clips jointly, so the
  predictor's gradient shrinks the autoencoder's step in the adaptive phase): a stated deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptst.data.scaler import StandardScaler
from gptst.metrics import masked_mae


def reconstruction_loss(
    recon_norm: torch.Tensor,
    x_raw: torch.Tensor,
    mask: torch.Tensor,
    scaler: StandardScaler,
    null_value: float | None,
) -> torch.Tensor:
    """MAE between ``inverse_transform(recon_norm)`` and ``x_raw`` [B, T, N, C] on masked, present cells.

    ``mask`` is bool [B, T, N] (True = masked; broadcast over C) or [B, T, N, C]. Returns a
    differentiable 0 when no masked cell has a present value.
    """
    if recon_norm.shape != x_raw.shape:
        raise ValueError(f"recon {tuple(recon_norm.shape)} and x_raw {tuple(x_raw.shape)} differ in shape")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool (True = masked), got {mask.dtype}")
    if mask.dim() == x_raw.dim() - 1:
        mask = mask.unsqueeze(-1)
    if mask.shape[:-1] != x_raw.shape[:-1] or mask.shape[-1] not in (1, x_raw.shape[-1]):
        raise ValueError(f"mask {tuple(mask.shape)} does not fit x_raw {tuple(x_raw.shape)}")
    # Raw units reach the hundreds (flows): a bfloat16 MAE there would be too coarse to train on.
    recon_raw = scaler.inverse_transform(recon_norm.to(torch.promote_types(recon_norm.dtype, torch.float32)))
    true = x_raw.to(recon_raw.dtype)
    # Unmasked cells become NaN, so masked_mae's own missing-value rule drops them: one masking
    # rule for metrics and this loss, and masked_mae already keeps NaN out of the gradient.
    true = torch.where(mask, true, torch.full_like(true, float("nan")))
    return masked_mae(recon_raw, true, null_value)


def kl_divergence(p_target: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Mean over cells of ``sum_k p_k (log p_k - log q_k)``, q = softmax(q_logits) over the last axis.

    ``p_target`` [..., HS] holds probabilities and is detached; ``q_logits`` [..., HS] gets the
    gradient. Terms with ``p_k == 0`` are 0 (the limit), so exact zeros in p and underflowing q
    give neither NaN nor inf. Computed in at least float32 (a bfloat16 log-softmax is too coarse).
    """
    if p_target.shape != q_logits.shape:
        raise ValueError(f"p {tuple(p_target.shape)} and q_logits {tuple(q_logits.shape)} differ in shape")
    dtype = torch.promote_types(q_logits.dtype, torch.float32)
    p = p_target.detach().to(dtype)
    log_q = F.log_softmax(q_logits.to(dtype), dim=-1)
    positive = p > 0
    # log of 1 where p == 0: keeps -inf out of both branches of the where (a NaN or inf in the
    # discarded branch would still poison the backward pass).
    log_p = torch.log(torch.where(positive, p, torch.ones_like(p)))
    terms = torch.where(positive, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1).mean()


@dataclass(frozen=True)
class PretrainLoss:
    """The loss to backpropagate (``total``) and its parts as floats for logging.

    ``kl`` is the unweighted KL (NaN when it was not computed); ``kl_applied`` says whether
    ``kl_weight * kl`` is part of ``total``.
    """

    total: torch.Tensor
    reconstruction: float
    kl: float
    kl_weight: float
    kl_applied: bool

    @property
    def value(self) -> float:
        """``total`` as a float (from the same read-back as the parts)."""
        return self.reconstruction + (self.kl_weight * self.kl if self.kl_applied else 0.0)


def pretrain_loss(
    recon_norm: torch.Tensor,
    x_raw: torch.Tensor,
    mask: torch.Tensor,
    scaler: StandardScaler,
    null_value: float | None,
    *,
    epoch: int,
    change_epoch: int,
    kl_weight: float,
    p_target: torch.Tensor | None = None,
    q_logits: torch.Tensor | None = None,
    shares: tuple[float, float] = (1.0, 1.0),
) -> PretrainLoss:
    """``reconstruction + (epoch > E0) * kl_weight * KL(p_target || softmax(q_logits))``.

    ``p_target`` (Cw1) and ``q_logits`` (the predictor's logits) are required after E0; up to
    E0 they may be omitted, and when given the KL is only reported, not added.

    For one part of a batch, ``shares`` are its share of the batch's masked present cells and of
    its cells (B x T x N): ``total`` is then this part's term of the batch's loss (the parts'
    totals add up to it), while the reported floats stay the part's own means.
    """
    recon = reconstruction_loss(recon_norm, x_raw, mask, scaler, null_value)
    apply_kl = epoch > change_epoch
    if (p_target is None) != (q_logits is None):
        raise ValueError("pass both p_target and q_logits, or neither")
    if p_target is None or q_logits is None:
        if apply_kl:
            raise ValueError(f"epoch {epoch} > change_epoch {change_epoch}: the KL term needs p_target and q_logits")
        kl = None
        total = recon * shares[0]
    else:
        kl = kl_divergence(p_target, q_logits)
        total = recon * shares[0] + kl_weight * shares[1] * kl if apply_kl else recon * shares[0]
    # One read-back for both parts: a single host sync per step.
    parts = torch.stack([recon.detach(), kl.detach() if kl is not None else torch.full_like(recon, float("nan"))])
    recon_f, kl_f = parts.float().tolist()
    return PretrainLoss(total=total, reconstruction=recon_f, kl=kl_f, kl_weight=float(kl_weight), kl_applied=apply_kl)
