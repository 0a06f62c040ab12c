"""A finetune's test forecasts on disk: ``predictions.npz``.

Keys: ``pred`` float32 [W, T_out, N, C] in raw (de-normalised) units, ``starts`` int64 [W]
(each window's first input step, an index into the series), ``t_in`` (scalar), ``node_ids``
str [N]. The truth is not stored: it is the series at ``starts + t_in + arange(T_out)``, so the
file stays half the size and the truth has one source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptst.data.series import SeriesData
from gptst.errors import InputError
from gptst.io import write_npz


@dataclass(frozen=True)
class Predictions:
    pred: np.ndarray  # [W, T_out, N, C], raw units
    starts: np.ndarray  # [W]
    t_in: int
    node_ids: list[str]

    @property
    def t_out(self) -> int:
        return int(self.pred.shape[1])

    def target_steps(self) -> np.ndarray:
        """[W, T_out] series indices of the forecast steps."""
        return self.starts[:, None] + self.t_in + np.arange(self.t_out)

    def truth(self, series: SeriesData) -> np.ndarray:
        """The observed values [W, T_out, N, C] the forecasts are scored against."""
        if list(series.node_ids) != self.node_ids:
            raise ValueError("the predictions' node ids are not the series' node ids")
        return series.values[self.target_steps()]


def write_predictions(
    path: str | Path, pred: np.ndarray, starts: np.ndarray, t_in: int, node_ids: Sequence[str]
) -> Path:
    """Write test forecasts atomically (see the module docstring for the layout)."""
    pred = np.asarray(pred, dtype=np.float32)
    starts = np.asarray(starts, dtype=np.int64)
    if pred.ndim != 4 or pred.shape[0] != len(starts) or pred.shape[2] != len(node_ids):
        raise ValueError(f"pred {pred.shape} does not fit {len(starts)} windows of {len(node_ids)} nodes")
    return write_npz(
        path, pred=pred, starts=starts, t_in=np.int64(t_in), node_ids=np.asarray([str(n) for n in node_ids])
    )


def read_predictions(path: str | Path) -> Predictions:
    """Read and check a ``predictions.npz``; a malformed file is an :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", "missing: run the finetune stage that writes it")
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in ("pred", "starts", "t_in", "node_ids") if k not in npz.files]
        if missing:
            raise InputError(path, missing[0], "missing key")
        pred, starts, t_in, node_ids = npz["pred"], npz["starts"], int(npz["t_in"]), [str(n) for n in npz["node_ids"]]
    if pred.ndim != 4:
        raise InputError(path, "pred", f"shape {pred.shape}, expected [windows, T_out, N, C]")
    if len(starts) != pred.shape[0]:
        raise InputError(path, "starts", f"{len(starts)} starts for {pred.shape[0]} windows")
    if len(node_ids) != pred.shape[2]:
        raise InputError(path, "node_ids", f"{len(node_ids)} ids for {pred.shape[2]} nodes")
    return Predictions(pred.astype(np.float32, copy=False), starts.astype(np.int64), t_in, node_ids)
