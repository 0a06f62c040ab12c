"""STGCN baseline (BASELINES.md): two ST-Conv blocks (gated temporal conv, Chebyshev graph conv,
temporal conv, layer norm) and an output layer; GPT-ST keeps the time axis with 'same' padding."""

from __future__ import annotations

import pytest
import torch

from gptst.graph.normalize import chebyshev_polynomials, scaled_laplacian
from gptst.models.baselines.registry import build_baseline
from gptst.models.baselines.stgcn import StgcnConfig

from .baseline_checks import (
    assert_dropout_only_in_training,
    assert_forward_backward,
    assert_overfits,
    assert_reference_parameter_count,
    variant_inputs,
    week_graph,
    week_windows,
)

NODES = 30
GPTST_REPO_COUNTS = (277_697, 263_521)  # the GPT-ST repository's, PEMS08 N = 170, in_dim 64 / 1 (BASELINES.md)
# Narrow channels so every test runs in seconds on one thread; the structure (two blocks of
# bottleneck -> output channels, Chebyshev K = 3, temporal kernels 3) is the reference's.
SMALL = StgcnConfig(block_channels=[[8, 16], [8, 32]])


def _build(week, params: StgcnConfig = SMALL, *, in_dim: int = 1, in_steps: int = 12, out_steps: int = 12):
    torch.manual_seed(0)
    return build_baseline(
        "stgcn",
        num_nodes=NODES,
        in_dim=in_dim,
        out_dim=1,
        in_steps=in_steps,
        out_steps=out_steps,
        graph=week_graph(week, nodes=NODES),
        params=params,
    )


@pytest.mark.parametrize("in_dim", [1, 5, 64], ids=["plain", "calendar", "gptst"])
def test_forward_backward_on_real_windows_reaches_every_parameter(week, in_dim):
    """Output [B, 12, N, 1], finite, and a non-zero gradient for every weight, including the
    1x1 residual convolution a block builds when it narrows 64 input channels (dropout on)."""
    x, y, scaler = week_windows(week, windows=4, nodes=NODES)
    model = _build(week, SMALL.model_copy(update={"dropout": 0.3}), in_dim=in_dim)
    assert_forward_backward(model, variant_inputs(week, x, in_dim), y, scaler)


@pytest.mark.parametrize(("in_steps", "out_steps"), [(6, 6), (6, 3), (12, 6), (24, 12)])
def test_other_window_lengths(week, in_steps, out_steps):
    """Equal lengths keep the time-aligned output layer; otherwise the output layer's gated
    convolution spans the whole input window and the head emits every output step at once."""
    x, y, scaler = week_windows(week, windows=4, t_in=in_steps, t_out=out_steps, nodes=NODES)
    model = _build(week, in_steps=in_steps, out_steps=out_steps)
    assert model.output.time_aligned == (in_steps == out_steps)
    assert_forward_backward(model, x, y, scaler)


def test_same_padding_keeps_the_time_axis_and_output_step_t_reads_input_steps_near_t(week):
    """Both ST-Conv blocks leave 12 steps (no 'valid' shrinking), and with 12 -> 12 the output
    step t is predicted from the features at input step t: five kernel-3 temporal convolutions
    (two per block, one in the output layer) make it depend on input steps t-5 .. t+5 exactly."""
    model = _build(week).eval()
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    h = x.permute(0, 3, 1, 2)
    for block, channels in zip(model.blocks, (16, 32), strict=True):
        h = block(h)
        assert h.shape == (2, channels, 12, NODES)

    for t in (0, 5, 11):
        inputs = x.clone().requires_grad_(True)
        model(inputs)[:, t].sum().backward()
        influenced = inputs.grad.abs().sum(dim=(0, 2, 3)) > 0
        expected = (torch.arange(12) - t).abs() <= 5
        assert torch.equal(influenced, expected), f"output step {t} reads input steps {influenced.nonzero().ravel()}"


def test_graph_convolution_uses_chebyshev_polynomials_of_the_scaled_laplacian(week):
    """The blocks propagate with [T_0, T_1, T_2] of 2 L / lambda_max - I (L the normalised
    Laplacian of the road graph), rebuilt from the graph rather than stored as weights."""
    model = _build(week)
    expected = torch.from_numpy(chebyshev_polynomials(scaled_laplacian(week_graph(week, nodes=NODES).adj), 3))
    for block in model.blocks:
        assert torch.equal(block.spatial.polynomials, expected)
    assert not any("polynomials" in key for key in model.state_dict())


def test_overfits_eight_fixed_windows(week):
    """Training loss below 30% of its initial value within 300 Adam steps."""
    x, y, scaler = week_windows(week, windows=8, nodes=NODES)
    assert_overfits(_build(week), x, y, scaler, lr=0.01)


def test_reference_parameter_count():
    """Default params at PEMS08 (N=170, 12 -> 12): 277,697 (in_dim 64) and 263,521 (in_dim 1),
    exactly the GPT-ST repo's counts; the 14,176 difference is the first block's wider gated
    convolution (63 x 3 x 64 = 12,096) and the 1x1 convolution narrowing 64 residual channels
    to 32 (2,080), which a single input channel zero-pads instead."""
    assert assert_reference_parameter_count("stgcn", GPTST_REPO_COUNTS) == (277_697, 263_521)


def test_eval_mode_is_deterministic(week):
    """Dropout (after each block's layer norm) is off in eval mode: same output twice."""
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    model = _build(week, SMALL.model_copy(update={"dropout": 0.5}))
    assert_dropout_only_in_training(model, x)
