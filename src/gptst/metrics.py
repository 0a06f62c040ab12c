"""Masked forecasting metrics: MAE, RMSE and MAPE (in percent), per horizon step and pooled.

A cell counts only when its TRUE value is present: not NaN and not equal to ``null_value``
(when that is not None). MAPE additionally needs ``|true| > mape_min``. Pooled values are over
all valid cells of all steps, so pooled RMSE is the root of the pooled mean square, not the
mean of the per-step RMSEs.

The torch functions are losses (differentiable, scalar); :func:`horizon_metrics` and
:class:`HorizonMetricAccumulator` compute the reported table in float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptst.io import write_json

METRIC_NAMES = ("mae", "rmse", "mape")
AVG_KEY = "avg"
# Windows per accumulation chunk: bounds the float64 temporaries on large test sets.
_CHUNK_WINDOWS = 256


# ------------------------------------------------------------------------------------ torch losses
def valid_mask(true: torch.Tensor, null_value: float | None = None) -> torch.Tensor:
    """Bool mask of the cells whose true value is present (not NaN, not ``null_value``)."""
    mask = ~torch.isnan(true)
    if null_value is not None:
        mask &= true != null_value
    return mask


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where, not values * mask: a NaN in a masked-out cell would survive multiplication by 0.
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1)


def _safe_error(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Missing targets are replaced before subtracting so no NaN enters the graph: a NaN in the
    # discarded branch of torch.where still turns the gradient into NaN.
    if pred.shape != true.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and true {tuple(true.shape)} differ in shape")
    return pred - torch.where(mask, true, torch.zeros_like(true))


def masked_mae(pred: torch.Tensor, true: torch.Tensor, null_value: float | None = None) -> torch.Tensor:
    """Mean absolute error over valid cells; 0 (still differentiable) when no cell is valid."""
    mask = valid_mask(true, null_value)
    return _masked_mean(_safe_error(pred, true, mask).abs(), mask)


def masked_mse(pred: torch.Tensor, true: torch.Tensor, null_value: float | None = None) -> torch.Tensor:
    """Mean squared error over valid cells."""
    mask = valid_mask(true, null_value)
    return _masked_mean(_safe_error(pred, true, mask) ** 2, mask)


def masked_rmse(pred: torch.Tensor, true: torch.Tensor, null_value: float | None = None) -> torch.Tensor:
    """Root of :func:`masked_mse`."""
    return torch.sqrt(masked_mse(pred, true, null_value))


def masked_mape(
    pred: torch.Tensor, true: torch.Tensor, null_value: float | None = None, mape_min: float = 0.0
) -> torch.Tensor:
    """Mean absolute percentage error (percent) over valid cells with ``|true| > mape_min``."""
    mask = valid_mask(true, null_value) & (true.abs() > mape_min)
    denominator = torch.where(mask, true.abs(), torch.ones_like(true))
    return 100.0 * _masked_mean(_safe_error(pred, true, mask).abs() / denominator, mask)


def masked_huber(
    pred: torch.Tensor, true: torch.Tensor, null_value: float | None = None, delta: float = 1.0
) -> torch.Tensor:
    """Huber loss (quadratic below ``delta``, linear above) over valid cells."""
    mask = valid_mask(true, null_value)
    error = _safe_error(pred, true, mask).abs()
    quadratic = torch.clamp(error, max=delta)
    return _masked_mean(0.5 * quadratic**2 + delta * (error - quadratic), mask)


# ------------------------------------------------------------------------------- reported table
class HorizonMetricAccumulator:
    """Streams batches of (pred, true) [B, T_out, ...] into per-step and pooled metric sums.

    Feed every test batch with :meth:`update`, then read :meth:`result`; equal to
    :func:`horizon_metrics` on the concatenated arrays.
    """

    def __init__(self, null_value: float | None = None, mape_min: float = 0.0) -> None:
        self.null_value = null_value
        self.mape_min = mape_min
        self._sums: dict[str, np.ndarray] | None = None

    def update(self, pred: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor) -> None:
        pred, true = _to_numpy(pred), _to_numpy(true)
        if pred.shape != true.shape:
            raise ValueError(f"pred {pred.shape} and true {true.shape} differ in shape")
        if pred.ndim < 2:
            raise ValueError(f"expected [B, T_out, ...] arrays, got shape {pred.shape}")
        if self._sums is None:
            self._sums = {k: np.zeros(pred.shape[1], dtype=np.float64) for k in ("abs", "sq", "n", "ape", "n_ape")}
        elif pred.shape[1] != len(self._sums["n"]):
            raise ValueError(f"horizon length {pred.shape[1]} differs from earlier batches ({len(self._sums['n'])})")
        sums = self._sums
        for lo in range(0, pred.shape[0], _CHUNK_WINDOWS):
            p = pred[lo : lo + _CHUNK_WINDOWS].astype(np.float64)
            t = true[lo : lo + _CHUNK_WINDOWS].astype(np.float64)
            valid = ~np.isnan(t)
            if self.null_value is not None:
                # Compare in the targets' own dtype: float32(0.1) != 0.1 in float64.
                raw = true[lo : lo + _CHUNK_WINDOWS]
                valid &= raw != np.asarray(self.null_value, dtype=raw.dtype)
            ape_valid = valid & (np.abs(t) > self.mape_min)
            err = np.abs(p - np.where(valid, t, 0.0))
            axes = (0,) + tuple(range(2, p.ndim))
            sums["abs"] += np.sum(err, axis=axes, where=valid)
            sums["sq"] += np.sum(err**2, axis=axes, where=valid)
            sums["n"] += valid.sum(axis=axes)
            ape = np.divide(err, np.abs(t), out=np.zeros_like(err), where=ape_valid)
            sums["ape"] += np.sum(ape, axis=axes, where=ape_valid)
            sums["n_ape"] += ape_valid.sum(axis=axes)

    def result(self) -> dict[str, dict[str, float]]:
        """``{"1": {mae, rmse, mape}, ..., "avg": {...}}``; NaN where no cell is valid."""
        if self._sums is None:
            raise ValueError("no batch was added")
        s = self._sums
        table = {
            str(k + 1): _metric_row(s["abs"][k], s["sq"][k], s["n"][k], s["ape"][k], s["n_ape"][k])
            for k in range(len(s["n"]))
        }
        table[AVG_KEY] = _metric_row(*(s[name].sum() for name in ("abs", "sq", "n", "ape", "n_ape")))
        return table


def horizon_metrics(
    pred: np.ndarray | torch.Tensor,
    true: np.ndarray | torch.Tensor,
    null_value: float | None = None,
    mape_min: float = 0.0,
) -> dict[str, dict[str, float]]:
    """Masked MAE, RMSE, MAPE (percent) per horizon step ``"1".."T_out"`` and pooled (``"avg"``).

    ``pred`` and ``true`` are [B, T_out, N, C] or [B, T_out, N], raw (de-normalised) units.
    """
    accumulator = HorizonMetricAccumulator(null_value, mape_min)
    accumulator.update(pred, true)
    return accumulator.result()


def _metric_row(abs_sum: float, sq_sum: float, n: float, ape_sum: float, n_ape: float) -> dict[str, float]:
    nan = float("nan")
    return {
        "mae": float(abs_sum / n) if n else nan,
        "rmse": math.sqrt(sq_sum / n) if n else nan,
        "mape": float(100.0 * ape_sum / n_ape) if n_ape else nan,
    }


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# ------------------------------------------------------------------------------------ reporting
def _horizon_keys(horizons: Mapping[Any, Any]) -> list[str]:
    keys = [str(k) for k in horizons]
    if AVG_KEY not in keys:
        raise ValueError(f"horizons lack the pooled {AVG_KEY!r} entry; keys are {keys}")
    steps = [k for k in keys if k != AVG_KEY]
    bad = [k for k in steps if not (k.isdigit() and int(k) >= 1)]
    if bad:
        raise ValueError(f"horizon keys must be step numbers from 1 or {AVG_KEY!r}, got {bad}")
    return sorted(steps, key=int) + [AVG_KEY]


def _row(horizons: Mapping[Any, Any], key: str) -> Mapping[str, Any]:
    row = horizons[key] if key in horizons else horizons[int(key)]
    missing = [m for m in METRIC_NAMES if m not in row]
    if missing:
        raise ValueError(f"horizon {key!r} lacks metrics {missing}")
    return row


def _json_number(value: Any) -> float | None:
    # Strict JSON has no NaN: a horizon without valid cells is written as null.
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def write_metrics_json(
    path: str | Path,
    *,
    dataset: str,
    baseline: str,
    variant: str,
    seed: int,
    split: str,
    horizons: Mapping[Any, Mapping[str, Any]],
) -> Path:
    """Write ``{dataset, baseline, variant, seed, split, horizons}`` atomically.

    ``horizons`` is :func:`horizon_metrics`' table; keys become strings in step order then
    ``"avg"``, NaN becomes null.
    """
    table = {key: {m: _json_number(_row(horizons, key)[m]) for m in METRIC_NAMES} for key in _horizon_keys(horizons)}
    document = {
        "dataset": dataset,
        "baseline": baseline,
        "variant": variant,
        "seed": int(seed),
        "split": split,
        "horizons": table,
    }
    return write_json(path, document)


def mlflow_metric_keys(split: str, horizons: Mapping[Any, Mapping[str, Any]]) -> dict[str, float]:
    """Flat MLflow metrics: ``{split}_{metric}_h{k:02d}`` per step and ``{split}_{metric}_avg``."""
    flat: dict[str, float] = {}
    for key in _horizon_keys(horizons):
        suffix = AVG_KEY if key == AVG_KEY else f"h{int(key):02d}"
        row = _row(horizons, key)
        for metric in METRIC_NAMES:
            value = row[metric]
            flat[f"{split}_{metric}_{suffix}"] = float("nan") if value is None else float(value)
    return flat
