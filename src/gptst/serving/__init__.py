"""A registered forecaster as an MLflow pyfunc model: ``mlflow models serve`` and
``mlflow.pyfunc.load_model(...).predict(df)`` forecast from it.

Input: a DataFrame in the canonical series layout (:mod:`gptst.data.series`): a ``timestamp``
column and one column per ``"<node id>|<channel>"`` of the model, raw units, at least T_in rows at
the model's frequency, oldest first; the newest T_in rows are the window. A missing reading is
null/NaN or the dataset's null value, as in the training data. Output, long: one row per forecast
step, node and channel with ``timestamp``, ``node_id``, ``channel``, ``value`` (raw units) and
``missing_inputs``, the count of missing readings of that node and channel in the window.

Input with other node ids or channels, another frequency, irregular or too few steps is refused
with an MLflow ``INVALID_PARAMETER_VALUE`` error (:func:`serving_error`: HTTP 400 from the
scoring server) naming what differs. Torch and the model are imported when the model is loaded,
so logging one costs the tracking helper no torch import. The bundle records the dataset's null
value (``meta["null_value"]``) for the missing-input counts; NaN always counts as missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptst.data.series import TIMESTAMP_COLUMN, column_name

if TYPE_CHECKING:  # pandas is imported by the functions that serve: the training stages only log the model
    import pandas as pd

BUNDLE_ARTIFACT = "bundle"
# The code MLflow runs to build the model ("models from code": nothing is unpickled at load time).
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
# What the pyfunc model's environment needs beyond MLflow: this package and its torch.
PIP_REQUIREMENTS = ("gptst", "torch>=2.4,<2.15")
ColumnSpec = tuple[str, str]  # (MLflow column type, name)
OUTPUT_SPEC: tuple[ColumnSpec, ...] = (
    ("datetime", "timestamp"),
    ("string", "node_id"),
    ("string", "channel"),
    ("double", "value"),
    ("long", "missing_inputs"),
)
OUTPUT_COLUMNS = tuple(name for _, name in OUTPUT_SPEC)


def serving_error(message: str) -> Exception:
    """An MLflow INVALID_PARAMETER_VALUE error: the scoring server answers it with HTTP 400."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def signature_columns(node_ids: Sequence[str], channels: Sequence[str]) -> tuple[list[ColumnSpec], list[ColumnSpec]]:
    """The model signature as (MLflow type, column name) pairs: the window's columns in, the long
    forecast out (plain values, so that a process without MLflow loaded can pass them on)."""
    inputs = [("datetime", TIMESTAMP_COLUMN)] + [("double", column_name(n, c)) for n in node_ids for c in channels]
    return inputs, list(OUTPUT_SPEC)


def forecast_frame(bundle: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """The long forecast of ``bundle`` (a ForecasterBundle) from the newest T_in rows of ``frame``."""
    import numpy as np
    import pandas as pd
    import torch

    from gptst.data.batch import WindowBatcher
    from gptst.data.calendar import calendar_features

    values, stamps = window_values(bundle, frame)
    future = pd.date_range(stamps[-1], periods=bundle.t_out + 1, freq=bundle.freq)[1:]
    timestamps = stamps.append(future)
    padded = np.concatenate([values, np.full((bundle.t_out, *values.shape[1:]), np.nan, dtype=np.float32)])
    batcher = WindowBatcher(
        padded, calendar_features(timestamps, bundle.freq), bundle.scaler, bundle.t_in, bundle.t_out
    )
    batch = batcher.gather([0])
    bundle.forecaster.eval()
    with torch.no_grad():
        pred = bundle.scaler.inverse_transform(bundle.forecaster(batch.x, batch.cal)).float()[0].numpy()
    missing = np.isnan(values)
    null = bundle.meta.get("null_value")
    if null is not None:
        missing |= values == np.float32(null)
    steps, nodes, channels = pred.shape
    return pd.DataFrame(
        {
            "timestamp": np.repeat(future.values, nodes * channels),
            "node_id": np.tile(np.repeat(np.asarray(bundle.node_ids, dtype=object), channels), steps),
            "channel": np.tile(np.asarray(bundle.channels, dtype=object), steps * nodes),
            "value": pred.reshape(-1).astype(np.float64),
            "missing_inputs": np.tile(missing.sum(axis=0).reshape(-1), steps).astype(np.int64),
        },
        columns=list(OUTPUT_COLUMNS),
    )


def window_values(bundle: Any, frame: pd.DataFrame) -> tuple[Any, pd.DatetimeIndex]:
    """The newest T_in rows of ``frame`` as values [T_in, N, C] float32 and their timestamps,
    checked against the model's nodes, channels, frequency and window length."""
    import numpy as np
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise serving_error(
            f"expected a DataFrame (timestamp and '<node id>|<channel>' columns), got {type(frame).__name__}"
        )
    if TIMESTAMP_COLUMN not in frame.columns:
        raise serving_error(f"the input has no '{TIMESTAMP_COLUMN}' column")
    expected = [column_name(n, c) for n in bundle.node_ids for c in bundle.channels]
    given = [str(c) for c in frame.columns if c != TIMESTAMP_COLUMN]
    if given != expected:
        unknown, absent = sorted(set(given) - set(expected)), sorted(set(expected) - set(given))
        if unknown or absent:
            raise serving_error(
                f"the input's nodes/channels differ from the model's {len(expected)} columns: "
                f"{len(unknown)} unknown (e.g. {unknown[:5]}), {len(absent)} missing (e.g. {absent[:5]})"
            )
        frame = frame[[TIMESTAMP_COLUMN, *expected]]  # the same columns in another order
    if len(frame) < bundle.t_in:
        raise serving_error(f"the input has {len(frame)} steps; the model reads the newest {bundle.t_in}")
    frame = frame.iloc[-bundle.t_in :]
    try:
        stamps = pd.DatetimeIndex(pd.to_datetime(frame[TIMESTAMP_COLUMN]))
    except (ValueError, TypeError) as err:
        raise serving_error(f"the '{TIMESTAMP_COLUMN}' column is not a timestamp: {err}") from None
    steps = set(np.diff(stamps.values).astype("timedelta64[ns]").tolist()) if len(stamps) > 1 else set()
    want = pd.Timedelta(pd.tseries.frequencies.to_offset(bundle.freq)).value
    if steps != {want} and len(stamps) > 1:
        seen = sorted(pd.Timedelta(s) for s in steps)
        raise serving_error(
            f"the input's steps are {[str(s) for s in seen[:3]]}; the model's frequency is {bundle.freq} "
            f"({pd.Timedelta(want)}), oldest first"
        )
    values = frame[expected].to_numpy(dtype=np.float32, na_value=np.nan)
    return values.reshape(bundle.t_in, len(bundle.node_ids), len(bundle.channels)), stamps
