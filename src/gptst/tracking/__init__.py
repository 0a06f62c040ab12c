"""MLflow helpers every stage uses: tracking URI, one experiment per dataset, standard tags.

Runs are named for what ran (``pretrain``, ``encode``, ``<baseline>/<variant>``, ``evaluate``,
``promote``; the dataset is the experiment), carry the ``pipeline_run`` tag that every run of one
pipeline execution shares, and runs that read the series record it as an MLflow dataset input.
Experiments are tagged as model-training experiments, so MLflow 3's UI opens them on the runs
table rather than on its GenAI overview.

The default store is a SQLite file at the project root (``sqlite:///<root>/mlruns.db``) with
artifacts in ``<root>/mlartifacts/``, resolved from the project root, not the working directory;
``MLFLOW_TRACKING_URI`` switches to a team server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import quote

from typing_extensions import Unpack

from gptst.params import Params
from gptst.project import git_commit, repo_root

# MLflow 3's UI picks an experiment's landing page from this tag.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# One pipeline execution: set by the Prefect flows (their flow-run id) and `make run`.
PIPELINE_RUN_ENV = "GPTST_PIPELINE_RUN"
# MLflow refuses dataset digests longer than this.
MLFLOW_DIGEST_CHARS = 36
# What MLflow's model saving calls to warn about unmet pip requirements (see log_pyfunc_model).
MLFLOW_REQUIREMENT_CHECK = "warn_dependency_requirement_mismatches"


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
    """Create the experiment (artifacts under ``<root>/mlartifacts/<name>``) unless it exists; either
    way it is tagged as a model-training experiment (:data:`EXPERIMENT_KIND_TAG`)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(root))
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        if existing.tags.get(EXPERIMENT_KIND_TAG) is None:  # made before the tag, or by someone else
            mlflow.MlflowClient().set_experiment_tag(existing.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return existing.experiment_id
    root = Path(root) if root is not None else repo_root()
    location = (root.resolve() / "mlartifacts" / name).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except mlflow.exceptions.MlflowException:
        # Another process created it between our lookup and create.
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def runs_view_url(base_url: str, experiment_id: str, sort_metric: str = "test_mae_avg") -> str:
    """The MLflow UI's runs table of ``experiment_id`` sorted by ``sort_metric``, best (lowest) first,
    in the UI's model-training mode (its default is the GenAI one)."""
    order = quote(f"metrics.`{sort_metric}`", safe="")
    query = f"orderByKey={order}&orderByAsc=true&workflowType=machine_learning"
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def pipeline_run_id(root: str | Path) -> str:
    """The id every run of one pipeline execution shares: ``GPTST_PIPELINE_RUN`` where the
    orchestration sets it (a Prefect flow-run id, or `make run`'s start time); for a bare
    ``dvc repro``, ``config-`` and a digest of ``dvc.yaml`` and ``params.yaml`` (the runs of one
    pipeline configuration)."""
    env = os.environ.get(PIPELINE_RUN_ENV)
    if env:
        return env
    digest = hashlib.sha256()
    for name in ("dvc.yaml", "params.yaml"):
        path = Path(root) / name
        digest.update(path.read_bytes() if path.is_file() else b"")
    return f"config-{digest.hexdigest()[:12]}"


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
        "pipeline_run": pipeline_run_id(params.root),
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
class DatasetInput:
    """The series a run read, as MLflow records a dataset input: name, digest (the series sha256,
    cut to MLflow's 36 characters; the whole one is the ``dataset_sha256`` tag), source path and
    the column schema of the canonical Parquet file. ``context`` is MLflow's input tag
    (``training`` or ``evaluation``)."""

    name: str
    digest: str
    source: str
    columns: dict[str, str]
    context: str = "training"


def dataset_input(params: Params, series: str | Path, sha256: str, context: str = "training") -> DatasetInput:
    """:class:`DatasetInput` of the canonical series file ``series`` (its schema read, not its values)."""
    import pyarrow.parquet as pq

    path = Path(series).resolve()
    schema = pq.read_schema(path)
    columns = {field.name: "datetime" if str(field.type).startswith("timestamp") else "float" for field in schema}
    return DatasetInput(params.dataset.name, sha256[:MLFLOW_DIGEST_CHARS], str(path), columns, context)


@dataclass(frozen=True)
class RunSpec:
    """Everything an MLflow run of one stage starts with, as plain values (no MLflow needed to build it)."""

    experiment: str
    root: str
    run_name: str
    tags: dict[str, str]
    params: dict[str, Any]
    dataset: dict[str, Any] | None = None  # a DatasetInput's fields


class RunOptions(TypedDict, total=False):
    """What a stage may say of its run beyond its name, params and data hash (see :func:`run_spec`);
    every function that starts a run takes these as keywords."""

    device: str
    sections: tuple[str, ...]
    tags: Mapping[str, str] | None
    run_name: str | None
    dataset: DatasetInput | None


def run_spec(
    stage: str,
    params: Params,
    *,
    dataset_sha256: str,
    device: str = "cpu",
    sections: tuple[str, ...] = (),
    tags: Mapping[str, str] | None = None,
    run_name: str | None = None,
    dataset: DatasetInput | None = None,
) -> RunSpec:
    """The run of ``stage`` (named ``run_name``, by default the stage): its experiment, the standard
    tags plus ``tags``, the params of ``sections`` and the dataset input it records."""
    dumped = params.model_dump(mode="json") if sections else {}
    return RunSpec(
        experiment=experiment_name(params),
        root=str(params.root),
        run_name=run_name or stage,
        tags={**standard_tags(stage, params, dataset_sha256=dataset_sha256, device=device), **(tags or {})},
        params=flatten({s: dumped[s] for s in sections}),
        dataset=dataclasses.asdict(dataset) if dataset is not None else None,
    )


def open_run(spec: RunSpec) -> Any:
    """Start the run ``spec`` describes (creating its experiment if needed) with its params and
    dataset input logged; returns MLflow's active run, a context manager that ends it (FAILED when
    its block raises)."""
    import mlflow

    experiment_id = ensure_experiment(spec.experiment, spec.root)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=spec.run_name, tags=spec.tags)
    if spec.params:
        mlflow.log_params(spec.params)
    if spec.dataset is not None:
        _log_dataset(DatasetInput(**spec.dataset))
    return run


def _log_dataset(dataset: DatasetInput) -> None:
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]  # registered at import
    from mlflow.types import ColSpec, Schema

    schema = Schema([ColSpec(kind, name) for name, kind in dataset.columns.items()])
    source = LocalArtifactDatasetSource(dataset.source)
    meta = MetaDataset(source, name=dataset.name, digest=dataset.digest, schema=schema)  # type: ignore[abstract]
    mlflow.log_input(meta, context=dataset.context)


@contextlib.contextmanager
def stage_run(stage: str, params: Params, *, dataset_sha256: str, **options: Unpack[RunOptions]) -> Iterator[Any]:
    """Start an MLflow run in this process for one stage execution with the standard tags and the
    params of ``sections`` logged; yields the active run. A failing stage ends its run as FAILED.
    (The training stages log through :mod:`gptst.tracking.sidecar` instead.)"""
    with open_run(run_spec(stage, params, dataset_sha256=dataset_sha256, **options)) as run:
        yield run


def log_stage_run(
    stage: str,
    params: Params,
    *,
    dataset_sha256: str,
    metrics: Mapping[str, float] | None = None,
    artifacts: Sequence[str | Path] = (),
    artifact_path: str | None = None,
    **options: Unpack[RunOptions],
) -> str:
    """Log a finished stage in one call (metrics, artifact files under ``artifact_path``); returns the run id."""
    import mlflow

    with stage_run(stage, params, dataset_sha256=dataset_sha256, **options) as run:
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        for path in artifacts:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)
    return run.info.run_id


def unsatisfied_requirements(requirements: Sequence[str]) -> list[str]:
    """The pip requirements this environment does not satisfy, as ``name (installed X, required R)``.

    Each is looked up by its distribution name; requirements that are not ``name[specifier]``
    (a path, a URL) and those whose marker excludes this environment are skipped.
    """
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import InvalidRequirement, Requirement

    unsatisfied = []
    for text in requirements:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            unsatisfied.append(f"{requirement.name} (not installed, required {text})")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            unsatisfied.append(f"{requirement.name} (installed {installed}, required {text})")
    return unsatisfied


def _warn_unsatisfied(requirements: list[str]) -> None:
    if unsatisfied := unsatisfied_requirements(requirements):
        logging.getLogger(__name__).warning(
            "the model's pip requirements are not met by this environment: %s", "; ".join(unsatisfied)
        )


@contextlib.contextmanager
def _requirements_checked_by_name() -> Iterator[None]:
    """While saving a model, check its pip requirements by distribution name.

    MLflow's own check first maps every installed module to its distribution by reading each
    distribution's file list: about 0.5 s per process here, on the critical path of every
    finetune item. The requirements are explicit, so the check needs only their names.
    """
    import mlflow.utils.environment as environment

    original = getattr(environment, MLFLOW_REQUIREMENT_CHECK, None)
    if original is None:  # another MLflow: its own check runs
        yield
        return
    setattr(environment, MLFLOW_REQUIREMENT_CHECK, _warn_unsatisfied)
    try:
        yield
    finally:
        setattr(environment, MLFLOW_REQUIREMENT_CHECK, original)


def log_pyfunc_model(
    code: str | Path,
    artifact_path: str,
    *,
    artifacts: Mapping[str, str | Path],
    inputs: Sequence[tuple[str, str]],
    outputs: Sequence[tuple[str, str]],
    pip_requirements: Sequence[str],
) -> None:
    """Log an MLflow pyfunc model built from ``code`` ("models from code": nothing pickled) with
    ``artifacts`` and the signature of column specs ``inputs`` / ``outputs`` ((MLflow type, name)
    pairs) under ``artifact_path`` of the active run."""
    import tempfile

    import mlflow
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    def schema(columns: Sequence[tuple[str, str]]) -> Schema:
        return Schema([ColSpec(kind, name) for kind, name in columns])

    with tempfile.TemporaryDirectory(prefix="gptst-pyfunc-") as tmp, _requirements_checked_by_name():
        folder = Path(tmp) / artifact_path
        mlflow.pyfunc.save_model(
            path=str(folder),
            python_model=str(code),
            artifacts={k: str(v) for k, v in artifacts.items()},
            signature=ModelSignature(inputs=schema(inputs), outputs=schema(outputs)),
            pip_requirements=list(pip_requirements),
        )
        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)
