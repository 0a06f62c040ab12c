"""Sliding windows as start indices into the full series, never as materialised copies.

A window starting at step ``s`` has input steps ``[s, s + t_in)`` and target steps
``[s + t_in, s + t_in + t_out)``; stride is 1. A split of ``S`` steps holds
``S - t_in - t_out + 1`` windows, all inside its steps. Batches gather from the series with
these indices (:mod:`gptst.data.batch`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gptst.data.splits import SPLIT_NAMES, SplitSteps, chronological_split
from gptst.errors import InputError
from gptst.params import SplitRatios, WindowParams


@dataclass(frozen=True)
class WindowIndex:
    """The windows of one split: ``starts`` int64 [W], each an index into the full series."""

    starts: np.ndarray
    t_in: int
    t_out: int

    def __post_init__(self) -> None:
        starts = np.asarray(self.starts, dtype=np.int64)
        starts.setflags(write=False)  # shared by every consumer: nobody may reorder it in place
        object.__setattr__(self, "starts", starts)

    @property
    def length(self) -> int:
        """Steps one window spans: ``t_in + t_out``."""
        return self.t_in + self.t_out

    def __len__(self) -> int:
        return len(self.starts)

    def input_steps(self) -> np.ndarray:
        """[W, t_in] step indices of every window's input (indices only, not values)."""
        return self.starts[:, None] + np.arange(self.t_in)

    def target_steps(self) -> np.ndarray:
        """[W, t_out] step indices of every window's targets."""
        return self.starts[:, None] + np.arange(self.t_in, self.length)

    def last(self, n: int | None) -> WindowIndex:
        """The last ``n`` windows (all when ``n`` is None), e.g. for re-scoring on recent data."""
        if n is None or n >= len(self):
            return self
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        return WindowIndex(self.starts[len(self) - n :], self.t_in, self.t_out)


def window_index(steps: range, t_in: int, t_out: int, split: str = "split") -> WindowIndex:
    """Every stride-1 window lying entirely inside ``steps``.

    Raises :class:`InputError` naming ``split`` and the numbers when ``steps`` is too short
    for one window.
    """
    if t_in < 1 or t_out < 1:
        raise ValueError(f"t_in and t_out must be >= 1, got {t_in} and {t_out}")
    n_windows = len(steps) - t_in - t_out + 1
    if n_windows < 1:
        raise InputError(
            "params.yaml",
            "dataset.split / windows",
            f"the {split} split has {len(steps)} steps (steps {steps.start}..{steps.stop - 1}) but one "
            f"window needs t_in + t_out = {t_in} + {t_out} = {t_in + t_out} steps; "
            "use a longer series, a larger ratio for this split or shorter windows",
        )
    return WindowIndex(np.arange(steps.start, steps.start + n_windows, dtype=np.int64), t_in, t_out)


@dataclass(frozen=True)
class Splits:
    """Step ranges and window start indices of the train, val and test splits."""

    steps: SplitSteps
    train: WindowIndex
    val: WindowIndex
    test: WindowIndex

    @property
    def t_in(self) -> int:
        return self.train.t_in

    @property
    def t_out(self) -> int:
        return self.train.t_out

    def __getitem__(self, name: str) -> WindowIndex:
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; splits are {list(SPLIT_NAMES)}")
        return getattr(self, name)

    def counts(self) -> dict[str, int]:
        """Windows per split, e.g. ``{"train": 1389, "val": 178, "test": 380}``."""
        return {name: len(self[name]) for name in SPLIT_NAMES}


def make_splits(
    n_steps: int,
    ratios: SplitRatios | tuple[float, float, float],
    windows: WindowParams,
) -> Splits:
    """Split ``n_steps`` chronologically and index the windows of each split."""
    steps = chronological_split(n_steps, ratios)
    per_split = {name: window_index(steps[name], windows.t_in, windows.t_out, name) for name in SPLIT_NAMES}
    return Splits(steps=steps, **per_split)
