"""Downstream finetuning (GPTST_SPEC section 7): one baseline in one variant, from params.

The loss and every metric are computed on de-normalised predictions; validation (masked MAE
over all horizons) selects the epoch and the best-validation weights are scored on the test
windows. The frozen encoder of the ``gptst`` variants reads cached outputs from the encode
stage when there is a cache, and runs per batch under ``no_grad`` otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from gptst.data.batch import Batch, WindowBatcher
from gptst.data.scaler import StandardScaler, fit_train_scaler
from gptst.data.series import SeriesData
from gptst.data.windows import Splits, WindowIndex, make_splits
from gptst.errors import InputError
from gptst.graph.bundle import GraphBundle
from gptst.metrics import HorizonMetricAccumulator, masked_huber, masked_mae
from gptst.models.baselines.registry import build_baseline
from gptst.models.encoded import EncodedCache, EncodedIndex, write_encoded
from gptst.models.forecaster import ENCODER_VARIANTS, Forecaster, input_dim
from gptst.models.forecaster_bundle import ForecasterBundle
from gptst.models.gptst.bundle import EncoderBundle, check_compatible
from gptst.models.gptst.model import GPTST, build_model
from gptst.params import FinetuneCommon, Params
from gptst.timing import phase
from gptst.training.baseline_config import baseline_config
from gptst.training.identity import library_identity, module_digest
from gptst.training.memory import MemoryEstimate, check_memory, estimate_step_memory, memory_budget
from gptst.training.trainer import (
    Distributed,
    FitResult,
    ParamGroup,
    StepResult,
    Trainer,
    TrainerConfig,
    epoch_batches,
)

# Offsets of the seeds a variant derives from ``params.seed``: the random encoder's weights
# must not be the baseline's initial draw.
RANDOM_ENCODER_SEED_OFFSET = 7919


@dataclass(frozen=True)
class DownstreamData:
    """What every finetune of one dataset shares: the series, its training scaler, the windows."""

    series: SeriesData
    graph: GraphBundle
    scaler: StandardScaler
    splits: Splits
    batcher: WindowBatcher
    mape_min: float

    @classmethod
    def prepare(
        cls,
        params: Params,
        series: SeriesData,
        graph: GraphBundle,
        device: str = "cpu",
        scaler: StandardScaler | None = None,
    ) -> DownstreamData:
        """Windows and batcher of ``series``; ``scaler`` defaults to the one fitted on its training
        split (a trained model brings its own)."""
        if list(graph.node_ids) != list(series.node_ids):
            raise ValueError("the graph's node order is not the series' (rebuild the adjacency stage)")
        splits = make_splits(len(series.stamps), params.dataset.split, params.windows)
        scaler = scaler or fit_train_scaler(series, splits.steps)
        batcher = WindowBatcher.from_series(series, scaler, params.windows.t_in, params.windows.t_out, device)
        return cls(series, graph, scaler, splits, batcher, params.metrics.mape_threshold(params.dataset.kind))

    @property
    def null_value(self) -> float | None:
        return self.series.null_value


@dataclass
class FinetuneResult:
    forecaster: Forecaster
    fit: FitResult
    val: dict[str, dict[str, float]]  # horizon table (horizon_metrics) on the validation windows
    test: dict[str, dict[str, float]]
    test_pred: np.ndarray  # [W, T_out, N, C] raw units, the test windows in order
    test_starts: np.ndarray
    memory: MemoryEstimate | None = None  # the step's peak, estimated before training


def random_encoder(like: GPTST, seed: int) -> GPTST:
    """An untrained GPT-ST of ``like``'s configuration (the ``gptst_random`` capacity control),
    drawn from its own seed without touching the global random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(like.cfg)
    return model.eval().requires_grad_(False)


def build_forecaster(
    params: Params, data: DownstreamData, baseline: str, variant: str, encoder: GPTST | None = None
) -> Forecaster:
    """The baseline with its variant's input, sized for ``data`` (built from ``params.seed``)."""
    channels = len(data.series.channels)
    hidden = encoder.cfg.hidden if encoder is not None else params.pretrain.model.hidden
    torch.manual_seed(params.seed)
    model = build_baseline(
        baseline,
        num_nodes=len(data.series.node_ids),
        in_dim=input_dim(variant, channels, hidden),
        out_dim=channels,
        in_steps=params.windows.t_in,
        out_steps=params.windows.t_out,
        graph=data.graph,
        params=baseline_config(params, baseline),
    )
    return Forecaster(model, variant, encoder=encoder, channels=channels)


def variant_encoder(
    params: Params, data: DownstreamData, variant: str, bundle: EncoderBundle | None, source: str | Path = "data"
) -> GPTST | None:
    """The frozen encoder a variant fuses in: the pre-trained one (``gptst``), a random one of the
    same shape (``gptst_random``), or None. Refuses an encoder that does not fit the data."""
    if variant not in ENCODER_VARIANTS:
        return None
    if bundle is None:
        raise ValueError(f"variant {variant!r} needs the pre-trained encoder bundle")
    series = data.series
    check_compatible(
        bundle,
        t_in=params.windows.t_in,
        num_nodes=len(series.node_ids),
        channels=series.channels,
        node_ids=series.node_ids,
        source=source,
    )
    if not (
        np.allclose(bundle.scaler.mean, data.scaler.mean, rtol=1e-4)
        and np.allclose(bundle.scaler.std, data.scaler.std, rtol=1e-4)
    ):
        raise InputError(
            source,
            "encoder.scaler",
            f"the encoder {bundle.source} was pre-trained on data normalised with mean "
            f"{bundle.scaler.mean} / std {bundle.scaler.std}, these training windows give {data.scaler.mean} / "
            f"{data.scaler.std}: re-run pretrain on this data",
        )
    if variant == "gptst":
        return bundle.model
    return random_encoder(bundle.model, params.seed + RANDOM_ENCODER_SEED_OFFSET)


def forecast(
    forecaster: Forecaster,
    data: DownstreamData,
    batch: Batch,
    cache: EncodedCache | None = None,
    scaler: StandardScaler | None = None,
) -> torch.Tensor:
    """De-normalised forecasts [B, T_out, N, C] for ``batch`` (cached encoder outputs if given)."""
    h_pre = cache.lookup(batch.start).to(batch.x.device) if cache is not None else None
    return (scaler or data.scaler).inverse_transform(forecaster(batch.x, batch.cal, h_pre))


def predict_windows(
    forecaster: Forecaster,
    data: DownstreamData,
    windows: WindowIndex,
    batch_size: int,
    *,
    cache: EncodedCache | None = None,
    keep: bool = False,
    transform: Callable[[Batch], Batch] | None = None,
) -> tuple[dict[str, dict[str, float]], np.ndarray | None]:
    """Metrics per horizon on ``windows`` (and the raw forecasts [W, T_out, N, C] if ``keep``);
    ``transform`` alters each batch first (a cache is then ignored: its features describe the
    unaltered input)."""
    accumulator = HorizonMetricAccumulator(data.null_value, data.mape_min)
    kept: list[np.ndarray] = []
    was_training = forecaster.training
    forecaster.eval()
    if transform is not None:
        cache = None
    with torch.no_grad(), phase("evaluate"):
        for batch in data.batcher.batches(windows, batch_size):
            if transform is not None:
                batch = transform(batch)
            pred = forecast(forecaster, data, batch, cache).float()
            accumulator.update(pred, batch.y)
            if keep:
                kept.append(pred.cpu().numpy())
    forecaster.train(was_training)
    preds = np.concatenate(kept) if keep and kept else None
    return accumulator.result(), preds


def downstream_loss(
    params: Params, baseline: str
) -> Callable[[torch.Tensor, torch.Tensor, float | None], torch.Tensor]:
    """The baseline's training loss on raw values: masked MAE, or Huber for the Huber baselines."""
    section = baseline_config(params, baseline)
    if section.loss == "huber":
        return lambda pred, true, null: masked_huber(pred, true, null, section.huber_delta)
    return masked_mae


def finetune_step_fn(
    params: Params, data: DownstreamData, baseline: str, cache: EncodedCache | None
) -> Callable[[torch.nn.Module, Batch, int], StepResult]:
    """The trainer's step for a forecaster: the baseline's loss on the de-normalised forecast, plus
    the baseline's own training term where it has one (``auxiliary_loss()``: ST-WA's weighted KL)."""
    loss_fn = downstream_loss(params, baseline)

    def step(module: torch.nn.Module, batch: Batch, epoch: int) -> StepResult:
        # ``module`` is the forecaster, or its DDP wrapper, which forwards the same calls.
        loss = loss_fn(forecast(cast(Forecaster, module), data, batch, cache), batch.y, data.null_value)
        auxiliary = getattr(getattr(module, "module", module).baseline, "auxiliary_loss", None)
        return StepResult(loss + auxiliary() if auxiliary is not None else loss)

    return step


def finetune_memory_estimate(
    params: Params, data: DownstreamData, baseline: str, variant: str, forecaster: Forecaster, device: str
) -> MemoryEstimate:
    """The estimated peak of one training step of ``forecaster`` at ``finetune.common.batch_size``
    (the encoder, frozen, saves nothing for backward: cached or not, the estimate is the same)."""
    step = finetune_step_fn(params, data, baseline, None)
    return estimate_step_memory(
        f"finetune {baseline}/{variant} over {len(data.series.node_ids)} nodes",
        forecaster,
        lambda module, batch: step(module, batch, 1),
        data.batcher.gather(data.splits.train.starts[:1]).to(device),
        params.finetune.common.batch_size,
        [data.batcher.raw, data.batcher.calendar],
    )


def finetune(
    params: Params,
    data: DownstreamData,
    baseline: str,
    variant: str,
    *,
    encoder_bundle: EncoderBundle | None = None,
    cache: EncodedCache | None = None,
    state_dir: str | Path,
    device: str = "cpu",
    log_fn: Callable[[int, dict[str, float]], None] | None = None,
    identity: Mapping[str, str] | None = None,
    dist: Distributed | None = None,
) -> FinetuneResult:
    """Train ``baseline`` in ``variant`` on the training windows and score it; resumes from
    ``state_dir`` when its checkpoint has the same ``identity`` (:mod:`gptst.training.identity`).

    Under ``torchrun`` (``dist`` of world K) each rank trains on its share of every global batch of
    K x ``finetune.common.batch_size`` windows (DistributedDataParallel averages the gradients);
    every rank scores the validation and test windows, rank 0 writes the checkpoints."""
    dist = dist or Distributed()
    common = params.finetune.common
    encoder = variant_encoder(params, data, variant, encoder_bundle)
    if encoder is not None:
        encoder.to(device)
    forecaster = build_forecaster(params, data, baseline, variant, encoder).to(device)
    memory = finetune_memory_estimate(params, data, baseline, variant, forecaster, device)
    check_memory(memory, memory_budget(common.max_memory_mb, device), "finetune.common.batch_size")
    # The encode stage caches the pre-trained encoder; the random control is cached here, for this
    # run, when it fits the budget: it then reads fp16 features exactly as gptst does, instead of
    # encoding every batch again (the encoder forward cost more than a T-GCN step).
    cache = cache if variant == "gptst" else None
    local_cache: tempfile.TemporaryDirectory[str] | None = None
    if variant == "gptst_random" and encoder is not None and encoder_bundle is not None:
        local_cache = tempfile.TemporaryDirectory(prefix="gptst-encoded-")
        cache = _run_cache(
            Path(local_cache.name), params, data, dataclasses.replace(encoder_bundle, model=encoder), device
        )
    splits = data.splits

    def local_batches(epoch: int) -> list[np.ndarray]:
        chosen = epoch_batches(splits.train.starts, common.batch_size, epoch, params.seed, dist.rank, dist.world)
        return chosen[: common.max_batches_per_epoch]

    def batches(epoch: int):
        for starts in local_batches(epoch):
            yield data.batcher.gather(starts).to(device)

    def val_fn(module: Forecaster, epoch: int) -> float:
        table, _ = predict_windows(module, data, splits.val, common.batch_size, cache=cache)
        return table["avg"]["mae"]

    steps = len(local_batches(1))
    trainer = Trainer(
        forecaster,
        finetune_step_fn(params, data, baseline, cache),
        [ParamGroup("forecaster", forecaster.trainable_parameters(), common.grad_clip)],
        finetune_trainer_config(common),
        checkpoint_dir=state_dir,
        device=device,
        val_fn=val_fn,
        identity=identity if identity is not None else _library_identity(params, baseline, variant, encoder, device),
        dist=dist,
        log_fn=log_fn,
    )
    fit = trainer.fit(batches, steps_per_epoch=steps)
    val, _ = predict_windows(forecaster, data, splits.val, common.batch_size, cache=cache)
    test, test_pred = predict_windows(forecaster, data, splits.test, common.batch_size, cache=cache, keep=True)
    if not math.isfinite(val["avg"]["mae"]):
        raise RuntimeError(f"{baseline}/{variant}: the validation MAE is not finite; training diverged")
    assert test_pred is not None
    if local_cache is not None:
        local_cache.cleanup()
    return FinetuneResult(forecaster, fit, val, test, test_pred, np.asarray(splits.test.starts), memory)


def _library_identity(
    params: Params, baseline: str, variant: str, encoder: GPTST | None, device: str
) -> dict[str, str]:
    # The frozen encoder is an input of the run: another pre-training gives another run.
    parts = {"baseline": baseline, "variant": variant}
    if encoder is not None:
        parts["encoder"] = module_digest(encoder)
    return library_identity(params, device, **parts)


def cache_encoder(
    folder: Path, params: Params, data: DownstreamData, bundle: EncoderBundle, *, encoder_sha256: str, device: str
) -> EncodedIndex:
    """The fp16 cache of ``bundle``'s encoder on every train, val and test window of ``data``
    (an ``on_the_fly`` index only, above ``finetune.encoder_cache_max_gb``)."""
    starts = np.concatenate([data.splits[name].starts for name in ("train", "val", "test")])
    return write_encoded(
        folder,
        bundle,
        data.batcher,
        starts,
        encoder_sha256=encoder_sha256,
        max_gb=params.finetune.encoder_cache_max_gb,
        batch_size=params.finetune.common.batch_size,
        device=device,
    )


def _run_cache(
    folder: Path, params: Params, data: DownstreamData, bundle: EncoderBundle, device: str
) -> EncodedCache | None:
    """This run's fp16 cache of ``bundle``'s encoder on every window (None above the cache budget)."""
    cache_encoder(folder / "encoded", params, data, bundle, encoder_sha256="run", device=device)
    return EncodedCache.open(folder / "encoded", "run")


def bundle_data(
    bundle: ForecasterBundle, params: Params, series: SeriesData, *, source: str | Path = "data", device: str = "cpu"
) -> DownstreamData:
    """The windows of ``series`` as a trained forecaster sees them (its own scaler and graph); a
    bundle that does not fit the data (nodes, window lengths, channels) is an :class:`InputError`."""
    problems = []
    if bundle.node_ids != list(series.node_ids):
        problems.append(f"{len(bundle.node_ids)} nodes (model) vs {len(series.node_ids)} (data) or another order")
    if (bundle.t_in, bundle.t_out) != (params.windows.t_in, params.windows.t_out):
        problems.append(
            f"windows {bundle.t_in}->{bundle.t_out} (model) vs {params.windows.t_in}->{params.windows.t_out}"
        )
    if bundle.channels != list(series.channels):
        problems.append(f"channels {bundle.channels} (model) vs {list(series.channels)}")
    if problems:
        raise InputError(source, "model", f"{bundle.source} cannot be scored on this data: " + "; ".join(problems))
    bundle.forecaster.to(device)
    return DownstreamData.prepare(params, series, bundle.graph, device, scaler=bundle.scaler)


def score_forecaster(
    bundle: ForecasterBundle, params: Params, series: SeriesData, *, source: str | Path = "data", device: str = "cpu"
) -> float:
    """The promotion score of a trained forecaster on the current data: ``promotion.metric``
    pooled over all horizons on the promotion window (the last ``promotion.max_windows``
    validation windows)."""
    data = bundle_data(bundle, params, series, source=source, device=device)
    windows = data.splits[params.promotion.window].last(params.promotion.max_windows)
    table, _ = predict_windows(bundle.forecaster, data, windows, params.finetune.common.batch_size)
    return float(table["avg"][params.promotion.metric])


def finetune_trainer_config(common: FinetuneCommon) -> TrainerConfig:
    """The trainer settings of ``finetune.common`` params (selection on validation MAE)."""
    return TrainerConfig(
        epochs=common.epochs,
        lr=common.lr,
        lr_decay_epochs=common.lr_decay_epochs,
        lr_decay_rate=common.lr_decay_rate,
        weight_decay=common.weight_decay,
        patience=common.patience,
        plateau_decays=common.plateau_decays,
        selection="val",
        amp=common.amp,
    )
