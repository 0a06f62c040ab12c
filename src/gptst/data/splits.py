"""Chronological train/val/test split of the raw series (the reference's rule).

On a series of ``T`` steps: ``n_test = floor(T * r_test)``,
``n_val = floor(T * (r_val + r_test)) - n_test``, and train is the rest; the splits follow each
other in time (train, then val, then test). Windows are cut inside each split afterwards
(:mod:`gptst.data.windows`), so no window straddles two splits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gptst.params import SplitRatios

SPLIT_NAMES = ("train", "val", "test")


def robust_floor(x: float, decimals: int = 9) -> int:
    """``floor(x)`` after rounding ``x`` to ``decimals`` places.

    ``100 * 0.29`` is ``28.999999999999996`` in binary floating point; a plain floor would cut a
    step the ratios clearly ask for.
    """
    return math.floor(round(x, decimals))


@dataclass(frozen=True)
class SplitSteps:
    """The step ranges (half-open, into the full series) of each split."""

    train: range
    val: range
    test: range

    @property
    def n_steps(self) -> int:
        return self.test.stop

    def __getitem__(self, name: str) -> range:
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; splits are {list(SPLIT_NAMES)}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        """Steps per split, e.g. ``{"train": 1412, "val": 201, "test": 403}``."""
        return {name: len(self[name]) for name in SPLIT_NAMES}


def chronological_split(n_steps: int, ratios: SplitRatios | tuple[float, float, float]) -> SplitSteps:
    """Split ``n_steps`` time steps into train, val and test ranges, in time order.

    ``ratios`` is a :class:`SplitRatios` or a ``(train, val, test)`` tuple; only val and test
    enter the rule (train takes what remains), as in the reference implementation.
    """
    if isinstance(ratios, SplitRatios):
        r_val, r_test = ratios.val, ratios.test
    else:
        _, r_val, r_test = ratios
    if n_steps < 1:
        raise ValueError(f"cannot split a series of {n_steps} steps")
    n_test = robust_floor(n_steps * r_test)
    n_val = robust_floor(n_steps * (r_val + r_test)) - n_test
    n_train = n_steps - n_val - n_test
    if n_train < 0:
        raise ValueError(f"val + test ratios ({r_val} + {r_test}) exceed the whole series")
    return SplitSteps(
        train=range(0, n_train),
        val=range(n_train, n_train + n_val),
        test=range(n_train + n_val, n_steps),
    )
