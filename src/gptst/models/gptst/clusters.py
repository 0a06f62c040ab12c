"""Which capsule cluster the pre-trained encoder puts each node in, and whether that holds all day.

The encoder's first cluster layer assigns every (step, node) to one of ``HS`` clusters (``cw1``
[B,T,N,HS] of :class:`GptstOutput`, on the unmasked input); a node's cluster at a step is the
argmax. Over a set of windows this module counts, per hour of day, how often each node lands in
each cluster. A node's *modal cluster* is its most frequent one over all steps; it is *stable*
when its modal cluster within every hour of day that the windows cover equals its overall one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from gptst.data.batch import WindowBatcher
from gptst.models.gptst.model import GPTST

HOURS = 24


@dataclass(frozen=True)
class ClusterMap:
    counts: np.ndarray  # int64 [24, N, HS]: steps of hour h at which node n was in cluster k
    node_ids: list[str]

    @property
    def modal(self) -> np.ndarray:
        """int64 [N]: each node's most frequent cluster over all steps."""
        return np.asarray(self.counts.sum(axis=0).argmax(axis=1), dtype=np.int64)

    @property
    def hours(self) -> np.ndarray:
        """int64 [H]: the hours of day the windows cover."""
        return np.flatnonzero(self.counts.sum(axis=(1, 2)) > 0)

    @property
    def hourly_modal(self) -> np.ndarray:
        """int64 [H, N]: each node's most frequent cluster within each covered hour."""
        return np.asarray(self.counts[self.hours].argmax(axis=2), dtype=np.int64)

    @property
    def stable(self) -> np.ndarray:
        """bool [N]: the node's modal cluster is the same in every covered hour of day."""
        return np.all(self.hourly_modal == self.modal[None, :], axis=0)

    def as_dict(self) -> dict[str, object]:
        return {
            "node_ids": self.node_ids,
            "clusters": int(self.counts.shape[2]),
            "modal": self.modal.tolist(),
            "stable": self.stable.tolist(),
            "stable_share": float(self.stable.mean()),
            "hours": self.hours.tolist(),
        }


@torch.no_grad()
def cluster_map(
    model: GPTST,
    batcher: WindowBatcher,
    starts: np.ndarray,
    timestamps: pd.DatetimeIndex,
    node_ids: list[str],
    *,
    batch_size: int = 32,
) -> ClusterMap:
    """Cluster counts of ``model`` over the input steps of the windows starting at ``starts``."""
    if not model.cfg.use_clusters:
        raise ValueError("use_clusters is false: the encoder has no cluster layers to map")
    was_training = model.training
    model.eval()
    hour_of_step = torch.as_tensor(np.asarray(timestamps.hour, dtype=np.int64))
    n_nodes, n_clusters = len(node_ids), model.cfg.clusters
    counts = torch.zeros(HOURS * n_nodes * n_clusters, dtype=torch.int64)
    node = torch.arange(n_nodes)
    try:
        for i in range(0, len(starts), batch_size):
            batch = batcher.gather(starts[i : i + batch_size])
            cw1 = model(batch.x, batch.cal).cw1
            assert cw1 is not None  # use_clusters is checked above
            cluster = cw1.argmax(dim=-1).cpu()  # [B, T, N]
            steps = batch.start.cpu()[:, None] + torch.arange(cluster.shape[1])[None, :]
            hour = hour_of_step[steps]  # [B, T]
            flat = (hour[:, :, None] * n_nodes + node[None, None, :]) * n_clusters + cluster
            counts += torch.bincount(flat.reshape(-1), minlength=counts.numel())
    finally:
        model.train(was_training)
    return ClusterMap(counts=counts.reshape(HOURS, n_nodes, n_clusters).numpy(), node_ids=list(node_ids))
