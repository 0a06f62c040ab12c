"""MLflow model registry helpers: idempotent registration keyed by the DVC output hash, model
URIs (``models:/name/3``, ``models:/name@alias``, ``models:/name/latest``), downloads and aliases.

A registered version's source is always one of its run's artifacts, stored as
``runs:/<run_id>/<artifact path>`` so it stays valid when the store moves. Every version carries
the tag ``dvc_md5``: DVC may restore a stage from its run-cache without running it, and a stage
whose output is unchanged must never add a version.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gptst.errors import InputError
from gptst.tracking import tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

T = TypeVar("T")
DVC_MD5_TAG = "dvc_md5"
MODELS_SCHEME = "models:/"
_MD5 = re.compile(r"[0-9a-f]{32}")
# Registered model names and aliases as we use them: no '/' or '@' (they delimit the URI).
_NAME = r"[^/@'\s][^/@']*"
_VERSION_URI = re.compile(rf"(?P<name>{_NAME})/(?P<version>[0-9]+|latest)")
_ALIAS_URI = re.compile(rf"(?P<name>{_NAME})@(?P<alias>[A-Za-z0-9_\-]+)")


@dataclass(frozen=True)
class RegisteredVersion:
    """Outcome of :func:`register_version`: ``created`` is False when the hash was registered already."""

    name: str
    version: str
    created: bool


def client() -> MlflowClient:
    """An MlflowClient on the resolved tracking URI (the registry lives in the same store)."""
    import os

    from mlflow import MlflowClient

    uri = tracking_uri()
    # Explicit: MLflow 3 otherwise derives the registry URI itself (Unity Catalog on Databricks).
    return MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


def md5_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex md5 of a file's bytes: what DVC 3 records (``hash: md5``) for a single-file output.

    DVC 2 hashed text files after dos2unix ("md5-dos2unix"); DVC 3 hashes the raw bytes.
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def versions(name: str) -> list[ModelVersion]:
    """Every live version of ``name``, oldest first; empty if the model is not registered."""
    _check_name(name)
    return _search(client(), f"name = '{name}'")


def find_version(name: str, dvc_md5: str) -> str | None:
    """The oldest version of ``name`` tagged with this DVC output hash, or None."""
    found = _versions_with_md5(client(), name, _check_md5(dvc_md5))
    return str(found[0].version) if found else None


def register_version(
    name: str,
    artifact_uri_or_run_path: str,
    *,
    run_id: str,
    dvc_md5: str,
    tags: Mapping[str, Any] | None = None,
) -> RegisteredVersion:
    """Register the run's artifact as a new version of ``name``, unless a version already carries
    tag ``dvc_md5 == dvc_md5`` (then that version is returned with ``created=False``).

    ``artifact_uri_or_run_path`` is a path inside the run's artifacts (``encoder/encoder.pt``),
    ``runs:/<run_id>/<path>`` or the artifact's full URI under the run's artifact root. The
    artifact must exist. Tags are stringified; ``dvc_md5`` always wins over a tag of that name.
    """
    from mlflow.exceptions import MlflowException

    _check_name(name)
    dvc_md5 = _check_md5(dvc_md5)
    mlflow_client = client()
    existing = _versions_with_md5(mlflow_client, name, dvc_md5)
    if existing:
        return RegisteredVersion(name, str(existing[0].version), created=False)

    source = _run_source(mlflow_client, artifact_uri_or_run_path, run_id)
    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    all_tags = {**{str(k): str(v) for k, v in (tags or {}).items()}, DVC_MD5_TAG: dvc_md5}
    created = mlflow_client.create_model_version(name, source, run_id=run_id, tags=all_tags)
    version = str(created.version)

    # Two processes may both have found nothing and both created a version: the oldest wins
    # and the later one removes its own duplicate, so the registry holds one version per hash.
    same = _versions_with_md5(mlflow_client, name, dvc_md5)
    if same and str(same[0].version) != version:
        mlflow_client.delete_model_version(name, version)
        return RegisteredVersion(name, str(same[0].version), created=False)
    return RegisteredVersion(name, version, created=True)


def output_lineage_tags(params: Any, git_commit: str) -> dict[str, str]:
    """The lineage tags every registered stage output carries (with the commit its run recorded)."""
    return {
        "dataset": params.dataset.name,
        "preset": params.preset or "",
        "params_hash": params.digest(),
        "git_commit": git_commit,
    }


def register_run_output(
    name: str, path: str | Path, artifact_dir: str, run_id: str, tags: Mapping[str, Any], source: str | None = None
) -> str:
    """Register a stage's output file (already logged under ``artifact_dir`` of run ``run_id``, or
    inside the artifact ``source``, e.g. a pyfunc model's folder) as a version of ``name``, keyed by
    the file's DVC md5, with ``tags``; returns a line saying what happened."""
    path = Path(path)
    artifact = source or f"{artifact_dir}/{path.name}"
    version = register_version(name, artifact, run_id=run_id, dvc_md5=md5_file(path), tags=tags)
    state = "registered as" if version.created else "already registered as"
    return f"{state} {version.name} version {version.version}"


@contextlib.contextmanager
def local_copy(uri_or_path: str | Path, prefix: str = "gptst-model-") -> Iterator[tuple[Path, str]]:
    """A local path for a file or a ``models:/...`` URI (downloaded from the registry into a
    temporary folder that goes when the block ends), with the name to use in messages."""
    text = str(uri_or_path)
    if not text.startswith(MODELS_SCHEME):
        yield Path(uri_or_path), text
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        path = download_version(text, tmp)
        yield path, f"{text} ({path.name})"


def load_model(load: Callable[..., T], uri_or_path: str | Path, map_location: Any = "cpu") -> T:
    """``load`` (``load_forecaster`` or ``load_encoder``) applied to a file or a ``models:/`` URI."""
    with local_copy(uri_or_path) as (path, where):
        return load(path, map_location, where=where, source=str(uri_or_path))


def resolve_model_uri(uri: str) -> tuple[str, str]:
    """``models:/name/3``, ``models:/name@alias`` or ``models:/name/latest`` -> (name, version)."""
    from mlflow.exceptions import MlflowException

    text = str(uri)
    rest = text[len(MODELS_SCHEME) :] if text.startswith(MODELS_SCHEME) else None
    by_version = _VERSION_URI.fullmatch(rest) if rest is not None else None
    by_alias = _ALIAS_URI.fullmatch(rest) if rest is not None else None
    if by_version is None and by_alias is None:
        raise InputError(
            text,
            None,
            "not a model URI; expected models:/<name>/<version>, models:/<name>@<alias> or models:/<name>/latest",
        )
    if by_alias is not None:
        name, alias = by_alias["name"], by_alias["alias"]
        version = get_alias_version(name, alias)
        if version is None:
            raise InputError(text, "alias", f"registered model {name!r} has no alias {alias!r}")
        return name, version
    assert by_version is not None  # one of the two matched (checked above), and not the alias form
    name, version = by_version["name"], by_version["version"]
    if version == "latest":
        # Our own max: MLflow's "latest" goes through get_latest_versions (per deprecated stage).
        found = versions(name)
        if not found:
            raise InputError(text, "name", f"no registered model {name!r} (or it has no versions)")
        return name, str(found[-1].version)
    try:
        client().get_model_version(name, version)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise InputError(text, "version", f"registered model {name!r} has no version {version}") from None
    return name, version


def download_version(uri: str, dst_dir: str | Path | None = None, *, filename: str | None = None) -> Path:
    """Download the artifact of the version ``uri`` names into ``dst_dir`` (a new temporary
    folder if None, which the caller owns) and return the path of its bundle file.

    A version whose source is a folder must hold exactly one file, or name it with ``filename``;
    an MLflow model's folder (one with an ``MLmodel`` file) holds the bundle under ``artifacts/``.
    """
    import mlflow

    # A stage log is no place for a progress bar per downloaded bundle (a user's setting wins).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    name, version = resolve_model_uri(uri)
    mlflow_client = client()
    source = mlflow_client.get_model_version_download_uri(name, version)
    dst = Path(dst_dir) if dst_dir is not None else Path(tempfile.mkdtemp(prefix="gptst-model-"))
    dst.mkdir(parents=True, exist_ok=True)
    run = re.fullmatch(r"runs:/([^/]+)/(.+)", source)
    if run is not None:
        local = Path(mlflow_client.download_artifacts(run[1], run[2], str(dst)))
    else:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=tracking_uri())
        )
    where = f"{uri} (version {version} of {name}, source {source})"
    if local.is_file():
        return local
    # MLflow "downloads" a missing source as an empty folder without an error: check.
    files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else []
    if (local / "MLmodel").is_file():
        files = [p for p in files if p.parent == local / "artifacts"]
    if filename is not None:
        files = [p for p in files if p.name == filename]
    if len(files) != 1:
        listing = ", ".join(str(p.relative_to(local)) for p in files[:10]) or "nothing"
        want = f"the file {filename!r}" if filename else "exactly one file"
        raise InputError(where, "source", f"expected {want}, the artifact holds {listing}")
    return files[0]


def set_alias(name: str, alias: str, version: str | int) -> None:
    """Point ``name@alias`` at ``version`` (moves it if set)."""
    _check_name(name)
    client().set_registered_model_alias(name, alias, str(version))


def get_alias_version(name: str, alias: str) -> str | None:
    """The version ``name@alias`` points at, or None (no such alias or model)."""
    from mlflow.exceptions import MlflowException

    _check_name(name)
    try:
        model = client().get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    version = (model.aliases or {}).get(alias)
    return str(version) if version is not None else None


def _search(mlflow_client: MlflowClient, filter_string: str) -> list[ModelVersion]:
    found: list[ModelVersion] = []
    token = None
    while True:
        page = mlflow_client.search_model_versions(filter_string, page_token=token)
        found.extend(page)
        token = getattr(page, "token", None)
        if not token:
            break
    return sorted(found, key=lambda v: int(v.version))


def _versions_with_md5(mlflow_client: MlflowClient, name: str, dvc_md5: str) -> list[ModelVersion]:
    from mlflow.exceptions import MlflowException

    _check_name(name)
    try:
        # The SQLite and REST stores filter on tags in SQL (checked on MLflow 3.17).
        return _search(mlflow_client, f"name = '{name}' AND tags.{DVC_MD5_TAG} = '{dvc_md5}'")
    except MlflowException as err:
        if err.error_code != "INVALID_PARAMETER_VALUE":
            raise
    # A store without tag filters (e.g. Unity Catalog): filter here.
    return [v for v in _search(mlflow_client, f"name = '{name}'") if v.tags.get(DVC_MD5_TAG) == dvc_md5]


def _run_source(mlflow_client: MlflowClient, artifact: str, run_id: str) -> str:
    """``runs:/<run_id>/<path>`` for an artifact of ``run_id``, checked to exist."""
    artifact = str(artifact)
    if artifact.startswith("runs:/"):
        match = re.fullmatch(r"runs:/([^/]+)/(.+)", artifact)
        if match is None or match[1] != run_id:
            raise InputError(artifact, "run_id", f"must be runs:/{run_id}/<artifact path> (the run being registered)")
        rel = match[2]
    elif "://" in artifact or artifact.startswith("/"):
        root = mlflow_client.get_run(run_id).info.artifact_uri.rstrip("/")
        if not artifact.startswith(root + "/"):
            raise InputError(artifact, "source", f"is not under the artifact root {root} of run {run_id}")
        rel = artifact[len(root) + 1 :]
    else:
        rel = artifact
    rel = rel.strip("/")
    parent = rel.rpartition("/")[0] or None
    listed = {f.path for f in mlflow_client.list_artifacts(run_id, parent)}
    if rel not in listed:
        have = sorted(listed) or "none"
        raise InputError(artifact, "source", f"run {run_id} has no artifact {rel!r} (it has: {have})")
    return f"runs:/{run_id}/{rel}"


def _check_md5(value: str) -> str:
    md5 = str(value).strip().lower()
    if not _MD5.fullmatch(md5):
        raise ValueError(f"dvc_md5 must be a 32-digit hex md5, got {value!r}")
    return md5


def _check_name(name: str) -> None:
    # The name goes into a filter string: a quote would end it early.
    if not re.fullmatch(_NAME, name or ""):
        raise ValueError(f"registered model name {name!r} must be non-empty without '/', '@' or quotes")
