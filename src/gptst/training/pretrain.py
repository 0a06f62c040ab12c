"""GPT-ST pre-training from params: data, model, masker, objective, validation and the trainer.

Pre-training reads training windows only; validation windows select the checkpoint (the
reconstruction MAE under a uniform random mask at the mask ratio, drawn from seed + 1, the same
every epoch); test windows are never touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch

from gptst.data.batch import Batch, WindowBatcher
from gptst.data.calendar import steps_per_day
from gptst.data.scaler import StandardScaler, fit_train_scaler
from gptst.data.series import SeriesData
from gptst.data.windows import Splits, WindowIndex, make_splits
from gptst.metrics import valid_mask
from gptst.models.gptst.bundle import save_encoder_bundle
from gptst.models.gptst.config import GptstConfig
from gptst.models.gptst.masker import AdaptiveMasker
from gptst.models.gptst.model import GPTST, HyperStack, build_model
from gptst.models.gptst.objective import PretrainObjective
from gptst.params import GptstModelParams, Params, PretrainParams
from gptst.timing import phase
from gptst.training.identity import library_identity
from gptst.training.memory import MemoryEstimate, check_memory, estimate_step_memory, memory_budget
from gptst.training.trainer import Distributed, FitResult, ParamGroup, StepResult, Trainer, TrainerConfig, epoch_batches


@dataclass
class PretrainResult:
    """The best model and what it took to get it."""

    model: GPTST
    scaler: StandardScaler
    splits: Splits
    fit: FitResult
    val_mae: float
    val_mae_mixed_mask: float
    change_epoch: int
    windows_read: dict[str, set[int]] = field(default_factory=dict)
    memory: MemoryEstimate | None = None  # the step's peak, estimated before training

    def metrics(self, params: Params) -> dict[str, object]:
        """The stage's metrics.json: the run's numbers and what they were computed on."""
        return {
            "dataset": params.dataset.name,
            "preset": params.preset,
            "seed": params.seed,
            "best_epoch": self.fit.best_epoch,
            "epochs_run": self.fit.epochs_run,
            "stopped_early": self.fit.stopped_early,
            "change_epoch": self.change_epoch,
            "val_mae": self.val_mae,
            "val_mae_mixed_mask": self.val_mae_mixed_mask,
            "train_windows": len(self.splits.train),
            "val_windows": len(self.splits.val),
            "params": sum(p.numel() for p in self.model.parameters()),
        }

    def save_encoder(self, path: Path, params: Params, series: SeriesData, *, dataset_sha256: str) -> Path:
        """The self-contained encoder bundle of the best weights (:mod:`gptst.models.gptst.bundle`)."""
        day_steps = steps_per_day(series.freq)  # a ValueError for a series without a fixed frequency
        assert series.freq is not None  # steps_per_day(None) has raised
        return save_encoder_bundle(
            path,
            self.model,
            scaler=self.scaler,
            node_ids=series.node_ids,
            channels=series.channels,
            freq=series.freq,
            steps_per_day=day_steps,
            dataset=params.dataset.name,
            meta={
                "params_hash": params.digest(),
                "dataset_sha256": dataset_sha256,
                "preset": params.preset or "",
                "val_mae": self.val_mae,
                "best_epoch": self.fit.best_epoch,
            },
        )


def zero_value(scaler: StandardScaler) -> tuple[float, ...]:
    """The normalised value of a raw 0 per channel: the reference's mask token."""
    return tuple(float(v) for v in scaler.transform(np.zeros((1, scaler.n_channels), dtype=np.float32)).reshape(-1))


def gptst_config(
    model: GptstModelParams, *, num_nodes: int, t_in: int, channels: int, zero_value: Sequence[float]
) -> GptstConfig:
    """The model config of ``pretrain.model`` params for data of ``num_nodes`` x ``channels`` and ``t_in`` steps."""
    return GptstConfig(
        num_nodes=num_nodes,
        t_in=t_in,
        channels=channels,
        zero_value=tuple(float(v) for v in zero_value),
        **model.model_dump(),
    )


def pretrain_masker(pre: PretrainParams, seed: int, device: str | torch.device = "cpu") -> AdaptiveMasker:
    """The masker a pre-training run with ``pre`` params and run seed ``seed`` uses."""
    return AdaptiveMasker(
        mask_ratio=pre.mask_ratio,
        mode=pre.mask_mode,
        strategy=pre.mask_strategy,
        rho=pre.adaptive_rho,
        change_epoch=pre.change_epoch,
        total_epochs=pre.epochs,
        seed=seed,
        n_clusters=pre.model.clusters,
        device=device,
    )


def pretrain_trainer_config(pre: PretrainParams) -> TrainerConfig:
    """The trainer settings of ``pretrain`` params."""
    return TrainerConfig(
        epochs=pre.epochs,
        lr=pre.lr,
        lr_decay_epochs=pre.lr_decay_epochs,
        lr_decay_rate=pre.lr_decay_rate,
        weight_decay=pre.weight_decay,
        patience=pre.patience,
        plateau_decays=pre.plateau_decays,
        # No early stop before E0 + 0.25 (E - E0): the curriculum always runs.
        min_epochs=math.ceil(pre.change_epoch + 0.25 * (pre.epochs - pre.change_epoch)),
        selection="val" if pre.selection == "val" else "train_loss",
        amp=pre.amp,
    )


def pretrain_step_fn(masker: AdaptiveMasker) -> Callable[[torch.nn.Module, Batch, int], StepResult]:
    """The trainer's step for a :class:`PretrainObjective` module: the loss and its parts as logs."""

    def step(module: torch.nn.Module, batch: Batch, epoch: int) -> StepResult:
        # On the CPU a batch is backpropagated in cache-sized parts (same gradients, a quarter of
        # the activations at B=64); data-parallel training keeps one backward per step.
        in_parts = isinstance(module, PretrainObjective) and len(module.model.backward_parts(batch.x)) > 1
        if in_parts:
            loss, _ = cast(PretrainObjective, module).backward_in_parts(batch, epoch)
        else:
            loss, _ = module(batch, epoch)
        logs = {"reconstruction": loss.reconstruction, "adaptive_share": masker.adaptive_share(epoch)}
        if loss.kl_applied:
            logs["kl"] = loss.kl
        return StepResult(loss.total, logs, backward_done=in_parts)

    return step


def pretrain_memory_estimate(
    objective: PretrainObjective, template: Batch, batch_size: int, epoch: int, data: Sequence[torch.Tensor] = ()
) -> MemoryEstimate:
    """The estimated peak of one pre-training step at ``batch_size`` in ``epoch`` (past E0: the
    predictor, the adaptive masks and the KL term all run); ``template`` a batch on the device."""
    model = objective.model
    parts = model.backward_parts(template.x.expand(batch_size, *template.x.shape[1:]))
    return estimate_step_memory(
        f"pre-training GPT-ST over {model.cfg.num_nodes} nodes",
        objective,
        lambda module, batch: module(batch, epoch),
        template,
        batch_size,
        data,
        windows_per_backward=max(p.stop - p.start for p in parts) if len(parts) > 1 else None,
    )


def check_pretrain_memory(
    objective: PretrainObjective, template: Batch, pre: PretrainParams, device: str, data: Sequence[torch.Tensor] = ()
) -> MemoryEstimate:
    """Estimate the step and refuse it when over ``pretrain.max_memory_mb`` (default: the device's
    memory), naming the batch size that fits and what activation checkpointing would need."""
    epoch = pre.change_epoch + 1
    estimate = pretrain_memory_estimate(objective, template, pre.batch_size, epoch, data)
    budget = memory_budget(pre.max_memory_mb, device)
    hints = []
    stacks = [m for m in objective.model.modules() if isinstance(m, HyperStack)]
    if estimate.total_mb() > budget[0] and not any(stack.checkpointing for stack in stacks):
        for stack in stacks:
            stack.checkpointing = True
        try:
            checkpointed = pretrain_memory_estimate(objective, template, pre.batch_size, epoch, data)
        finally:
            for stack in stacks:
                stack.checkpointing = False
        fits = checkpointed.largest_batch(budget[0])
        hints.append(
            f"pretrain.model.activation_checkpointing: true needs {checkpointed.total_mb():,.0f} MB at batch "
            f"{pre.batch_size}" + (f" (batch {fits} fits with it)" if fits else " (no batch fits with it either)")
        )
    check_memory(estimate, budget, "pretrain.batch_size", hints=hints)
    return estimate


def pretrain_groups(model: GPTST, pre: PretrainParams) -> list[ParamGroup]:
    """Autoencoder and mask predictor, each clipped to its own norm."""
    return [
        ParamGroup("autoencoder", model.autoencoder_parameters(), pre.grad_clip),
        ParamGroup("predictor", model.predictor_parameters(), pre.predictor_grad_clip),
    ]


def reconstruction_mae(
    model: GPTST,
    batcher: WindowBatcher,
    windows: WindowIndex,
    scaler: StandardScaler,
    null_value: float | None,
    masker: AdaptiveMasker,
    epoch: int,
    batch_size: int,
    device: str,
    read: set[int] | None = None,
) -> float:
    """MAE (raw units) over the masked, non-missing cells of ``windows``, pooled over all batches.

    ``masker`` decides the masks; the caller passes a freshly seeded one so every call sees the
    same masks. With an adaptive masker the predictor's labels drive it.
    """
    total, count = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    with phase("evaluate"):
        for lo in range(0, len(windows), batch_size):
            starts = windows.starts[lo : lo + batch_size]
            if read is not None:
                read.update(int(s) for s in starts)
            batch = batcher.gather(starts).to(device)
            labels = None
            if masker.strategy == "adaptive" and model.cfg.use_clusters:
                labels = model.predict_clusters(batch.x, batch.cal).argmax(dim=-1)
            mask = masker(labels, epoch, shape=batch.x.shape[:3], device=batch.x.device)
            recon = scaler.inverse_transform(model(batch.x, batch.cal, mask).recon.float())
            cells = mask[..., None] & valid_mask(batch.x_raw, null_value)
            total += (recon - batch.x_raw).abs()[cells].sum().double().cpu()
            count += cells.sum().double().cpu()
    return float(total / count) if count > 0 else math.nan


def build_pretrain_model(params: Params, series: SeriesData, scaler: StandardScaler) -> GPTST:
    """The GPT-ST of ``pretrain.model`` for ``series``, initialised from ``params.seed``."""
    cfg = gptst_config(
        params.pretrain.model,
        num_nodes=len(series.node_ids),
        t_in=params.windows.t_in,
        channels=len(series.channels),
        zero_value=zero_value(scaler),
    )
    torch.manual_seed(params.seed)
    return build_model(cfg)


def pretrain(
    params: Params,
    series: SeriesData,
    *,
    state_dir: Path,
    device: str = "cpu",
    dist: Distributed | None = None,
    log_fn: Callable[[int, dict[str, float]], None] | None = None,
    identity: Mapping[str, str] | None = None,
) -> PretrainResult:
    """Pre-train GPT-ST on ``series`` as ``params`` say; resumes from ``state_dir`` if it can."""
    dist = dist or Distributed()
    pre, windows = params.pretrain, params.windows
    splits = make_splits(len(series.stamps), params.dataset.split, windows)
    scaler = fit_train_scaler(series, splits.steps)
    batcher = WindowBatcher.from_series(series, scaler, windows.t_in, windows.t_out)
    model = build_pretrain_model(params, series, scaler)
    # Each rank draws its own masks for its own local batch (budget and clusters per rank).
    masker = pretrain_masker(pre, seed=params.seed + dist.rank, device=device)
    objective = PretrainObjective(model, masker, scaler, series.null_value, pre.kl_weight, pre.change_epoch)
    read: dict[str, set[int]] = {"train": set(), "val": set()}

    def val_masker() -> AdaptiveMasker:
        return AdaptiveMasker(pre.mask_ratio, strategy="random", seed=params.seed + 1, device=device)

    def val_fn(module: PretrainObjective, epoch: int) -> float:
        return reconstruction_mae(
            module.model,
            batcher,
            splits.val,
            scaler,
            series.null_value,
            val_masker(),
            epoch,
            pre.batch_size,
            device,
            read["val"],
        )

    def local_batches(epoch: int) -> list[np.ndarray]:
        batches = epoch_batches(splits.train.starts, pre.batch_size, epoch, params.seed, dist.rank, dist.world)
        return batches[: pre.max_batches_per_epoch]

    def train_batches(epoch: int):
        for starts in local_batches(epoch):
            read["train"].update(int(s) for s in starts)
            yield batcher.gather(starts)

    trainer = Trainer(
        objective,
        pretrain_step_fn(masker),
        pretrain_groups(model, pre),
        pretrain_trainer_config(pre),
        checkpoint_dir=state_dir,
        device=device,
        val_fn=val_fn,
        stateful={"masker": masker},
        identity=identity if identity is not None else library_identity(params, device, stage="pretrain"),
        dist=dist,
        log_fn=log_fn,
    )
    on_cpu = torch.device(device).type == "cpu"  # the batcher stays on the CPU; batches move to the device
    memory = check_pretrain_memory(
        objective,
        batcher.gather(splits.train.starts[:1]).to(device),
        pre,
        device,
        data=[batcher.raw, batcher.calendar] if on_cpu else [],
    )
    fit = trainer.fit(train_batches, steps_per_epoch=len(local_batches(1)))
    model.eval()
    with torch.no_grad():
        val_mae = val_fn(objective, pre.epochs)
        # The same windows under the training schedule's last (mixed adaptive/random) mask.
        val_mixed = reconstruction_mae(
            model,
            batcher,
            splits.val,
            scaler,
            series.null_value,
            pretrain_masker(pre, params.seed + 1, device),
            pre.epochs,
            pre.batch_size,
            device,
            read["val"],
        )
    return PretrainResult(
        model, scaler, splits, fit, val_mae, val_mixed, pre.change_epoch, windows_read=read, memory=memory
    )
