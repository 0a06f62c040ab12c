"""One pre-training step's loss: predictor labels -> adaptive mask -> masked pass -> losses.

An ``nn.Module`` so that data-parallel training wraps it whole: the predictor pass, the mask and
the masked pass are one forward call, as DistributedDataParallel requires.
"""

from __future__ import annotations

import torch
from torch import nn

from gptst.data.batch import Batch
from gptst.data.scaler import StandardScaler
from gptst.metrics import valid_mask
from gptst.models.gptst.losses import PretrainLoss, pretrain_loss
from gptst.models.gptst.masker import AdaptiveMasker
from gptst.models.gptst.model import GPTST, GptstOutput


class PretrainObjective(nn.Module):
    """Computes the GPT-ST pre-training loss of a batch at a given epoch.

    Up to the change epoch E0 the mask is uniform and the predictor is not run (it has no loss
    yet); after E0 the predictor's argmax labels drive the adaptive mask, and its logits are
    trained by KL towards the first capsule block's assignment Cw1 of the same masked pass.
    """

    def __init__(
        self,
        model: GPTST,
        masker: AdaptiveMasker,
        scaler: StandardScaler,
        null_value: float | None,
        kl_weight: float,
        change_epoch: int,
    ) -> None:
        super().__init__()
        self.model = model
        self.masker = masker
        self.scaler = scaler
        self.null_value = null_value
        self.kl_weight = kl_weight
        self.change_epoch = change_epoch

    def uses_predictor(self, epoch: int) -> bool:
        """After E0 the predictor is trained (KL); without capsule blocks there is no Cw1 to learn."""
        return epoch > self.change_epoch and self.model.cfg.use_clusters

    def forward(self, batch: Batch, epoch: int) -> tuple[PretrainLoss, torch.Tensor]:
        """The loss parts and the mask [B, T, N] used."""
        logits, mask = self._predict_and_mask(batch, epoch)
        out = self.model(batch.x, batch.cal, mask, with_hidden=False)
        return self._loss(out, batch.x_raw, mask, epoch, logits), mask

    def backward_in_parts(self, batch: Batch, epoch: int) -> tuple[PretrainLoss, torch.Tensor]:
        """Backpropagate ``forward(batch, epoch)``'s total one part of the batch at a time
        (:meth:`GPTST.backward_parts`); returns the batch's loss (``total`` detached) and mask.

        The predictor pass and the mask are the whole batch's, as in :meth:`forward`; each part's
        masked pass is then run, weighted by its share of the loss and backpropagated before the
        next, so only one part's activations are alive and they stay cache-sized. The gradients
        equal those of ``forward(batch, epoch)[0].total.backward()`` up to summation order.
        """
        logits, mask = self._predict_and_mask(batch, epoch)
        q = logits.detach().requires_grad_() if logits is not None else None
        cells = mask.unsqueeze(-1) & valid_mask(batch.x_raw, self.null_value)
        total_cells, windows = int(cells.sum()), batch.x.shape[0]
        recon = kl = total = 0.0
        part_loss = None
        for sl in self.model.backward_parts(batch.x):
            out = self.model(batch.x[sl], batch.cal[sl], mask[sl], with_hidden=False)
            recon_share = int(cells[sl].sum()) / total_cells if total_cells else 0.0
            part_q = q[sl] if q is not None else None
            shares = (recon_share, (sl.stop - sl.start) / windows)
            part_loss = self._loss(out, batch.x_raw[sl], mask[sl], epoch, part_q, shares)
            part_loss.total.backward()
            recon += recon_share * part_loss.reconstruction
            kl += (sl.stop - sl.start) / windows * part_loss.kl
            total += float(part_loss.total.detach())
        if logits is not None and q is not None and q.grad is not None:
            logits.backward(q.grad)  # the predictor's graph once, with every part's gradient
        assert part_loss is not None  # a batch has at least one part
        return (
            PretrainLoss(
                total=torch.tensor(total, dtype=torch.float64),
                reconstruction=recon,
                kl=kl,
                kl_weight=part_loss.kl_weight,
                kl_applied=part_loss.kl_applied,
            ),
            mask,
        )

    def _loss(
        self,
        out: GptstOutput,
        x_raw: torch.Tensor,
        mask: torch.Tensor,
        epoch: int,
        q_logits: torch.Tensor | None,
        shares: tuple[float, float] = (1.0, 1.0),
    ) -> PretrainLoss:
        return pretrain_loss(
            out.recon,
            x_raw,
            mask,
            self.scaler,
            self.null_value,
            epoch=epoch,
            # Without capsule blocks the KL term never applies: its E0 is "never".
            change_epoch=self.change_epoch if self.model.cfg.use_clusters else epoch,
            kl_weight=self.kl_weight,
            p_target=out.cw1 if q_logits is not None else None,
            q_logits=q_logits,
            shares=shares,
        )

    def _predict_and_mask(self, batch: Batch, epoch: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The predictor's logits (after E0) and the batch's mask [B, T, N]."""
        logits = self.model.predict_clusters(batch.x, batch.cal) if self.uses_predictor(epoch) else None
        # The random strategy (an ablation) still trains the predictor but never reads its labels.
        labels = logits.detach().argmax(dim=-1) if logits is not None else None
        return logits, self.masker(labels, epoch, shape=batch.x.shape[:3], device=batch.x.device)
