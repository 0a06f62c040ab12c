"""Graph propagation over the node axis, shared by the baselines whose features are [..., N, C]."""

from __future__ import annotations

import torch

# At or above this many channels a batched product per [N, C] matrix is faster than one product
# over all of them, which needs the features permuted to [N, ... * C] and back. Forward and
# backward, N = 207, on the CPU (oneDNN / MKL, 2 threads): [32, 12, 207, C] 9.7 -> 8.2 ms at C = 16
# and 19.7 -> 14.9 ms at C = 32, [32, 207, 32] 1.6 -> 1.2 ms; below it the batched products are
# matrix-vector bound (C = 8: 5.7 against 27.0 ms).
BATCHED_FROM_CHANNELS = 16


def propagate(graph: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``graph @ h`` for every leading index of ``h`` [..., N, C]: node n gathers
    ``sum_m graph[n, m] h[..., m, :]``."""
    # A learned graph keeps the single product: the batched one's gradient for the graph is one
    # [N, N] product per matrix, summed (CCRNN's gptst step: 1,560 -> 1,601 ms with it).
    if h.shape[-1] >= BATCHED_FROM_CHANNELS and not (graph.requires_grad and torch.is_grad_enabled()):
        return torch.matmul(graph, h)
    return torch.einsum("nm,...mc->...nc", graph, h)
