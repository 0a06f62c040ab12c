"""The trainer: sharded epoch order, selection and early stopping, checkpoints, LR decay,
the autocast path, and quiet logs outside a terminal. Real METR-LA windows feed a small
forecaster where a model is needed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gptst.data.batch import WindowBatcher
from gptst.data.scaler import fit_train_scaler
from gptst.data.windows import make_splits
from gptst.metrics import masked_mae
from gptst.params import SplitRatios, WindowParams
from gptst.training.trainer import (
    BEST_WEIGHTS,
    CHECKPOINT,
    ParamGroup,
    StepResult,
    Trainer,
    TrainerConfig,
    epoch_batches,
)


# --------------------------------------------------------------------------- epoch order
def test_every_rank_gets_a_disjoint_shard_of_the_same_permutation():
    starts = np.arange(100, 203)  # 103 windows
    shards = [epoch_batches(starts, 8, epoch=3, seed=0, rank=r, world=3) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # same number of steps on every rank
    seen = np.concatenate([b for shard in shards for b in shard])
    assert len(seen) == len(set(seen.tolist())) == 103  # the short last batch is split, not dropped
    assert set(seen.tolist()) == set(starts.tolist())
    for step in range(len(shards[0]) - 1):
        assert all(len(shard[step]) == 8 for shard in shards)  # full local batches


def test_the_order_depends_on_seed_and_epoch_only():
    starts = np.arange(50)
    first = epoch_batches(starts, 8, epoch=1, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(first, epoch_batches(starts, 8, epoch=1, seed=0), strict=True))
    assert not np.array_equal(first[0], epoch_batches(starts, 8, epoch=2, seed=0)[0])
    assert not np.array_equal(first[0], epoch_batches(starts, 8, epoch=1, seed=1)[0])


def test_a_last_global_batch_smaller_than_the_world_is_dropped():
    shards = [epoch_batches(np.arange(17), 8, epoch=1, seed=0, rank=r, world=2) for r in range(2)]
    assert [len(s) for s in shards] == [1, 1]  # 16 windows in one global batch; 1 left for 2 ranks


# --------------------------------------------------------------------------- the fit loop
class Forecaster(nn.Module):
    """A linear map over time per node: x [B, T_in, N, C] -> [B, T_out, N, C] (normalised)."""

    def __init__(self, t_in: int, t_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(t_in, t_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.transpose(1, 3)).transpose(1, 3)


@pytest.fixture(scope="module")
def data(week):
    splits = make_splits(len(week.timestamps), SplitRatios(), WindowParams(t_in=12, t_out=3))
    scaler = fit_train_scaler(week, splits.steps)
    return splits, scaler, WindowBatcher.from_series(week, scaler, 12, 3)


def make_trainer(data, tmp_path: Path, val_script=None, **config) -> tuple[Trainer, Forecaster]:
    splits, scaler, batcher = data
    torch.manual_seed(0)
    model = Forecaster(12, 3)

    def step(module, batch, epoch):
        pred = scaler.inverse_transform(module(batch.x))
        return StepResult(masked_mae(pred, batch.y, 0.0))

    def val_fn(module, epoch):
        if val_script is not None:
            return val_script[epoch - 1]
        batch = batcher.gather(splits.val.starts[:64])
        return float(masked_mae(scaler.inverse_transform(module(batch.x)), batch.y, 0.0))

    cfg = TrainerConfig(**{"epochs": 4, "lr": 0.01, "patience": 10, **config})
    trainer = Trainer(
        model,
        step,
        [ParamGroup("all", list(model.parameters()), 5.0)],
        cfg,
        checkpoint_dir=tmp_path,
        val_fn=val_fn if cfg.selection == "val" else None,
    )
    return trainer, model


def batches(data, n: int = 4):
    splits, _, batcher = data
    return lambda epoch: (batcher.gather(s) for s in epoch_batches(splits.train.starts, 32, epoch, 0)[:n])


def test_training_lowers_the_validation_error_and_keeps_the_best_epoch(data, tmp_path):
    trainer, model = make_trainer(data, tmp_path, epochs=5)
    result = trainer.fit(batches(data))
    vals = [row["val_metric"] for row in result.history]
    assert vals[-1] < vals[0]
    assert result.best_metric == min(vals) and result.best_epoch == 1 + vals.index(min(vals))
    best = torch.load(tmp_path / BEST_WEIGHTS, weights_only=True)
    assert all(torch.equal(best[k], v) for k, v in model.state_dict().items())  # best weights restored


def test_early_stopping_waits_for_patience_and_never_stops_before_min_epochs(data, tmp_path):
    script = [5.0, 4.0, 4.5, 4.6, 4.7, 4.8, 4.9, 5.0]
    trainer, _ = make_trainer(data, tmp_path / "a", val_script=script, epochs=8, patience=2)
    result = trainer.fit(batches(data, 1))
    assert (result.stopped_early, result.epochs_run, result.best_epoch) == (True, 4, 2)

    trainer, _ = make_trainer(data, tmp_path / "b", val_script=script, epochs=8, patience=2, min_epochs=6)
    result = trainer.fit(batches(data, 1))
    assert (result.stopped_early, result.epochs_run) == (True, 6)


def test_a_plateau_decays_the_rate_and_restarts_patience_until_the_decays_are_spent(data, tmp_path):
    # Plateaus after epochs 4 and 7 decay the rate; the third, after epoch 9, stops the run.
    script = [5.0, 4.0, 4.5, 4.6, 3.9, 4.1, 4.2, 4.3, 4.4, 4.5, 4.6, 4.7]
    config = {"val_script": script, "epochs": 12, "patience": 2, "lr": 0.01, "lr_decay_rate": 0.5}
    trainer, _ = make_trainer(data, tmp_path / "a", plateau_decays=2, **config)
    result = trainer.fit(batches(data, 1))
    rates = [row["lr"] for row in result.history]
    assert (result.stopped_early, result.epochs_run, result.best_epoch) == (True, 9, 5)
    assert rates == pytest.approx([0.01] * 4 + [0.005] * 3 + [0.0025] * 2)

    # Killed after epoch 6 (one decay done), the run resumes to the same schedule and stop.
    trainer, _ = make_trainer(data, tmp_path / "b", plateau_decays=2, **{**config, "epochs": 6})
    trainer.fit(batches(data, 1))
    trainer, _ = make_trainer(data, tmp_path / "b", plateau_decays=2, **config)
    resumed = trainer.fit(batches(data, 1))
    assert resumed.resumed_from == 6
    assert [row["lr"] for row in resumed.history] == pytest.approx(rates)
    assert (resumed.epochs_run, resumed.best_epoch) == (9, 5)


def test_selection_on_training_loss_needs_no_validation(data, tmp_path):
    trainer, _ = make_trainer(data, tmp_path, selection="train_loss", epochs=2)
    result = trainer.fit(batches(data, 2))
    assert "val_metric" not in result.history[0]
    assert result.best_metric == min(r["train_loss"] for r in result.history)


def test_every_epoch_leaves_a_complete_checkpoint(data, tmp_path):
    trainer, model = make_trainer(data, tmp_path, epochs=3, lr_decay_epochs=[2], lr_decay_rate=0.1)
    result = trainer.fit(batches(data, 2))
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 3 and len(state["history"]) == 3
    assert {"model", "optimizer", "grad_scaler", "best_metric", "bad_epochs"} <= set(state)
    assert [p.name for p in tmp_path.glob("rank0.*")] == ["rank0.epoch3.pt"]  # older rank states removed
    assert not list(tmp_path.glob(".*.tmp"))
    assert [round(r["lr"], 6) for r in result.history] == [0.01, 0.01, 0.001]  # the rate each epoch trained with


def test_a_finished_run_resumes_to_the_end_without_training_again(data, tmp_path):
    trainer, model = make_trainer(data, tmp_path, epochs=2)
    trainer.fit(batches(data, 2))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    again, model2 = make_trainer(data, tmp_path, epochs=2)
    result = again.fit(batches(data, 2))
    assert result.resumed_from == 2 and len(result.history) == 2
    assert all(torch.equal(weights[k], v) for k, v in model2.state_dict().items())


def test_a_run_that_stopped_early_stays_stopped_when_run_again(data, tmp_path):
    """Its last checkpoint is the stopping epoch's: a re-run (a kill before it returned, or DVC
    re-running a finished item) trains no further epoch and ends with the same weights."""
    script = [5.0, 4.0, 4.5, 4.6, 3.0, 2.0, 1.0, 0.5]  # an extra epoch would have improved
    trainer, model = make_trainer(data, tmp_path, val_script=script, epochs=8, patience=2)
    first = trainer.fit(batches(data, 1))
    assert (first.stopped_early, first.epochs_run) == (True, 4)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    again, model2 = make_trainer(data, tmp_path, val_script=script, epochs=8, patience=2)
    result = again.fit(batches(data, 1))
    assert (result.stopped_early, result.epochs_run, result.resumed_from, result.best_epoch) == (True, 4, 4, 2)
    assert len(result.history) == 4
    assert all(torch.equal(weights[k], v) for k, v in model2.state_dict().items())


def test_a_checkpoint_of_another_run_is_not_resumed_and_the_differing_part_is_named(data, tmp_path, capsys):
    trainer, _ = make_trainer(data, tmp_path, epochs=2)
    trainer.identity = {"code": "a" * 64, "input.adjacency": "1" * 64}
    trainer.fit(batches(data, 1))
    other, _ = make_trainer(data, tmp_path, epochs=2)
    other.identity = {"code": "a" * 64, "input.adjacency": "2" * 64}
    assert other.fit(batches(data, 1)).resumed_from == 0
    out = capsys.readouterr().out
    assert "input.adjacency differs (checkpoint 111111111111, now 222222222222)" in out and "starting afresh" in out
    assert "code differs" not in out


def test_a_checkpoint_without_an_identity_part_the_run_has_is_not_resumed(data, tmp_path, capsys):
    trainer, _ = make_trainer(data, tmp_path, epochs=2)
    trainer.fit(batches(data, 1))
    other, _ = make_trainer(data, tmp_path, epochs=2)
    other.identity = {"params.graph": "g" * 64}
    assert other.fit(batches(data, 1)).resumed_from == 0
    assert "params.graph differs (checkpoint absent" in capsys.readouterr().out


def test_the_autocast_path_runs_on_cpu_in_bfloat16(data, tmp_path):
    seen = []
    trainer, model = make_trainer(data, tmp_path, epochs=1, amp=True, amp_dtype="bfloat16")
    inner = trainer.step_fn

    def spy(module, batch, epoch):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return inner(module, batch, epoch)

    trainer.step_fn = spy
    result = trainer.fit(batches(data, 2))
    assert seen and all(s == (True, torch.bfloat16) for s in seen)
    assert math.isfinite(result.history[0]["train_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_logs_stay_quiet_outside_a_terminal(data, tmp_path, capsys):
    trainer, _ = make_trainer(data, tmp_path, epochs=2)
    trainer.fit(batches(data, 2))
    out, err = capsys.readouterr()
    assert "it/s" not in err and "\r" not in err  # no progress bar in CI logs
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch")] == ["1/2", "2/2"]


def test_pretraining_and_finetuning_pass_their_plateau_and_decay_settings_to_the_trainer():
    from gptst.params import FinetuneCommon, PretrainParams
    from gptst.training.finetune import finetune_trainer_config
    from gptst.training.pretrain import pretrain_trainer_config

    settings = {"epochs": 40, "patience": 3, "plateau_decays": 2, "lr_decay_epochs": [10], "lr_decay_rate": 0.5}
    for config in (
        pretrain_trainer_config(PretrainParams(**settings)),
        finetune_trainer_config(FinetuneCommon(**settings)),
    ):
        assert {k: getattr(config, k) for k in settings} == settings


def test_the_float16_path_scales_the_loss_unscales_before_clipping_and_skips_an_overflowing_step(data, tmp_path):
    """The GPUs without bfloat16 train under float16 autocast with a gradient scaler (enabled on
    CUDA only). Enabled here on the CPU: a scaled step makes the same update as an unscaled one
    (gradients are unscaled before clipping and Adam), and a step whose gradients overflow is
    skipped, the scale halved."""
    plain, plain_model = make_trainer(data, tmp_path / "plain", epochs=1, amp=True, amp_dtype="float16")
    scaled, scaled_model = make_trainer(data, tmp_path / "scaled", epochs=1, amp=True, amp_dtype="float16")
    assert not plain.grad_scaler.is_enabled()  # the CPU does not scale; CUDA would
    scaled.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    batch = next(iter(batches(data, 1)(1)))
    plain.train_step(batch, 1)
    logs = scaled.train_step(batch, 1)
    for a, b in zip(plain_model.parameters(), scaled_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert math.isfinite(logs["grad_norm_all"]) and logs["grad_norm_all"] < 1e3  # clipped on unscaled gradients

    before = [p.detach().clone() for p in scaled_model.parameters()]
    inner = scaled.step_fn

    def overflowing(module, batch, epoch):
        result = inner(module, batch, epoch)
        return StepResult(result.loss * float("inf"), result.logs)

    scaled.step_fn = overflowing
    scale = scaled.grad_scaler.get_scale()
    scaled.train_step(batch, 1)
    assert all(torch.equal(p, q) for p, q in zip(before, scaled_model.parameters(), strict=True))
    assert scaled.grad_scaler.get_scale() == scale / 2
