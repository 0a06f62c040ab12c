"""gptst.tracking: the store resolves to the project root, one experiment per dataset with
its artifact folder, and every stage run carries the standard tags."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest

from gptst.params import load_params
from gptst.project import git_commit, repo_root
from gptst.tracking import ensure_experiment, experiment_name, stage_run, tracking_uri

from .conftest import REPO_ROOT


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "sub" / "dir").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "params.yaml", root / "params.yaml")
    shutil.copytree(REPO_ROOT / "presets", root / "presets")
    return root


def test_the_default_store_is_at_the_project_root_whatever_the_working_directory(project: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("GPTST_ROOT", raising=False)
    monkeypatch.chdir(project / "sub" / "dir")
    assert repo_root() == project
    assert tracking_uri() == f"sqlite:///{project / 'mlruns.db'}"


def test_mlflow_tracking_uri_switches_to_a_team_server(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri() == "http://mlflow.example:5000"


def test_a_stage_run_has_the_standard_tags_params_and_its_experiment_artifacts_under_the_root(
    project: Path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlruns.db'}")
    params = load_params(project / "params.yaml")
    with stage_run("ingest", params, dataset_sha256="abc123", device="cpu", sections=("dataset",)) as run:
        mlflow.log_metric("steps", 2016)
    client = mlflow.tracking.MlflowClient()
    stored = client.get_run(run.info.run_id)
    assert stored.info.status == "FINISHED"
    tags = stored.data.tags
    assert tags["stage"] == "ingest" and tags["dataset"] == "metr-la-week"
    assert tags["dataset_sha256"] == "abc123" and tags["device"] == "cpu" and tags["preset"] == "cpu"
    assert tags["params_hash"] == params.digest()
    assert tags["git_commit"] == "unknown"  # the temp project is not a git repository
    assert stored.data.params["dataset.name"] == "metr-la-week"
    assert stored.data.params["dataset.split.train"] == "0.7"
    experiment = client.get_experiment(stored.info.experiment_id)
    assert experiment.name == experiment_name(params) == "gptst-metr-la-week"
    assert experiment.artifact_location == (project / "mlartifacts" / "gptst-metr-la-week").as_uri()


def test_a_failing_stage_ends_its_run_as_failed(project: Path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlruns.db'}")
    params = load_params(project / "params.yaml")
    with pytest.raises(RuntimeError), stage_run("validate", params, dataset_sha256="x") as run:
        raise RuntimeError("boom")
    assert mlflow.tracking.MlflowClient().get_run(run.info.run_id).info.status == "FAILED"


def test_the_experiment_is_created_once(project: Path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlruns.db'}")
    assert ensure_experiment("gptst-x", project) == ensure_experiment("gptst-x", project)


def test_git_commit_marks_a_dirty_tree(tmp_path: Path):
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    run = lambda *a: subprocess.run(a, cwd=tmp_path, check=True, capture_output=True, env={**os.environ, **env})  # noqa: E731
    run("git", "init", "-q")
    (tmp_path / "f").write_text("1")
    run("git", "add", "f")
    run("git", "commit", "-qm", "x")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "f").write_text("2")
    assert git_commit(tmp_path) == f"{head}-dirty"
