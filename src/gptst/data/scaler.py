"""Per-channel z-score scaling, fitted on the non-missing cells of the training split only.

The transform is a plain affine map on the last axis, so it works on any leading shape, on numpy
arrays and on torch tensors alike (on the tensor's device). Missing cells are excluded from the
fit but are transformed like any other value (as in the reference); masking happens in the loss
and metrics, on the raw targets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from gptst.data.series import SeriesData
from gptst.data.splits import SplitSteps

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

# Below this a channel is treated as constant: dividing by a near-zero std would blow values up.
MIN_STD = 1e-8
# Cells per channel in one fitting chunk: bounds the float64 temporaries on long series.
_FIT_CHUNK_ROWS = 1 << 20


@dataclass(frozen=True)
class StandardScaler:
    """``(x - mean) / std`` per channel (the last axis); ``mean`` and ``std`` are float64 [C]."""

    mean: np.ndarray
    std: np.ndarray
    channels: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        mean = np.atleast_1d(np.asarray(self.mean, dtype=np.float64))
        std = np.atleast_1d(np.asarray(self.std, dtype=np.float64))
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"mean {mean.shape} and std {std.shape} must be 1-D of the same length")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError(f"scaler needs finite means and positive stds, got mean {mean}, std {std}")
        if self.channels is not None and len(self.channels) != len(mean):
            raise ValueError(f"{len(self.channels)} channel names for {len(mean)} channels")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def n_channels(self) -> int:
        return len(self.mean)

    @classmethod
    def fit(
        cls,
        values: np.ndarray,
        null_value: float | None = None,
        channels: list[str] | None = None,
    ) -> StandardScaler:
        """Fit on ``values`` [..., C] ignoring missing cells (``null_value`` or NaN).

        ``std`` is the population std (ddof 0); a constant channel gets ``std`` 1. A channel
        without a single valid cell is an error: there is nothing to scale it by.
        """
        values = np.asarray(values)
        flat = values.reshape(-1, values.shape[-1])
        C = flat.shape[1]
        count = np.zeros(C, dtype=np.int64)
        total = np.zeros(C, dtype=np.float64)
        for chunk, valid in _valid_chunks(flat, null_value):
            count += valid.sum(axis=0)
            total += np.sum(chunk, axis=0, where=valid, dtype=np.float64)
        if np.any(count == 0):
            empty = [channels[c] if channels else c for c in np.flatnonzero(count == 0)]
            raise ValueError(f"channels {empty} have no valid (non-missing) cell to fit the scaler on")
        mean = total / count
        # Two passes (mean, then squared deviations) rather than E[x^2] - E[x]^2, which loses
        # precision on large offsets such as flows in the hundreds.
        squares = np.zeros(C, dtype=np.float64)
        for chunk, valid in _valid_chunks(flat, null_value):
            squares += np.sum((chunk.astype(np.float64) - mean) ** 2, axis=0, where=valid)
        std = np.sqrt(squares / count)
        std = np.where(std < MIN_STD, 1.0, std)
        return cls(mean=mean, std=std, channels=list(channels) if channels is not None else None)

    def transform(self, x: ArrayT) -> ArrayT:
        """Scale ``x`` [..., C]; returns the input's type (float32 for non-float input)."""
        mean, std = self._like(x)
        return (_as_float(x) - mean) / std

    def inverse_transform(self, x: ArrayT) -> ArrayT:
        """Undo :meth:`transform`: ``x * std + mean``."""
        mean, std = self._like(x)
        return _as_float(x) * std + mean

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (model bundles store it)."""
        return {
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "channels": list(self.channels) if self.channels is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StandardScaler:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(mean=data["mean"], std=data["std"], channels=data.get("channels"))
        except KeyError as err:
            raise ValueError(f"scaler dict lacks key {err}; expected mean, std, channels") from None

    def _like(self, x: np.ndarray | torch.Tensor) -> tuple[Any, Any]:
        if x.shape[-1] != self.n_channels:
            raise ValueError(f"last axis has {x.shape[-1]} channels, the scaler has {self.n_channels}")
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            return (
                torch.as_tensor(self.mean, dtype=dtype, device=x.device),
                torch.as_tensor(self.std, dtype=dtype, device=x.device),
            )
        np_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
        return self.mean.astype(np_dtype), self.std.astype(np_dtype)


def fit_train_scaler(series: SeriesData, steps: SplitSteps) -> StandardScaler:
    """The pipeline's scaler: fitted on the training steps of ``series`` only."""
    train = series.values[steps.train.start : steps.train.stop]
    return StandardScaler.fit(train, null_value=series.null_value, channels=series.channels)


def _valid_chunks(flat: np.ndarray, null_value: float | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for lo in range(0, flat.shape[0], _FIT_CHUNK_ROWS):
        chunk = flat[lo : lo + _FIT_CHUNK_ROWS]
        valid = ~np.isnan(chunk) if np.issubdtype(chunk.dtype, np.floating) else np.ones(chunk.shape, bool)
        if null_value is not None:
            # Compare in the data's own dtype: float32(0.1) != 0.1 in float64.
            valid &= chunk != np.asarray(null_value, dtype=chunk.dtype)
        yield chunk, valid


def _as_float(x: ArrayT) -> ArrayT:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.float32)
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
