"""gptst.tracking.registry against a real SQLite MLflow store: registration is idempotent by the
DVC output hash, versions carry their tags, aliases and models:/ URIs resolve and download, and
the registered encoder loads from the store and predicts what the original predicts."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
import torch

from gptst.errors import InputError
from gptst.models.gptst.bundle import load_encoder
from gptst.tracking import registry
from gptst.tracking.registry import (
    download_version,
    find_version,
    get_alias_version,
    load_model,
    md5_file,
    register_version,
    resolve_model_uri,
    set_alias,
    versions,
)

from .test_encoder_bundle import SmallEncoder, one_thread, small_encoder  # noqa: F401 (autouse fixture)

NAME = "gptst-encoder-metr-la-week"
ARTIFACT = "encoder/encoder.pt"
TAGS = {
    "dataset": "metr-la-week",
    "dataset_sha256": "d" * 64,
    "git_commit": "c" * 40,
    "params_hash": "p" * 16,
    "preset": "cpu",
    "variant": "pretrain",
}


@pytest.fixture(scope="module")
def small(week) -> SmallEncoder:
    return small_encoder(week)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty SQLite store: MLflow's schema migrations take 3-7 s here, a copy ms."""
    path = tmp_path_factory.mktemp("store") / "mlruns.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def experiment(empty_store: Path, tmp_path: Path, monkeypatch) -> str:
    """A fresh SQLite store (and artifact folder) for this test only."""
    before = mlflow.get_tracking_uri()
    shutil.copy(empty_store, tmp_path / "mlruns.db")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("gptst-test", artifact_location=(tmp_path / "mlartifacts").as_uri())
    yield experiment_id
    mlflow.set_tracking_uri(before)


def _log(experiment_id: str, bundle: Path) -> str:
    """A pretrain-like run that logs the bundle under ``encoder/``; returns its run id."""
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifact(str(bundle), artifact_path="encoder")
    return run.info.run_id


def _bundle(small: SmallEncoder, path: Path, bump: float = 0.0) -> Path:
    """The small encoder's bundle, with one weight changed by ``bump`` (a retrained encoder)."""
    if bump:
        original = small.model.encoder.input_proj.bias.detach().clone()
        with torch.no_grad():
            small.model.encoder.input_proj.bias[0] += bump
        try:
            return small.save(path)
        finally:
            with torch.no_grad():
                small.model.encoder.input_proj.bias.copy_(original)
    return small.save(path)


def test_registration_is_idempotent_by_the_dvc_output_hash(small, experiment, tmp_path):
    first = _bundle(small, tmp_path / "v1" / "encoder.pt")
    md5 = md5_file(first)
    run = _log(experiment, first)
    assert register_version(NAME, ARTIFACT, run_id=run, dvc_md5=md5, tags=TAGS) == registry.RegisteredVersion(
        NAME, "1", created=True
    )
    # The same stage output again (same run, or a new run after DVC restored the output from its
    # run-cache, given as runs:/ URI): nothing is added.
    assert register_version(NAME, ARTIFACT, run_id=run, dvc_md5=md5, tags=TAGS).created is False
    rerun = _log(experiment, first)
    again = register_version(NAME, f"runs:/{rerun}/{ARTIFACT}", run_id=rerun, dvc_md5=md5.upper(), tags=TAGS)
    assert (again.version, again.created) == ("1", False)
    assert [str(v.version) for v in versions(NAME)] == ["1"]

    # A different output is a new version; here the source is given as the artifact's full URI.
    second = _bundle(small, tmp_path / "v2" / "encoder.pt", bump=1e-3)
    md5_2 = md5_file(second)
    assert md5_2 != md5
    run_2 = _log(experiment, second)
    uri_2 = f"{mlflow.get_run(run_2).info.artifact_uri}/{ARTIFACT}"
    assert register_version(NAME, uri_2, run_id=run_2, dvc_md5=md5_2, tags={**TAGS, "encoder_version": 2}).created

    found = versions(NAME)
    assert [str(v.version) for v in found] == ["1", "2"]
    assert found[0].tags == {**TAGS, "dvc_md5": md5}
    assert found[1].tags == {**TAGS, "encoder_version": "2", "dvc_md5": md5_2}
    assert found[0].source == f"runs:/{run}/{ARTIFACT}" and found[0].run_id == run
    assert found[1].source == f"runs:/{run_2}/{ARTIFACT}"
    assert (find_version(NAME, md5), find_version(NAME, md5_2), find_version(NAME, "0" * 32)) == ("1", "2", None)
    assert versions("no-such-model") == []


def test_aliases_and_model_uris_resolve_and_download(small, experiment, tmp_path):
    md5s = {}
    for version, bump in (("1", 0.0), ("2", 1e-3)):
        path = _bundle(small, tmp_path / version / "encoder.pt", bump=bump)
        md5s[version] = md5_file(path)
        register_version(NAME, ARTIFACT, run_id=_log(experiment, path), dvc_md5=md5s[version], tags=TAGS)

    assert get_alias_version(NAME, "champion") is None
    assert get_alias_version("no-such-model", "champion") is None
    set_alias(NAME, "champion", 1)
    assert get_alias_version(NAME, "champion") == "1"

    uris = {f"models:/{NAME}/1": "1", f"models:/{NAME}@champion": "1", f"models:/{NAME}/latest": "2"}
    for uri, version in uris.items():
        assert resolve_model_uri(uri) == (NAME, version)
        local = download_version(uri, tmp_path / "downloads" / uri.replace("/", "_").replace(":", ""))
        assert local.is_file() and local.name == "encoder.pt"
        assert md5_file(local) == md5s[version]
    assert download_version(f"models:/{NAME}/2").is_file()  # into a new temporary folder

    set_alias(NAME, "champion", "2")  # moving the alias
    assert resolve_model_uri(f"models:/{NAME}@champion") == (NAME, "2")

    bad = {
        f"models:/{NAME}/9": "version",
        f"models:/{NAME}@nobody": "alias",
        "models:/no-such-model/latest": "name",
        "runs:/abc/encoder": None,
        f"models:/{NAME}": None,
    }
    for uri, field in bad.items():
        with pytest.raises(InputError) as err:
            resolve_model_uri(uri)
        assert err.value.source == uri and err.value.field == field


def test_the_registered_encoder_loads_from_the_store_and_predicts_like_the_original(small, experiment, tmp_path):
    path = _bundle(small, tmp_path / "encoder.pt")
    register_version(NAME, ARTIFACT, run_id=_log(experiment, path), dvc_md5=md5_file(path), tags=TAGS)
    set_alias(NAME, "champion", "1")

    for uri in (f"models:/{NAME}@champion", f"models:/{NAME}/1"):
        bundle = load_model(load_encoder, uri)
        assert bundle.source == uri
        assert torch.equal(small.encode(bundle.model), small.encode())
    # The downloaded file itself is a plain weights-only checkpoint.
    raw = torch.load(download_version(f"models:/{NAME}/1", tmp_path / "dl"), weights_only=True, map_location="cpu")
    assert raw["format"] == "gptst-encoder/1"

    with pytest.raises(InputError, match="has no version 5"):
        load_model(load_encoder, f"models:/{NAME}/5")


def test_registration_refuses_an_artifact_the_run_does_not_have(small, experiment, tmp_path):
    path = _bundle(small, tmp_path / "encoder.pt")
    run = _log(experiment, path)
    other = _log(experiment, path)
    md5 = md5_file(path)
    with pytest.raises(InputError, match="has no artifact 'encoder/missing.pt'"):
        register_version(NAME, "encoder/missing.pt", run_id=run, dvc_md5=md5, tags=TAGS)
    with pytest.raises(InputError, match=f"runs:/{run}/"):
        register_version(NAME, f"runs:/{other}/{ARTIFACT}", run_id=run, dvc_md5=md5, tags=TAGS)
    with pytest.raises(InputError, match="not under the artifact root"):
        register_version(NAME, path.as_uri(), run_id=run, dvc_md5=md5, tags=TAGS)
    with pytest.raises(ValueError, match="32-digit hex md5"):
        register_version(NAME, ARTIFACT, run_id=run, dvc_md5="sha256:abc", tags=TAGS)
    assert versions(NAME) == []


def test_a_concurrent_duplicate_is_removed_and_the_oldest_version_wins(small, experiment, tmp_path, monkeypatch):
    path = _bundle(small, tmp_path / "encoder.pt")
    run = _log(experiment, path)
    md5 = md5_file(path)
    assert register_version(NAME, ARTIFACT, run_id=run, dvc_md5=md5, tags=TAGS).created

    # Another process's lookup ran before version 1 existed: it creates version 2, then finds
    # version 1 with the same hash and deletes its own.
    real = registry._versions_with_md5
    calls = []

    def stale_first_lookup(*args, **kwargs):
        calls.append(args)
        return [] if len(calls) == 1 else real(*args, **kwargs)

    monkeypatch.setattr(registry, "_versions_with_md5", stale_first_lookup)
    assert register_version(NAME, ARTIFACT, run_id=run, dvc_md5=md5, tags=TAGS) == registry.RegisteredVersion(
        NAME, "1", created=False
    )
    assert len(calls) == 2
    assert [str(v.version) for v in versions(NAME)] == ["1"]
