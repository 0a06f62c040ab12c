"""Training utilities shared by pre-training and fine-tuning: losses and metrics."""

from gptst.training.metrics import (
    METRIC_NAMES,
    HorizonMetricAccumulator,
    horizon_metrics,
    masked_huber,
    masked_mae,
    masked_mape,
    masked_mse,
    masked_rmse,
    mlflow_metric_keys,
    valid_mask,
    write_metrics_json,
)

__all__ = [
    "METRIC_NAMES",
    "HorizonMetricAccumulator",
    "horizon_metrics",
    "masked_huber",
    "masked_mae",
    "masked_mape",
    "masked_mse",
    "masked_rmse",
    "mlflow_metric_keys",
    "valid_mask",
    "write_metrics_json",
]
