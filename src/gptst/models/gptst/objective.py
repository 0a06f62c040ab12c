"""One pre-training step's loss: predictor labels -> adaptive mask -> masked pass -> losses.

An ``nn.Module`` so that data-parallel training wraps it whole: the predictor pass, the mask and
the masked pass are one forward call, as DistributedDataParallel requires.
"""

from __future__ import annotations

import torch
from torch import nn

from gptst.data.batch import Batch
from gptst.data.scaler import StandardScaler
from gptst.models.gptst.losses import PretrainLoss, pretrain_loss
from gptst.models.gptst.masker import AdaptiveMasker
from gptst.models.gptst.model import GPTST


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
        logits = self.model.predict_clusters(batch.x, batch.cal) if self.uses_predictor(epoch) else None
        # The random strategy (an ablation) still trains the predictor but never reads its labels.
        labels = logits.detach().argmax(dim=-1) if logits is not None else None
        mask = self.masker(labels, epoch, shape=batch.x.shape[:3], device=batch.x.device)
        out = self.model(batch.x, batch.cal, mask, with_hidden=False)
        loss = pretrain_loss(
            out.recon,
            batch.x_raw,
            mask,
            self.scaler,
            self.null_value,
            epoch=epoch,
            # Without capsule blocks the KL term never applies: its E0 is "never".
            change_epoch=self.change_epoch if self.model.cfg.use_clusters else epoch,
            kl_weight=self.kl_weight,
            p_target=out.cw1 if logits is not None else None,
            q_logits=logits,
        )
        return loss, mask
