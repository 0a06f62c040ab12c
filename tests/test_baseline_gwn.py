"""Graph WaveNet baseline (BASELINES.md): gated dilated causal TCN, diffusion graph convolution
over the adaptive adjacency (GPT-ST) or transitions + adaptive (paper), skips, end convolutions."""

from __future__ import annotations

import pytest
import torch

from gptst.graph.normalize import double_transition
from gptst.models.baselines.gwn import GwnConfig

from .baseline_checks import (
    assert_dropout_only_in_training,
    assert_forward_backward,
    assert_overfits,
    assert_reference_parameter_count,
    assert_same_function_and_gradients,
    seeded_baseline,
    variant_inputs,
    week_graph,
    week_windows,
)

NODES = 30
GPTST_REPO_COUNTS = (277_876, 275_860)  # the GPT-ST repository's, PEMS08 N = 170, in_dim 64 / 1 (BASELINES.md)
# Narrow channels so every test runs in seconds on one thread; the structure (4 blocks x 2
# layers, kernel 2, receptive field 13) is the reference's.
SMALL = GwnConfig(residual_channels=8, dilation_channels=8, skip_channels=16, end_channels=32, adaptive_dim=4)


def _build(week, params: GwnConfig = SMALL, *, in_dim: int = 1, in_steps: int = 12, out_steps: int = 12):
    return seeded_baseline(
        "gwn", week_graph(week, nodes=NODES), params, in_dim=in_dim, in_steps=in_steps, out_steps=out_steps
    )


@pytest.mark.parametrize("in_dim", [1, 5, 64], ids=["plain", "calendar", "gptst"])
def test_forward_backward_on_real_windows_reaches_every_parameter(week, in_dim):
    """Output [B, 12, N, 1], finite, and a non-zero gradient for every weight, including both
    node-embedding tables of the adaptive adjacency (dropout 0.3 on, the GPT-ST setting)."""
    x, y, scaler = week_windows(week, windows=4, nodes=NODES)
    model = _build(week, in_dim=in_dim)
    assert_forward_backward(model, variant_inputs(week, x, in_dim), y, scaler)


def test_paper_preset_uses_forward_and_backward_transitions_plus_adaptive(week):
    """``transition+adaptive``: the fixed supports are the road graph's forward D_out^-1 A and
    backward D_in^-1 A^T transitions, followed by the adaptive adjacency; it trains end to end."""
    x, y, scaler = week_windows(week, windows=4, nodes=NODES)
    model = _build(week, SMALL.model_copy(update={"graph": "transition+adaptive"}))
    forward, backward = double_transition(week_graph(week, nodes=NODES).adj)
    supports = model.supports()
    assert len(supports) == 3
    assert torch.equal(supports[0], torch.from_numpy(forward))
    assert torch.equal(supports[1], torch.from_numpy(backward))
    assert "support_0" not in model.state_dict(), "graph-derived supports are rebuilt, not stored"
    assert_forward_backward(model, x, y, scaler)


@pytest.mark.parametrize(
    ("in_steps", "out_steps", "layers", "field"),
    [(6, 3, 2, 13), (12, 6, 2, 13), (24, 6, 3, 29)],
)
def test_other_window_lengths(week, in_steps, out_steps, layers, field):
    """Inputs shorter than the receptive field are left-padded with zeros as in the reference
    (6 and 12 steps into 13); 24 steps need a longer field: 4 blocks x 3 layers see 29."""
    x, y, scaler = week_windows(week, windows=4, t_in=in_steps, t_out=out_steps, nodes=NODES)
    model = _build(week, SMALL.model_copy(update={"layers": layers}), in_steps=in_steps, out_steps=out_steps)
    assert model.receptive_field == field
    assert_forward_backward(model, x, y, scaler)


def test_receptive_field_covers_the_input(week):
    """The default stack (4 blocks x 2 layers, kernel 2) sees 1 + 4 x (1 + 2) = 13 steps, so
    the output depends on the earliest input step of every node; an input longer than the
    field would leave steps unseen and is refused at build time."""
    model = _build(week, SMALL.model_copy(update={"dropout": 0.0})).eval()
    assert model.receptive_field == 13
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    x = x.clone().requires_grad_(True)
    model(x).sum().backward()
    earliest = x.grad[:, 0, :, 0].abs().sum(dim=0)
    assert (earliest > 0).all(), "some node's first input step does not reach the output"
    with pytest.raises(ValueError, match="13 input steps"):
        _build(week, in_steps=14)


def test_adaptive_adjacency_is_row_stochastic(week):
    """softmax(relu(E1 E2)) over each row: non-negative, rows sum to 1."""
    adaptive = _build(week).supports()[-1].detach()
    assert adaptive.shape == (NODES, NODES)
    assert (adaptive >= 0).all()
    torch.testing.assert_close(adaptive.sum(dim=1), torch.ones(NODES))


def test_overfits_eight_fixed_windows(week):
    """Training loss below 30% of its initial value within 300 Adam steps."""
    x, y, scaler = week_windows(week, windows=8, nodes=NODES)
    model = _build(week, SMALL.model_copy(update={"dropout": 0.0}))
    assert_overfits(model, x, y, scaler, lr=0.01)


def test_reference_parameter_count():
    """Default params at PEMS08 (N=170, 12 -> 12): 266,260 (in_dim 64) and 264,244 (in_dim 1)
    vs the GPT-ST repo's 277,876 / 275,860 (-4.2%). The 11,616 difference is weights the
    reference builds but that can never get a gradient, which we do not build: the 8 plain
    residual 1x1 convolutions (32x32 + 32 each = 8,448; unused when the graph convolution is
    on) and the last layer's graph convolution (3,104) and batch norm (64), whose output only
    feeds the residual stream after the last skip has been taken. Everything else matches."""
    assert assert_reference_parameter_count("gwn", GPTST_REPO_COUNTS) == (266_260, 264_244)


def test_eval_mode_is_deterministic(week):
    """Dropout (0.3) and batch statistics are off in eval mode: same input, same output twice."""
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    model = _build(week)
    assert_dropout_only_in_training(model, x)


def _reference_forward(model, x: torch.Tensor) -> torch.Tensor:
    """The reference's forward pass: every layer's skip convolution over all positions, the sum
    cut to the newest positions layer by layer."""
    h = torch.nn.functional.pad(x.permute(0, 3, 2, 1), (model.receptive_field - x.shape[1], 0))
    h = model.start_conv(h)
    supports = model.supports()
    skip_sum = None
    for index in range(len(model.filter_convs)):
        residual = h
        gated = torch.tanh(model.filter_convs[index](residual)) * torch.sigmoid(model.gate_convs[index](residual))
        skip = model.skip_convs[index](gated)
        skip_sum = skip if skip_sum is None else skip + skip_sum[..., -skip.shape[-1] :]
        if index < len(model.graph_convs):
            h = model.norms[index](model.graph_convs[index](gated, supports) + residual[..., -gated.shape[-1] :])
    out = model.end_conv_2(torch.relu(model.end_conv_1(torch.relu(skip_sum))))
    return out.reshape(x.shape[0], model.out_steps, model.out_dim, model.num_nodes).transpose(2, 3)


@pytest.mark.parametrize("in_steps", [12, 13, 5])
def test_skips_computed_at_the_newest_position_only_match_the_reference_all_positions_cut(week, in_steps):
    """Only the newest position of each layer's skip reaches the output, so the model computes
    that one: forecast and every gradient equal the reference's all-positions computation
    (float64, training mode: batch statistics over all positions, dropout off)."""
    x, _, _ = week_windows(week, windows=3, t_in=in_steps, nodes=NODES)
    model = _build(week, SMALL.model_copy(update={"dropout": 0.0}), in_steps=in_steps).double().train()
    x = x.double()
    assert_same_function_and_gradients(model, x, _reference_forward)
