"""gptst.tracking: the store resolves to the project root, one experiment per dataset with
its artifact folder, and every stage run carries the standard tags."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest

from gptst.params import load_params
from gptst.project import git_commit, repo_root
from gptst.tracking import (
    dataset_input,
    ensure_experiment,
    experiment_name,
    pipeline_run_id,
    runs_view_url,
    stage_run,
    tracking_uri,
)
from gptst.tracking.registry import client

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


def test_a_run_is_named_for_what_ran_and_records_the_series_it_read_as_a_dataset_input(
    project: Path, monkeypatch, week_h5: Path
):
    from gptst.data.ingest import ingest

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlruns.db'}")
    params = load_params(project / "params.yaml")
    series = project / "series.parquet"
    ingest(params.dataset, week_h5, series, project / "meta.json")
    sha = "ab" * 32
    dataset = dataset_input(params, series, sha)
    with stage_run("finetune", params, dataset_sha256=sha, run_name="tgcn/plain", dataset=dataset) as run:
        pass
    stored = client().get_run(run.info.run_id)
    assert stored.info.run_name == "tgcn/plain" and stored.data.tags["stage"] == "finetune"
    (recorded,) = stored.inputs.dataset_inputs
    assert recorded.dataset.name == "metr-la-week"
    assert recorded.dataset.digest == sha[:36]  # MLflow's longest digest; the whole hash is a tag
    assert json.loads(recorded.dataset.source) == {"uri": str(series.resolve())}
    columns = json.loads(recorded.dataset.schema)["mlflow_colspec"]
    assert len(columns) == 1 + 207 and columns[0] == {"type": "datetime", "name": "timestamp", "required": True}
    assert {c["type"] for c in columns[1:]} == {"float"}
    assert [t.value for t in recorded.tags if t.key == "mlflow.data.context"] == ["training"]


def test_a_run_without_a_name_is_named_after_its_stage(project: Path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlruns.db'}")
    params = load_params(project / "params.yaml")
    with stage_run("evaluate", params, dataset_sha256="x") as run:
        pass
    assert client().get_run(run.info.run_id).info.run_name == "evaluate"


def test_experiments_open_as_model_training_experiments_also_when_made_before_the_tag(project: Path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlruns.db'}")
    fresh = ensure_experiment("gptst-new", project)
    old = client().create_experiment("gptst-old")  # as an earlier version of the pipeline left it
    assert ensure_experiment("gptst-old", project) == old
    for experiment_id in (fresh, old):
        assert client().get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_one_pipeline_execution_shares_one_pipeline_run_tag(project: Path, monkeypatch):
    monkeypatch.delenv("GPTST_PIPELINE_RUN", raising=False)
    params = load_params(project / "params.yaml")
    by_config = pipeline_run_id(project)
    assert by_config.startswith("config-") and pipeline_run_id(project) == by_config
    (project / "params.yaml").write_text((project / "params.yaml").read_text() + "\n# edited\n")
    assert pipeline_run_id(project) != by_config  # another configuration, another group
    monkeypatch.setenv("GPTST_PIPELINE_RUN", "flow-run-1234")
    assert pipeline_run_id(project) == "flow-run-1234"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlruns.db'}")
    with stage_run("ingest", params, dataset_sha256="x") as run:
        pass
    assert client().get_run(run.info.run_id).data.tags["pipeline_run"] == "flow-run-1234"


def test_the_runs_view_url_sorts_by_test_mae_best_first():
    url = runs_view_url("http://127.0.0.1:5000/", "7")
    assert url == (
        "http://127.0.0.1:5000/#/experiments/7/runs?orderByKey=metrics.%60test_mae_avg%60&orderByAsc=true"
        "&workflowType=machine_learning"
    )


def test_gptst_ui_url_prints_the_runs_view_of_the_datasets_experiment(project: Path, monkeypatch, capsys):
    from gptst.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlruns.db'}")
    assert main(["ui-url", "--params", str(project / "params.yaml"), "--base-url", "http://127.0.0.1:5123"]) == 0
    experiment = client().get_experiment_by_name("gptst-metr-la-week")
    assert capsys.readouterr().out.strip() == runs_view_url("http://127.0.0.1:5123", experiment.experiment_id)


def test_a_models_pip_requirements_are_checked_by_name_while_it_is_saved(caplog):
    """MLflow's own check reads every installed distribution's file list (0.5 s per finetune
    item); while a model is saved ours runs in its place, with the same outcome, and MLflow's is back after."""
    import mlflow.utils.environment as environment

    from gptst.tracking import MLFLOW_REQUIREMENT_CHECK, _requirements_checked_by_name, unsatisfied_requirements

    assert unsatisfied_requirements(["numpy", "torch>=2.4", "./local/path", "numpy<1; python_version<'3'"]) == []
    missing = unsatisfied_requirements(["torch>=999", "no-such-distribution-gptst"])
    assert [m.split(" ")[0] for m in missing] == ["torch", "no-such-distribution-gptst"]
    assert "required torch>=999" in missing[0] and "not installed" in missing[1]

    original = getattr(environment, MLFLOW_REQUIREMENT_CHECK)  # an MLflow that renamed it fails here
    with _requirements_checked_by_name(), caplog.at_level("WARNING", logger="gptst.tracking"):
        getattr(environment, MLFLOW_REQUIREMENT_CHECK)(["torch>=999"])
    assert getattr(environment, MLFLOW_REQUIREMENT_CHECK) is original
    assert "not met by this environment: torch (installed" in caplog.text
