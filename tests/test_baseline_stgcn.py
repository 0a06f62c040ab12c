"""STGCN baseline (BASELINES.md): two ST-Conv blocks (gated temporal conv, Chebyshev graph conv,
temporal conv, layer norm) with 'same' padding as in GPT-ST, and an output layer whose head spans
the whole window, so every forecast step reads the latest readings."""

from __future__ import annotations

import pytest
import torch

from gptst.graph.normalize import chebyshev_polynomials, scaled_laplacian
from gptst.models.baselines.stgcn import StgcnConfig

from .baseline_checks import (
    assert_dropout_only_in_training,
    assert_forward_backward,
    assert_overfits,
    assert_reference_parameter_count,
    seeded_baseline,
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
    return seeded_baseline(
        "stgcn", week_graph(week, nodes=NODES), params, in_dim=in_dim, in_steps=in_steps, out_steps=out_steps
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
    """Any window lengths: the head's kernel is the input length and it emits every output step at once."""
    x, y, scaler = week_windows(week, windows=4, t_in=in_steps, t_out=out_steps, nodes=NODES)
    model = _build(week, in_steps=in_steps, out_steps=out_steps)
    assert model.output.head.kernel_size == (in_steps, 1)
    assert_forward_backward(model, x, y, scaler)


def test_same_padding_keeps_the_time_axis_and_every_forecast_step_reads_every_input_step(week):
    """Both ST-Conv blocks leave 12 steps (no 'valid' shrinking), and each of the 12 forecast
    steps depends on all 12 input steps: the one-step-ahead forecast sees the latest reading
    (GPT-ST's time-aligned head made step 1 read input steps 1-6 only, the oldest)."""
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
        assert influenced.all(), f"output step {t} reads input steps {influenced.nonzero().ravel()} only"


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
    """Default params at PEMS08 (N=170, 12 -> 12): 296,012 (in_dim 64) and 281,836 (in_dim 1)
    against the GPT-ST repo's 277,697 and 263,521 (+6.6% / +6.9%). The whole difference is the
    head: it collapses the 12 steps (kernel 12 x 128 channels -> 12 forecast steps, 18,444
    weights) where the repo's 1x1 conv maps 128 channels to one step (129). Between in_dims the
    14,176 difference is the repo's: the first block's wider gated convolution (63 x 3 x 64 =
    12,096) and the 1x1 convolution narrowing 64 residual channels to 32 (2,080)."""
    assert assert_reference_parameter_count("stgcn", GPTST_REPO_COUNTS) == (296_012, 281_836)


def test_eval_mode_is_deterministic(week):
    """Dropout (after each block's layer norm) is off in eval mode: same output twice."""
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    model = _build(week, SMALL.model_copy(update={"dropout": 0.5}))
    assert_dropout_only_in_training(model, x)
