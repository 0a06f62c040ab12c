"""Batches gathered from the series held once in memory, by window start index.

:class:`WindowBatcher` wraps the raw series (without a copy on the CPU, so a memory-mapped series
stays mapped) and the calendar features as tensors; a batch of windows is an ``index_select`` of
those on a ``start + offset`` grid, normalised as it is gathered, so no per-window copy and no
normalised copy of the series ever exists outside the batch being built.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import torch

from gptst.data.calendar import calendar_features
from gptst.data.scaler import StandardScaler
from gptst.data.series import SeriesData
from gptst.data.windows import WindowIndex


@dataclass(frozen=True)
class Batch:
    """One batch of windows.

    ``x`` normalised input [B, T_in, N, C] float32; ``cal`` calendar of the inputs [B, T_in, 4];
    ``cal_y`` calendar of the targets [B, T_out, 4]; ``y`` raw (not normalised) targets
    [B, T_out, N, C]; ``start`` window start indices [B] (int64); ``x_raw`` the raw input
    [B, T_in, N, C] (missing readings as they are: pre-training reconstructs it and masks them).
    """

    x: torch.Tensor
    cal: torch.Tensor
    cal_y: torch.Tensor
    y: torch.Tensor
    start: torch.Tensor
    x_raw: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch with every tensor on ``device``."""
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})


class WindowBatcher:
    """Gathers :class:`Batch` es for window start indices from one series.

    ``values`` [T, N, C] raw; ``calendar`` [T, 4] (see :func:`calendar_features`). All tensors
    live on ``device`` (default CPU), so on a GPU the gathering happens there too. NaN inputs
    become 0 in the normalised copy (the training mean): the targets keep them, for the
    metrics' masks, but a NaN must not reach a model's forward pass.
    """

    def __init__(
        self,
        values: np.ndarray | torch.Tensor,
        calendar: np.ndarray | torch.Tensor,
        scaler: StandardScaler,
        t_in: int,
        t_out: int,
        device: torch.device | str | None = None,
    ) -> None:
        if values.ndim != 3:
            raise ValueError(f"values must be [T, N, C], got shape {tuple(values.shape)}")
        if calendar.ndim != 2 or calendar.shape[0] != values.shape[0]:
            raise ValueError(f"calendar must be [T={values.shape[0]}, F], got shape {tuple(calendar.shape)}")
        if t_in < 1 or t_out < 1:
            raise ValueError(f"t_in and t_out must be >= 1, got {t_in} and {t_out}")
        device = torch.device(device) if device is not None else torch.device("cpu")
        # as_tensor shares memory with a float32 numpy array on the CPU: the raw series is not
        # copied. It is only ever read, so wrapping a read-only array is safe.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.raw = torch.as_tensor(values, dtype=torch.float32, device=device)
        self.scaler = scaler
        scaler.transform(self.raw[:1])  # fails now, not at the first batch, if the channels differ
        self.calendar = torch.as_tensor(calendar, dtype=torch.float32, device=device)
        self.t_in = t_in
        self.t_out = t_out
        self.device = device
        self._in_offsets = torch.arange(t_in, device=device)
        self._out_offsets = torch.arange(t_in, t_in + t_out, device=device)

    @classmethod
    def from_series(
        cls,
        series: SeriesData,
        scaler: StandardScaler,
        t_in: int,
        t_out: int,
        device: torch.device | str | None = None,
    ) -> WindowBatcher:
        """A batcher over ``series`` with its calendar features."""
        calendar = calendar_features(series.stamps, series.freq)
        return cls(series.values, calendar, scaler, t_in, t_out, device)

    @property
    def n_steps(self) -> int:
        return self.raw.shape[0]

    def gather(self, starts: np.ndarray | torch.Tensor | list[int]) -> Batch:
        """The batch of windows starting at ``starts`` [B]."""
        starts = _as_long_tensor(starts)
        if starts.ndim != 1:
            raise ValueError(f"starts must be 1-D, got shape {tuple(starts.shape)}")
        # Checked here because an out-of-range gather on CUDA is an opaque device-side assert.
        if len(starts) and (int(starts.min()) < 0 or int(starts.max()) + self.t_in + self.t_out > self.n_steps):
            raise IndexError(
                f"window starts {int(starts.min())}..{int(starts.max())} with t_in + t_out = "
                f"{self.t_in + self.t_out} do not fit a series of {self.n_steps} steps"
            )
        starts = starts.to(self.device)
        in_steps = (starts[:, None] + self._in_offsets).reshape(-1)
        out_steps = (starts[:, None] + self._out_offsets).reshape(-1)
        B = len(starts)
        x_raw = self.raw.index_select(0, in_steps).view(B, self.t_in, *self.raw.shape[1:])
        x = self.scaler.transform(x_raw)
        x[torch.isnan(x)] = 0.0
        return Batch(
            x=x,
            cal=self.calendar.index_select(0, in_steps).view(B, self.t_in, -1),
            cal_y=self.calendar.index_select(0, out_steps).view(B, self.t_out, -1),
            y=self.raw.index_select(0, out_steps).view(B, self.t_out, *self.raw.shape[1:]),
            start=starts,
            x_raw=x_raw,
        )

    def batches(
        self,
        windows: WindowIndex | np.ndarray | torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[Batch]:
        """Iterate over ``windows`` in batches of ``batch_size``, shuffled with ``generator`` if asked."""
        if isinstance(windows, WindowIndex):
            if (windows.t_in, windows.t_out) != (self.t_in, self.t_out):
                raise ValueError(
                    f"windows are {windows.t_in} -> {windows.t_out} steps, the batcher {self.t_in} -> {self.t_out}"
                )
            windows = windows.starts
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        starts = _as_long_tensor(windows)
        if shuffle:
            starts = starts[torch.randperm(len(starts), generator=generator)]
        stop = len(starts) - len(starts) % batch_size if drop_last else len(starts)
        for lo in range(0, stop, batch_size):
            yield self.gather(starts[lo : lo + batch_size])


def _as_long_tensor(starts: np.ndarray | torch.Tensor | list[int]) -> torch.Tensor:
    if isinstance(starts, torch.Tensor):
        return starts.long()
    # A copy (start indices are small): WindowIndex.starts is read-only and torch cannot wrap it.
    return torch.from_numpy(np.array(starts, dtype=np.int64))


def n_batches(n_windows: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :meth:`WindowBatcher.batches` yields for ``n_windows`` windows."""
    return n_windows // batch_size if drop_last else -(-n_windows // batch_size)
