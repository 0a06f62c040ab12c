"""The baselines' shared graph propagation: ``graph @ h`` over the node axis, whichever product
computes it."""

from __future__ import annotations

import pytest
import torch

from gptst.models.baselines._propagation import BATCHED_FROM_CHANNELS, propagate


@pytest.mark.parametrize("channels", [1, BATCHED_FROM_CHANNELS - 1, BATCHED_FROM_CHANNELS, 40])
@pytest.mark.parametrize("learned", [False, True], ids=["fixed-graph", "learned-graph"])
@pytest.mark.parametrize("leading", [(3,), (2, 4)], ids=["[B,N,C]", "[B,T,N,C]"])
def test_propagate_is_the_graph_product_over_nodes_with_its_gradients(channels, learned, leading):
    """Each node gathers sum_m graph[n, m] h[m]: values and the gradients of h (and of a learned
    graph) equal the explicit sum, on both sides of the channel threshold (float64)."""
    generator = torch.Generator().manual_seed(channels)
    nodes = 11
    graph = torch.rand(nodes, nodes, dtype=torch.float64, generator=generator).requires_grad_(learned)
    h = torch.randn(*leading, nodes, channels, dtype=torch.float64, generator=generator, requires_grad=True)
    ours = propagate(graph, h)
    spec = (graph[:, :, None] * h.unsqueeze(-3)).sum(dim=-2)  # [..., n, m, c] summed over m
    torch.testing.assert_close(ours, spec, rtol=1e-12, atol=1e-12)
    inputs = [h, graph] if learned else [h]
    weights = torch.randn(ours.shape, dtype=torch.float64, generator=generator)
    for got, want in zip(
        torch.autograd.grad((ours * weights).sum(), inputs),
        torch.autograd.grad((spec * weights).sum(), inputs),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
