"""gptst.tracking.sidecar: a training stage's MLflow run, logged by a helper process, records
what the stage sent in order; registration is keyed by the file's hash; an error in the helper
reaches the stage; a failing stage ends its run as FAILED; the helper never outlives the stage."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from gptst.params import load_params
from gptst.tracking.registry import client, md5_file, versions
from gptst.tracking.sidecar import TrackingError, TrackingSidecar

from .conftest import REPO_ROOT


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO_ROOT / "params.yaml", root / "params.yaml")
    shutil.copytree(REPO_ROOT / "presets", root / "presets")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns.db'}")
    return root


def test_the_run_records_params_tags_per_epoch_metrics_and_the_artifact_and_registers_it(project: Path):
    params = load_params(project / "params.yaml")
    bundle = project / "model.pt"
    bundle.write_bytes(b"weights")
    with TrackingSidecar.start(project) as tracking:
        missing = tracking.find_version("tgcn-metr-la-week", md5_file(bundle))
        with tracking.run(
            "finetune",
            params,
            dataset_sha256="abc",
            sections=("windows",),
            tags={"baseline": "tgcn"},
            run_name="tgcn/plain",
        ) as run:
            run.log_params({"baselines.tgcn.hidden": 64})
            log = run.log_fn()
            for epoch in (1, 2, 3):
                log(epoch, {"val_mae": 4.0 - epoch / 10})
            run.set_tags({"encoder_version": "3"})
            run.log_artifact(bundle, artifact_path="model")
            first = run.register_output("tgcn-metr-la-week", bundle, "model", {"variant": "plain"})
            again = run.register_output("tgcn-metr-la-week", bundle, "model", {"variant": "plain"})
            run_id = run.run_id
        assert missing.result() is None
        assert tracking.find_version("tgcn-metr-la-week", md5_file(bundle)).result() == "1"
    assert (first, again) == (
        "registered as tgcn-metr-la-week version 1",
        "already registered as tgcn-metr-la-week version 1",
    )
    mlflow_client = client()
    stored = mlflow_client.get_run(run_id)
    assert stored.info.status == "FINISHED" and stored.info.run_name == "tgcn/plain"
    assert stored.data.tags["stage"] == "finetune" and stored.data.tags["baseline"] == "tgcn"
    assert stored.data.tags["encoder_version"] == "3" and stored.data.tags["dataset_sha256"] == "abc"
    assert stored.data.tags["mlflow.source.name"] == str(Path(sys.argv[0]).resolve())  # the stage, not the helper
    assert stored.data.params["baselines.tgcn.hidden"] == "64" and stored.data.params["windows.t_in"] == "12"
    history = mlflow_client.get_metric_history(run_id, "val_mae")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 3.9), (2, 3.8), (3, 3.7)]
    assert [f.path for f in mlflow_client.list_artifacts(run_id, "model")] == ["model/model.pt"]
    (version,) = versions("tgcn-metr-la-week")
    assert version.run_id == run_id and version.tags["variant"] == "plain"
    assert version.tags["dvc_md5"] == md5_file(bundle) and version.tags["params_hash"] == params.digest()


def test_a_stage_that_fails_ends_its_run_as_failed_and_keeps_its_own_error(project: Path):
    params = load_params(project / "params.yaml")
    with (
        TrackingSidecar.start(project) as tracking,
        pytest.raises(ZeroDivisionError),
        tracking.run("pretrain", params, dataset_sha256="x") as run,
    ):
        run.log_metrics({"loss": 1.0}, step=1)
        run_id = run.run_id
        _ = 1 / 0
    assert client().get_run(run_id).info.status == "FAILED"


def test_an_error_in_the_helper_reaches_the_stage_with_its_cause_and_fails_the_run(project: Path):
    params = load_params(project / "params.yaml")
    with (
        TrackingSidecar.start(project) as tracking,
        pytest.raises(TrackingError, match="no_such_file.pt"),
        tracking.run("finetune", params, dataset_sha256="x") as run,
    ):
        run_id = run.run_id
        run.log_artifact(project / "no_such_file.pt")  # sent without waiting: fails in the helper
        run.log_metrics({"after": 1.0})  # skipped: an earlier call of the run failed
    stored = client().get_run(run_id)
    assert stored.info.status == "FAILED" and "after" not in stored.data.metrics


def test_registration_is_skipped_when_the_params_say_so(project: Path):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["tracking"]["register_models"] = False
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(project / "params.yaml")
    (project / "m.pt").write_bytes(b"w")
    with TrackingSidecar.start(project) as tracking, tracking.run("finetune", params, dataset_sha256="x") as run:
        line = run.register_output("tgcn-metr-la-week", project / "m.pt", "model", {})
    assert line == "not registered (tracking.register_models is false)"
    assert versions("tgcn-metr-la-week") == []


def test_the_helper_exits_with_the_stage_and_when_the_stage_dies_without_closing(project: Path):
    with TrackingSidecar.start(project) as tracking:
        assert tracking.exit_code is None
    assert tracking.exit_code == 0
    orphan = TrackingSidecar.start(project)
    orphan._proc.stdin.close()  # what the operating system does when the stage process dies
    orphan._proc.wait(timeout=60)
    assert orphan.exit_code == 0


def test_a_call_the_helper_does_not_know_is_refused(project: Path):
    with TrackingSidecar.start(project) as tracking, pytest.raises(TrackingError, match="unknown tracking call"):
        tracking.call("handle", request={})
