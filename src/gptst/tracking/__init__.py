"""MLflow helpers every stage uses: tracking URI, one experiment per dataset, standard tags.

The default store is a SQLite file at the project root (``sqlite:///<root>/mlruns.db``) with
artifacts in ``<root>/mlartifacts/``, resolved from the project root, not the working directory;
``MLFLOW_TRACKING_URI`` switches to a team server.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptst.params import Params
from gptst.project import git_commit, repo_root


def tracking_uri(root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(root) if root is not None else repo_root()
    return f"sqlite:///{root.resolve() / 'mlruns.db'}"


def experiment_name(params: Params) -> str:
    """One experiment per dataset: ``<prefix>-<dataset>``."""
    return f"{params.tracking.experiment_prefix}-{params.dataset.name}"


def ensure_experiment(name: str, root: str | Path | None = None) -> str:
    """Create the experiment (artifacts under ``<root>/mlartifacts/<name>``) unless it exists."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(root))
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    root = Path(root) if root is not None else repo_root()
    location = (root.resolve() / "mlartifacts" / name).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # Another process created it between our lookup and create.
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def standard_tags(stage: str, params: Params, *, dataset_sha256: str, device: str) -> dict[str, str]:
    """Tags every run carries, so the UI can filter and trace any number back to its inputs."""
    return {
        "stage": stage,
        "dataset": params.dataset.name,
        "dataset_sha256": dataset_sha256,
        "git_commit": git_commit(params.root),
        "params_hash": params.digest(),
        "preset": params.preset or "",
        "device": device,
    }


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested params into ``a.b.c`` keys for ``mlflow.log_params``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@dataclass(frozen=True)
class RunSpec:
    """Everything an MLflow run of one stage starts with, as plain values (no MLflow needed to build it)."""

    experiment: str
    root: str
    run_name: str
    tags: dict[str, str]
    params: dict[str, Any]


def run_spec(
    stage: str,
    params: Params,
    *,
    dataset_sha256: str,
    device: str = "cpu",
    sections: tuple[str, ...] = (),
    tags: Mapping[str, str] | None = None,
) -> RunSpec:
    """The run of ``stage``: its experiment, the standard tags plus ``tags``, the params of ``sections``."""
    dumped = params.model_dump(mode="json") if sections else {}
    return RunSpec(
        experiment=experiment_name(params),
        root=str(params.root),
        run_name=f"{stage}-{params.dataset.name}",
        tags={**standard_tags(stage, params, dataset_sha256=dataset_sha256, device=device), **(tags or {})},
        params=flatten({s: dumped[s] for s in sections}),
    )


def open_run(spec: RunSpec) -> Any:
    """Start the run ``spec`` describes (creating its experiment if needed) with its params logged;
    returns MLflow's active run, a context manager that ends it (FAILED when its block raises)."""
    import mlflow

    experiment_id = ensure_experiment(spec.experiment, spec.root)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=spec.run_name, tags=spec.tags)
    if spec.params:
        mlflow.log_params(spec.params)
    return run


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Params,
    *,
    dataset_sha256: str,
    device: str = "cpu",
    sections: tuple[str, ...] = (),
    tags: Mapping[str, str] | None = None,
) -> Iterator[Any]:
    """Start an MLflow run in this process for one stage execution with the standard tags and the
    params of ``sections`` logged; yields the active run. A failing stage ends its run as FAILED.
    (The training stages log through :mod:`gptst.tracking.sidecar` instead.)"""
    spec = run_spec(stage, params, dataset_sha256=dataset_sha256, device=device, sections=sections, tags=tags)
    with open_run(spec) as run:
        yield run


def log_stage_run(
    stage: str,
    params: Params,
    *,
    dataset_sha256: str,
    device: str = "cpu",
    sections: tuple[str, ...] = (),
    tags: Mapping[str, str] | None = None,
    metrics: Mapping[str, float] | None = None,
    artifacts: Sequence[str | Path] = (),
    artifact_path: str | None = None,
) -> str:
    """Log a finished stage in one call (metrics, artifact files under ``artifact_path``); returns the run id."""
    import mlflow

    with stage_run(stage, params, dataset_sha256=dataset_sha256, device=device, sections=sections, tags=tags) as run:
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        for path in artifacts:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)
    return run.info.run_id
