"""The gated fusion of the gptst variants (GPTST_SPEC section 7) computes the spec's formula, with
the same parameters and gradients, while doing the low-rank signal's products on its factors."""

from __future__ import annotations

import pytest
import torch

from gptst.models.forecaster import GatedFusion


def spec_fusion(fusion: GatedFusion, x: torch.Tensor, h_pre: torch.Tensor) -> torch.Tensor:
    """``Linear(z * H_pre + (1 - z) * X_lin)``, ``z = sigmoid(W1 H_pre + W2 X_lin + b)``, literally."""
    x_lin = fusion.signal(x)
    z = torch.sigmoid(fusion.gate_pre(h_pre) + fusion.gate_signal(x_lin))
    return fusion.out(z * h_pre + (1 - z) * x_lin)


@pytest.mark.parametrize("channels", [1, 2])
def test_the_fusion_equals_the_spec_formula_and_its_gradients(channels):
    torch.manual_seed(0)
    fusion = GatedFusion(channels, 16).double()
    x = torch.randn(3, 12, 7, channels, dtype=torch.float64, requires_grad=True)
    h_pre = torch.randn(3, 12, 7, 16, dtype=torch.float64)
    ours, spec = fusion(x, h_pre), spec_fusion(fusion, x, h_pre)
    torch.testing.assert_close(ours, spec, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(ours)
    inputs = [x, *fusion.parameters()]
    for got, want in zip(
        torch.autograd.grad((ours * weights).sum(), inputs),
        torch.autograd.grad((spec * weights).sum(), inputs),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_the_fusion_keeps_the_four_linear_layers_of_the_spec():
    fusion = GatedFusion(1, 8)
    assert sorted(fusion.state_dict()) == [
        "gate_pre.weight",
        "gate_signal.bias",
        "gate_signal.weight",
        "out.bias",
        "out.weight",
        "signal.bias",
        "signal.weight",
    ]


def test_the_fusion_kernel_passes_gradcheck_for_every_input():
    from gptst.models.forecaster import _GatedMix

    torch.manual_seed(2)
    rows, c, d = 6, 3, 4
    inputs = [
        torch.randn(rows, d, dtype=torch.float64, requires_grad=True),  # H_pre
        torch.randn(rows, c, dtype=torch.float64, requires_grad=True),  # [X, 1]
        *(torch.randn(d, d, dtype=torch.float64, requires_grad=True) for _ in range(2)),  # W1, W_o
        *(torch.randn(c, d, dtype=torch.float64, requires_grad=True) for _ in range(3)),  # P_lin, P_gate, P_out
    ]
    assert torch.autograd.gradcheck(_GatedMix.apply, inputs)


def test_under_autocast_the_fusion_runs_in_its_dtype_and_keeps_float32_gradients():
    """The GPU path (bfloat16 autocast): inputs and parameters are cast to the autocast dtype for
    the kernel's products, the forecast is within bfloat16's rounding of float32's, and the
    parameters' gradients arrive in float32."""
    torch.manual_seed(3)
    fusion = GatedFusion(1, 16)
    x, h_pre = torch.randn(2, 12, 7, 1), torch.randn(2, 12, 7, 16)
    reference = fusion(x, h_pre)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fusion(x, h_pre)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fusion.parameters())
