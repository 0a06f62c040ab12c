"""The pre-training objective end to end on the real METR-LA week: it learns, it is
reproducible, and in the adaptive phase every part of the model is trained."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gptst.data.batch import WindowBatcher
from gptst.data.scaler import fit_train_scaler
from gptst.data.windows import make_splits
from gptst.models.gptst import model as model_module
from gptst.models.gptst.masker import AdaptiveMasker
from gptst.models.gptst.model import build_model
from gptst.models.gptst.objective import PretrainObjective
from gptst.params import GptstModelParams, PretrainParams, SplitRatios, WindowParams
from gptst.training.grad import clip_grad_norm
from gptst.training.pretrain import gptst_config, pretrain_masker


@pytest.fixture(scope="module")
def setup(week):
    splits = make_splits(len(week.timestamps), SplitRatios(), WindowParams())
    scaler = fit_train_scaler(week, splits.steps)
    batcher = WindowBatcher.from_series(week, scaler, 12, 12)
    return week, splits, scaler, batcher


def build(scaler, num_nodes: int, seed: int = 0, **model) -> tuple:
    """A small GPT-ST (CPU-sized) with its masker and objective; E0 = 2 of 6 epochs."""
    pre = PretrainParams(epochs=6, change_epoch_frac=1 / 3, model=GptstModelParams(hidden=32, embed=8, **model))
    zero = tuple(float(v) for v in scaler.transform(torch.zeros(1, 1)).reshape(-1))
    cfg = gptst_config(pre.model, num_nodes=num_nodes, t_in=12, channels=1, zero_value=zero)
    torch.manual_seed(seed)
    net = build_model(cfg)
    masker = pretrain_masker(pre, seed=seed)
    return net, masker, PretrainObjective(net, masker, scaler, 0.0, pre.kl_weight, pre.change_epoch), pre


def train_steps(objective, net, pre, batches, epochs):
    optimiser = torch.optim.Adam(net.parameters(), lr=pre.lr)
    ae, pred = net.autoencoder_parameters(), net.predictor_parameters()
    losses, masks = [], []
    for batch, epoch in zip(batches, epochs, strict=True):
        optimiser.zero_grad(set_to_none=True)
        loss, mask = objective(batch, epoch)
        loss.total.backward()
        clip_grad_norm(ae, pre.grad_clip), clip_grad_norm(pred, pre.predictor_grad_clip)
        optimiser.step()
        losses.append(loss.total.detach().clone())
        masks.append(mask.clone())
    return losses, masks


def test_in_the_adaptive_phase_one_backward_reaches_every_parameter(setup):
    week, splits, scaler, batcher = setup
    net, masker, objective, pre = build(scaler, len(week.node_ids))
    batch = batcher.gather(splits.train.starts[:8])
    loss, mask = objective(batch, epoch=pre.change_epoch + 1)
    assert loss.kl_applied and np.isfinite(loss.kl)
    loss.total.backward()
    dead = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []
    assert int(mask.sum()) == round(0.25 * mask.numel())


def test_the_same_seed_gives_bit_identical_masks_and_losses(setup):
    week, splits, scaler, batcher = setup
    runs = []
    for _ in range(2):
        net, masker, objective, pre = build(scaler, len(week.node_ids), seed=7)
        batches = [batcher.gather(splits.train.starts[i : i + 8]) for i in (0, 100, 200)]
        runs.append(train_steps(objective, net, pre, batches, epochs=[1, 3, 4]))  # random, then adaptive
    (losses_a, masks_a), (losses_b, masks_b) = runs
    assert all(torch.equal(a, b) for a, b in zip(masks_a, masks_b, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(losses_a, losses_b, strict=True))
    other = build(scaler, len(week.node_ids), seed=8)
    assert not torch.equal(other[1](None, 1, shape=tuple(masks_a[0].shape)), masks_a[0])


def test_a_few_hundred_steps_reconstruct_better_than_each_nodes_training_mean(setup):
    """Validation: a uniform random mask at ratio 0.25 drawn once from seed + 1 (the spec's
    checkpoint-selection mask); the baseline predicts each node's training-split mean."""
    week, splits, scaler, batcher = setup
    net, masker, objective, pre = build(scaler, len(week.node_ids), seed=0)
    generator = torch.Generator().manual_seed(1)
    steps, batch_size = 200, 8
    starts = splits.train.starts
    batches = (
        batcher.gather(starts[torch.randint(len(starts), (batch_size,), generator=generator).numpy()])
        for _ in range(steps)
    )
    # epochs advance through the curriculum: random phase first, then adaptive with KL
    epochs = [1 + (6 * i) // steps for i in range(steps)]
    train_steps(objective, net, pre, batches, epochs)

    val = batcher.gather(splits.val.starts)
    val_masker = AdaptiveMasker(0.25, strategy="random", seed=1)
    mask = val_masker(None, 0, shape=tuple(val.x.shape[:3]))
    net.eval()
    with torch.no_grad():
        recon = scaler.inverse_transform(net(val.x, val.cal, mask).recon)
    train_values = torch.from_numpy(week.values[splits.steps.train.start : splits.steps.train.stop])
    node_mean = torch.where(train_values == 0, torch.nan, train_values).nanmean(dim=0)  # [N, C]
    truth = val.x_raw[mask]
    valid = truth != 0
    model_mae = (recon[mask] - truth).abs()[valid].mean().item()
    mean_mae = (node_mean.expand_as(val.x_raw)[mask] - truth).abs()[valid].mean().item()
    assert model_mae < mean_mae, f"model {model_mae:.3f} vs node mean {mean_mae:.3f} mph"


@pytest.mark.parametrize("epoch", [1, 3], ids=["uniform phase", "adaptive phase with KL"])
def test_a_batch_backpropagated_in_parts_gets_the_whole_batch_gradients_and_loss(setup, monkeypatch, epoch):
    week, splits, scaler, batcher = setup
    batch = batcher.gather(splits.train.starts[:6])
    x_raw = batch.x_raw.clone()
    x_raw[:2, :, :50] = float("nan")  # missing readings: the parts hold unequal shares of the cells
    batch = dataclasses.replace(
        batch, x=batch.x.double(), cal=batch.cal.double(), x_raw=x_raw.double(), y=batch.y.double()
    )
    results = []
    for in_parts in (False, True):
        net, masker, objective, pre = build(scaler, len(week.node_ids), seed=3)
        net.double()
        if in_parts:
            monkeypatch.setattr(model_module, "CPU_BACKWARD_PART_FLOATS", 2 * 12 * len(week.node_ids) * 32)
            assert [(s.start, s.stop) for s in net.backward_parts(batch.x)] == [(0, 2), (2, 4), (4, 6)]
            loss, mask = objective.backward_in_parts(batch, epoch)
        else:
            loss, mask = objective(batch, epoch)
            loss.total.backward()
        grads = {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}
        results.append((loss, mask, grads))
    (whole, mask_whole, grads_whole), (parts, mask_parts, grads_parts) = results
    assert torch.equal(mask_parts, mask_whole)
    assert parts.kl_applied == whole.kl_applied == (epoch > pre.change_epoch)
    assert float(parts.total) == pytest.approx(float(whole.total.detach()), rel=1e-12)
    # The logged parts are read back in float32.
    assert parts.reconstruction == pytest.approx(whole.reconstruction, rel=1e-6)
    if whole.kl_applied:
        assert parts.kl == pytest.approx(whole.kl, rel=1e-6)
    trained = net.autoencoder_parameters() + (net.predictor_parameters() if whole.kl_applied else [])
    assert grads_parts.keys() == grads_whole.keys() and len(grads_whole) == len(trained)
    for name, grad in grads_whole.items():
        torch.testing.assert_close(grads_parts[name], grad, rtol=1e-9, atol=1e-12, msg=name)
