"""Robustness to missing inputs: test metrics when a share of the input readings is missing.

A share of the (window, step, node) input readings, drawn at random from a seeded generator, is
set missing the way the dataset encodes a missing reading (its ``null_value``, else NaN), then
normalised exactly as :class:`gptst.data.batch.WindowBatcher` normalises the series: a NaN
becomes 0 (the training mean), a null value its normalised value. All channels of a reading go
missing together; targets are untouched. The frozen encoder of the gptst variants sees the same
altered input (it runs on the fly: a cache describes the unaltered windows). The same seed,
windows and batch size give the same missing readings to every model, so models are compared on
identical inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from gptst.data.batch import Batch
from gptst.data.scaler import StandardScaler
from gptst.data.windows import WindowIndex
from gptst.models.forecaster import Forecaster
from gptst.training.finetune import DownstreamData, predict_windows


def missing_inputs(
    share: float, scaler: StandardScaler, null_value: float | None, generator: torch.Generator
) -> Callable[[Batch], Batch]:
    """A batch transform that sets ``share`` of each batch's input readings missing."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the share of missing inputs must be in [0, 1), got {share}")
    missing_value = float("nan") if null_value is None else float(null_value)

    def transform(batch: Batch) -> Batch:
        B, T, N, _ = batch.x_raw.shape
        drop = torch.rand((B, T, N, 1), generator=generator).to(batch.x_raw.device) < share
        x_raw = torch.where(drop, torch.full_like(batch.x_raw, missing_value), batch.x_raw)
        x = scaler.transform(x_raw)
        x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
        return replace(batch, x=x, x_raw=x_raw)

    return transform


def robustness_metrics(
    forecaster: Forecaster,
    data: DownstreamData,
    windows: WindowIndex,
    shares: Sequence[float],
    *,
    seed: int,
    batch_size: int,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{share as a string: horizon table}`` of ``forecaster`` on ``windows`` with ``share`` of
    the input readings missing (each share drawn from its own generator seeded by ``seed``)."""
    tables = {}
    for share in shares:
        generator = torch.Generator().manual_seed(seed)
        transform = missing_inputs(share, data.scaler, data.null_value, generator)
        tables[f"{share:g}"], _ = predict_windows(forecaster, data, windows, batch_size, transform=transform)
    return tables
