"""GPT-ST pre-training losses (GPTST_SPEC section 6): reconstruction MAE on masked, present cells in
raw units; KL(p || q) per cell with p detached; the KL switched on after E0; separate clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gptst.data.scaler import StandardScaler
from gptst.models.gptst.losses import (
    PretrainLoss,
    kl_divergence,
    pretrain_loss,
    reconstruction_loss,
)
from gptst.training.grad import clip_grad_norm

# ------------------------------------------------------------------------------ reconstruction
# One window, one step, three nodes, two channels; scaler mean [10, 100], std [2, 10].
#   node 0 (masked):   recon raw [11, 110] vs true [12, 0 = missing]  -> |11 - 12| = 1; channel 1 dropped
#   node 1 (visible):  recon raw [ 8,  95] vs true [ 9, 97]           -> not counted (not masked)
#   node 2 (masked):   recon raw [14, 100] vs true [NaN, 104]         -> NaN dropped; |100 - 104| = 4
# loss = (1 + 4) / 2 = 2.5; with null_value None the 0 counts: (1 + 110 + 4) / 3.
SCALER = StandardScaler(mean=np.array([10.0, 100.0]), std=np.array([2.0, 10.0]))
RECON_NORM = [[[[0.5, 1.0], [-1.0, -0.5], [2.0, 0.0]]]]
X_RAW = [[[[12.0, 0.0], [9.0, 97.0], [float("nan"), 104.0]]]]
MASK = [[[True, False, True]]]


def small_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    recon = torch.tensor(RECON_NORM, requires_grad=True)
    return recon, torch.tensor(X_RAW), torch.tensor(MASK)


def test_reconstruction_is_the_mae_in_raw_units_on_masked_present_cells():
    recon, x_raw, mask = small_case()
    assert reconstruction_loss(recon, x_raw, mask, SCALER, 0.0).item() == pytest.approx(2.5)
    assert reconstruction_loss(recon, x_raw, mask, SCALER, None).item() == pytest.approx(115 / 3)
    # A [B, T, N, C] mask works the same as the [B, T, N] one.
    full = mask.unsqueeze(-1).expand_as(x_raw)
    assert reconstruction_loss(recon, x_raw, full, SCALER, 0.0).item() == pytest.approx(2.5)


def test_reconstruction_gradient_reaches_only_masked_present_cells():
    recon, x_raw, mask = small_case()
    reconstruction_loss(recon, x_raw, mask, SCALER, 0.0).backward()
    # d/d recon_norm = sign(recon_raw - true) * std / n_counted
    expected = torch.zeros_like(recon)
    expected[0, 0, 0, 0] = -1 * 2.0 / 2
    expected[0, 0, 2, 1] = -1 * 10.0 / 2
    assert torch.isfinite(recon.grad).all()
    assert torch.allclose(recon.grad, expected)


def test_reconstruction_is_zero_not_nan_when_nothing_valid_is_masked():
    recon, x_raw, _ = small_case()
    loss = reconstruction_loss(recon, x_raw, torch.zeros(1, 1, 3, dtype=torch.bool), SCALER, 0.0)
    assert loss.item() == 0.0 and loss.requires_grad
    # Masked cells whose values are all missing (node 2 channel 0 is NaN, node 0 channel 1 is 0):
    x_missing = x_raw.clone()
    x_missing[0, 0, 0, 0] = 0.0
    x_missing[0, 0, 2, 1] = float("nan")
    loss = reconstruction_loss(recon, x_missing, torch.tensor(MASK), SCALER, 0.0)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(recon.grad, torch.zeros_like(recon))


def test_reconstruction_on_real_metr_la_ignores_its_missing_zeros(raw100):
    """The first 100 raw METR-LA steps as 8 windows of 12: real missing readings are zeros."""
    x_raw = torch.from_numpy(raw100.values[:96].reshape(8, 12, 207, 1).copy())
    scaler = StandardScaler.fit(raw100.values, null_value=0.0)
    missing = x_raw == 0.0
    mask = torch.rand(8, 12, 207, generator=torch.Generator().manual_seed(0)) < 0.25
    assert (missing[..., 0] & mask).sum() > 10  # the slice really has masked missing cells
    # Off by exactly 1 raw unit on present masked cells; wildly off everywhere else, which the
    # loss must not see (missing cells and visible cells).
    recon_raw = torch.where(missing | ~mask.unsqueeze(-1), torch.full_like(x_raw, 500.0), x_raw + 1.0)
    recon = scaler.transform(recon_raw).requires_grad_(True)
    loss = reconstruction_loss(recon, x_raw, mask, scaler, raw100.null_value)
    assert loss.item() == pytest.approx(1.0, abs=1e-4)
    loss.backward()
    counted = mask.unsqueeze(-1) & ~missing
    assert torch.equal(recon.grad != 0, counted)


# ------------------------------------------------------------------------------------------ KL
def test_kl_matches_a_hand_computed_value():
    # cell 1: p = [1/2, 1/2, 0], q = softmax(0, 0, 0) = 1/3 each        -> KL = ln(3/2)
    # cell 2: p = [1, 0, 0],     q = softmax(ln 2, 0, 0) = [1/2, 1/4, 1/4] -> KL = ln 2
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]])
    assert kl_divergence(p, logits).item() == pytest.approx((math.log(1.5) + math.log(2.0)) / 2)


def test_kl_agrees_with_torch_kl_div_on_random_cells():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(3 * torch.randn(4, 12, 20, 10, generator=gen), -1)
    logits = torch.randn(4, 12, 20, 10, generator=gen)
    reference = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), p, reduction="none").sum(-1).mean()
    assert kl_divergence(p, logits).item() == pytest.approx(reference.item(), rel=1e-5)


def test_kl_is_finite_with_exact_zeros_and_extreme_logits():
    p = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.25, 0.75, 0.0]])
    # q underflows to exactly 0 where p == 0 (cells 1, 3) and where p == 1 (cell 2)
    logits = torch.tensor([[1e4, -1e4, -1e4], [1e4, -1e4, 1e4], [1e4, 1e4, -1e4]], requires_grad=True)
    assert torch.softmax(logits, -1)[1, 1] == 0.0
    kl = kl_divergence(p, logits)
    kl.backward()
    assert torch.isfinite(kl) and torch.isfinite(logits.grad).all()
    # cell 2: -log q_1 = 2e4 + ln 2 (two logits at 1e4); cell 3: sum p ln(p / (1/2))
    cell3 = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kl.item() == pytest.approx((0.0 + 2e4 + math.log(2.0) + cell3) / 3, rel=1e-6)
    for dtype in (torch.bfloat16, torch.float16):
        assert torch.isfinite(kl_divergence(p.to(dtype), logits.detach().to(dtype)))


def test_kl_trains_the_predictor_only():
    gen = torch.Generator().manual_seed(1)
    cw1_logits = torch.randn(2, 3, 5, 4, generator=gen, requires_grad=True)
    p = torch.softmax(cw1_logits, -1)  # as the model returns it: attached to the autoencoder
    q_logits = torch.randn(2, 3, 5, 4, generator=gen, requires_grad=True)
    kl_divergence(p, q_logits).backward()
    assert cw1_logits.grad is None
    # d KL / d logits = (softmax(logits) - p) / n_cells
    expected = (torch.softmax(q_logits, -1) - p.detach()) / (2 * 3 * 5)
    assert torch.allclose(q_logits.grad, expected, atol=1e-7)


def test_kl_is_a_per_cell_mean_so_batch_and_graph_size_do_not_scale_it():
    gen = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(2, 12, 7, 10, generator=gen), -1)
    logits = torch.randn(2, 12, 7, 10, generator=gen)
    base = kl_divergence(p, logits).item()
    assert kl_divergence(torch.cat([p, p]), torch.cat([logits, logits])).item() == pytest.approx(base, rel=1e-6)
    assert kl_divergence(torch.cat([p, p], 2), torch.cat([logits, logits], 2)).item() == pytest.approx(base, rel=1e-6)


# ------------------------------------------------------------------------------------ total
def loss_inputs(epoch: int, **kw) -> tuple[PretrainLoss, torch.Tensor]:
    recon, x_raw, mask = small_case()
    p = torch.tensor([[[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]]])
    q_logits = torch.zeros(1, 1, 3, 3, requires_grad=True)
    out = pretrain_loss(
        recon,
        x_raw,
        mask,
        SCALER,
        0.0,
        epoch=epoch,
        change_epoch=10,
        kl_weight=0.1,
        p_target=p,
        q_logits=q_logits,
        **kw,
    )
    return out, q_logits


def test_pretrain_loss_adds_the_weighted_kl_only_after_the_change_epoch():
    kl = kl_divergence(torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]), torch.zeros(3, 3)).item()
    before, q_before = loss_inputs(10)
    assert not before.kl_applied
    assert before.total.item() == pytest.approx(2.5) == before.reconstruction
    assert before.kl == pytest.approx(kl)  # still reported for the curves
    before.total.backward()
    assert q_before.grad is None  # the predictor is not trained in the random phase

    after, q_after = loss_inputs(11)
    assert after.kl_applied and after.kl_weight == 0.1
    assert after.total.item() == pytest.approx(2.5 + 0.1 * kl)
    assert after.value == pytest.approx(after.total.item())
    after.total.backward()
    assert q_after.grad is not None and q_after.grad.abs().sum() > 0


def test_pretrain_loss_without_predictor_outputs():
    recon, x_raw, mask = small_case()
    early = pretrain_loss(recon, x_raw, mask, SCALER, 0.0, epoch=3, change_epoch=10, kl_weight=0.1)
    assert early.total.item() == pytest.approx(2.5) and math.isnan(early.kl)
    with pytest.raises(ValueError, match="KL"):
        pretrain_loss(recon, x_raw, mask, SCALER, 0.0, epoch=11, change_epoch=10, kl_weight=0.1)


# ------------------------------------------------------------------------------------ clipping
def two_groups() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    autoencoder, predictor = torch.nn.Linear(4, 4), torch.nn.Linear(4, 3)
    for param in autoencoder.parameters():
        param.grad = torch.full_like(param, 0.1)  # total norm 0.1 * sqrt(20) < 5
    for param in predictor.parameters():
        param.grad = torch.full_like(param, 1e4)  # as from a summed KL on a large graph
    return autoencoder, predictor


def norm(module: torch.nn.Module) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()])))


def test_a_huge_predictor_gradient_does_not_shrink_the_autoencoders():
    autoencoder, predictor = two_groups()
    ae_before = [p.grad.clone() for p in autoencoder.parameters()]
    norm_ae, norm_pred = clip_grad_norm(autoencoder.parameters(), 5.0), clip_grad_norm(predictor.parameters(), 5.0)
    assert norm_ae.item() == pytest.approx(0.1 * math.sqrt(20), rel=1e-5)
    assert norm_pred.item() == pytest.approx(1e4 * math.sqrt(15), rel=1e-5)
    assert all(torch.equal(a, p.grad) for a, p in zip(ae_before, autoencoder.parameters(), strict=False))
    assert norm(predictor) == pytest.approx(5.0, rel=1e-4)
    # What joint clipping (the reference) would have done: the autoencoder's step all but vanishes.
    autoencoder, predictor = two_groups()
    torch.nn.utils.clip_grad_norm_([*autoencoder.parameters(), *predictor.parameters()], 5.0)
    assert norm(autoencoder) < 1e-3


def test_none_disables_clipping_for_a_group():
    autoencoder, predictor = two_groups()
    norm_ae, norm_pred = clip_grad_norm(autoencoder.parameters(), 0.01), clip_grad_norm(predictor.parameters(), None)
    assert norm(autoencoder) == pytest.approx(0.01, rel=1e-4)
    assert norm(predictor) == pytest.approx(1e4 * math.sqrt(15), rel=1e-5) == norm_pred.item()
    assert norm_ae.item() == pytest.approx(0.1 * math.sqrt(20), rel=1e-5)
