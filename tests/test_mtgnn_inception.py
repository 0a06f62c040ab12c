"""MTGNN's dilated inception, run as one convolution, equals its branches' convolutions cropped to
the newest steps (values and gradients)."""

from __future__ import annotations

import torch

from gptst.models.baselines.mtgnn import DilatedInception


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad((out * weights).sum(), inputs)


def test_the_dilated_inception_equals_its_branches_cropped_to_the_newest_steps():
    torch.manual_seed(1)
    inception = DilatedInception(5, 8, dilation=2).double()
    x = torch.randn(2, 5, 7, 19, dtype=torch.float64, requires_grad=True)
    branches = [branch(x) for branch in inception.branches]
    steps = min(out.shape[-1] for out in branches)
    spec = torch.cat([out[..., -steps:] for out in branches], dim=1)
    ours = inception(x)
    torch.testing.assert_close(ours, spec, rtol=1e-12, atol=1e-12)
    inputs = [x, *inception.parameters()]
    weights = torch.randn_like(spec)
    for got, want in zip(_grads(ours, inputs, weights), _grads(spec, inputs, weights), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # The padding taps are not parameters: each branch keeps its own kernel width.
    assert [branch.weight.shape[-1] for branch in inception.branches] == [2, 3, 6, 7]
