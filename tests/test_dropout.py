"""The baselines' dropout: nn.Dropout's behaviour (inverted scaling, identity in eval or at p=0),
with a mask drawn as uniform >= p on the CPU."""

from __future__ import annotations

import pytest
import torch

from gptst.models.dropout import Dropout, dropout, relu_dropout


def test_training_zeroes_a_share_p_and_scales_the_rest_by_one_over_one_minus_p():
    torch.manual_seed(0)
    x = torch.full((200_000,), 2.0)
    out = dropout(x, 0.3, training=True)
    dropped = out == 0
    assert dropped.float().mean().item() == pytest.approx(0.3, abs=0.005)
    torch.testing.assert_close(out[~dropped], torch.full_like(out[~dropped], 2.0 / 0.7))
    assert out.mean().item() == pytest.approx(2.0, rel=0.01)  # the expectation is kept


def test_the_gradient_is_the_same_scaled_mask_as_the_forward():
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)
    out = dropout(x, 0.5, training=True)
    (grad,) = torch.autograd.grad(out.sum(), x)
    kept = out != 0
    torch.testing.assert_close(grad[kept], torch.full_like(grad[kept], 2.0))
    assert (grad[~kept] == 0).all()


def test_eval_mode_and_p_zero_return_the_input_itself():
    x = torch.randn(4, 5)
    layer = Dropout(0.3).eval()
    assert layer(x) is x
    assert dropout(x, 0.0, training=True) is x


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_a_probability_outside_zero_to_one_is_refused(p):
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(p)


def test_every_position_of_the_random_words_drops_the_same_share():
    """Four elements share one 64-bit draw: a position that read the sign bit would drop more."""
    torch.manual_seed(2)
    out = dropout(torch.ones(400_000), 0.5, training=True).view(-1, 4)
    shares = (out == 0).float().mean(dim=0)
    torch.testing.assert_close(shares, torch.full((4,), 0.5), atol=0.006, rtol=0)
    odd_shape = torch.ones(3, 5, 7).transpose(0, 2)  # 105 elements, not a multiple of 4, not contiguous
    assert set(dropout(odd_shape, 0.2, training=True).unique().tolist()) <= {0.0, 1.25}


@pytest.mark.parametrize("training", [True, False])
def test_relu_dropout_is_dropout_of_relu_with_the_same_draws_and_gradient(training):
    """One mask for both: the same forecast values and input gradient as ``dropout(relu(x))``
    from the same generator state, in training and eval mode."""
    x = torch.randn(5, 6, 7, requires_grad=True)
    x.data[0] = 0.0  # relu's kink: no gradient through an exact zero either way
    torch.manual_seed(3)
    ours = relu_dropout(x, 0.4, training)
    (ours_grad,) = torch.autograd.grad(ours, x, torch.arange(1, ours.numel() + 1, dtype=x.dtype).view(ours.shape))
    torch.manual_seed(3)
    spec = dropout(torch.relu(x), 0.4, training)
    (spec_grad,) = torch.autograd.grad(spec, x, torch.arange(1, spec.numel() + 1, dtype=x.dtype).view(spec.shape))
    assert torch.equal(ours, spec) and torch.equal(ours_grad, spec_grad)
    assert (ours >= 0).all()
    if training:
        assert 0 < (spec[x > 0] == 0).float().mean() < 1, "some positive inputs dropped, not all"
