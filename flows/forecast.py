"""Forecasts from the registry: the champion forecasts the next T_out steps from the newest data.

1. ``ingest``, ``adjacency`` and ``validate`` on the workspace's raw data (DVC skips what is
   unchanged): data that fails validation fails the flow there, and nothing is forecast.
2. The champion of ``<baseline>-<dataset>`` (``orchestration.forecast_baseline``, default the first
   of ``finetune.baselines``) is loaded from the registry as the pyfunc model MLflow serves
   (:mod:`gptst.serving`) and forecasts from the newest T_in steps of the canonical series.
3. The forecast is written atomically to ``reports/<dataset>/forecast/<last input time>.parquet``
   (``timestamp``, ``node_id``, ``channel``, ``value``, ``missing_inputs``) and summarised per step
   in the Prefect table artifact ``forecast-<dataset>``.

The deployment ``forecast-<dataset>`` (``prefect.yaml``, ``make deploy``) runs it on the cron
schedule ``orchestration.forecast_cron``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.dvc_ops import read_params, read_pipeline
from flows.pipeline import artifact_key, run_stages
from gptst.errors import InputError
from gptst.layout import model_name, processed_dir, reports_dir
from gptst.tracking import tracking_uri as project_tracking_uri

# The stages that bring the newest raw data in and gate it.
DATA_STAGES = ("ingest", "adjacency", "validate")
CHAMPION = "champion"


@task(name="forecast-champion", cache_policy=NO_CACHE)
def forecast_champion(workspace: str, baseline: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The champion's forecast from the newest T_in steps, written to the reports folder."""
    import mlflow
    import mlflow.pyfunc
    import pandas as pd

    from gptst.data.series import TIMESTAMP_COLUMN, column_name, load_series
    from gptst.io import atomic_path

    logger = get_run_logger()
    root = Path(workspace)
    params = read_params(root)
    dataset = params.dataset.name
    # The registry of the stages: the given store, else MLFLOW_TRACKING_URI or the project's own.
    mlflow.set_tracking_uri(tracking_uri or project_tracking_uri(root))
    uri = f"models:/{model_name(baseline, dataset)}@{CHAMPION}"
    model = mlflow.pyfunc.load_model(uri)
    series = load_series(processed_dir(root, dataset) / "series.parquet")
    t_in = params.windows.t_in
    if len(series.stamps) < t_in:
        raise InputError(root / "params.yaml", "windows.t_in", f"{t_in} steps, the series has {len(series.stamps)}")
    window = series.values[-t_in:]
    frame = pd.DataFrame(
        {
            TIMESTAMP_COLUMN: series.timestamps[-t_in:],
            **{
                column_name(n, c): window[:, i, j]
                for i, n in enumerate(series.node_ids)
                for j, c in enumerate(series.channels)
            },
        }
    )
    forecast = model.predict(frame)
    last = series.timestamps[-1]
    out = reports_dir(root, dataset) / "forecast" / f"{last:%Y%m%dT%H%M%S}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        forecast.to_parquet(tmp, index=False)
    summary = (
        forecast.groupby("timestamp")
        .agg(mean=("value", "mean"), min=("value", "min"), max=("value", "max"))
        .reset_index()
        .assign(timestamp=lambda f: f["timestamp"].astype(str))
    )
    missing = int((forecast.groupby(["node_id", "channel"])["missing_inputs"].first() > 0).sum())
    key = artifact_key("forecast", dataset)
    create_table_artifact(
        table=summary.round(3).to_dict(orient="records"),
        key=key,
        description=(
            f"{uri} from the {t_in} steps up to {last}: {len(forecast)} values in {out.relative_to(root)}; "
            f"{missing} node/channel series had missing readings in the window"
        ),
    )
    logger.info("forecast of %s from %s written to %s", uri, last, out)
    return {"model": uri, "path": str(out), "rows": len(forecast), "artifact": key, "last_input": str(last)}


@flow(name="forecast")
def forecast(workspace: str | None = None, baseline: str | None = None, tracking_uri: str | None = None) -> dict:
    """Forecast with the champion (module docstring). ``workspace``: the project checkout (default:
    the working directory, which the deployment's pull step sets)."""
    root = Path(workspace or ".").resolve()
    params = read_params(root)
    chosen = baseline or params.orchestration.forecast_baseline or params.finetune.baselines[0]
    stages, _ = read_pipeline(root)
    data_stages = [s for s in stages if s.address in DATA_STAGES]
    run_stages(root, data_stages, params.orchestration, tracking_uri)  # invalid data fails here
    return forecast_champion(str(root), chosen, tracking_uri)
