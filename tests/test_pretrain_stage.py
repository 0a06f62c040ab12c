"""The pretrain stage on the real METR-LA week (tiny preset), called in-process: its outputs,
its MLflow run and registered encoder, idempotent registration, and the windows it reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import stages.pretrain as pretrain_stage
from gptst.data.ingest import ingest
from gptst.data.series import load_series
from gptst.models.gptst.bundle import load_encoder
from gptst.params import load_params
from gptst.tracking.registry import client, load_model, md5_file, versions

from .conftest import REPO_ROOT, WEEK_DIR

ENCODER = "gptst-encoder-metr-la-week"


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.copytree(REPO_ROOT / "presets", root / "presets")
        raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
        raw["preset"] = "tiny"
        (root / "params.yaml").write_text(yaml.safe_dump(raw))
        self.params = load_params(root / "params.yaml")
        self.series = root / "series.parquet"
        ingest(self.params.dataset, WEEK_DIR / "metr-la-week.h5", self.series, root / "meta.json")
        self.encoder = root / "encoder.pt"
        self.reports = root / "reports"

    def run(self) -> int:
        return pretrain_stage.main(
            [
                "--params",
                str(self.root / "params.yaml"),
                "--series",
                str(self.series),
                "--out",
                str(self.encoder),
                "--state",
                str(self.root / "state"),
                "--reports",
                str(self.reports),
            ]
        )


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory):
    """Run the stage twice with nothing changed; keep what the first run trained."""
    root = tmp_path_factory.mktemp("pretrain")
    store = f"sqlite:///{root / 'mlruns.db'}"
    results = []
    real = pretrain_stage.pretrain
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store)
        mp.setattr(pretrain_stage, "pretrain", lambda *a, **k: results.append(real(*a, **k)) or results[-1])
        project = Project(root)
        assert project.run() == 0
        first = {"md5": md5_file(project.encoder), "versions": [v.version for v in versions(ENCODER)]}
        assert project.run() == 0
        second = {"md5": md5_file(project.encoder), "versions": [v.version for v in versions(ENCODER)]}
        tracked = client()
        experiment = tracked.get_experiment_by_name("gptst-metr-la-week")
        runs = tracked.search_runs([experiment.experiment_id]) if experiment else []
        yield project, results, first, second, runs, store


def test_the_stage_writes_the_bundle_metrics_and_curves(stage):
    project, results, *_ = stage
    metrics = json.loads((project.reports / "metrics.json").read_text())
    assert metrics["preset"] == "tiny" and metrics["epochs_run"] == project.params.pretrain.epochs
    assert 0 < metrics["change_epoch"] < project.params.pretrain.epochs  # the adaptive phase ran
    assert metrics["train_windows"] == 1389 and metrics["val_windows"] == 178
    assert np.isfinite(metrics["val_mae"]) and np.isfinite(metrics["val_mae_mixed_mask"])
    curves = pd.read_csv(project.reports / "curves.csv")
    assert curves["epoch"].tolist() == list(range(1, project.params.pretrain.epochs + 1))
    assert {"train_loss", "train_reconstruction", "train_kl", "val_mae", "lr"} <= set(curves.columns)
    assert (project.reports / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pretraining_reads_training_windows_only(stage):
    project, results, *_ = stage
    result = results[0]
    train, val = set(result.splits.train.starts.tolist()), set(result.splits.val.starts.tolist())
    assert result.windows_read["train"] and result.windows_read["train"] <= train
    end_of_train = result.splits.steps.train.stop
    assert (
        max(result.windows_read["train"]) + project.params.windows.t_in + project.params.windows.t_out <= end_of_train
    )
    assert result.windows_read["val"] <= val  # validation selects the checkpoint
    test = set(result.splits.test.starts.tolist())
    assert not (result.windows_read["train"] | result.windows_read["val"]) & test


def test_the_mlflow_run_has_params_the_preset_and_per_epoch_metrics(stage):
    project, _, _, _, runs, store = stage
    first, second = sorted((r for r in runs if r.data.tags.get("stage") == "pretrain"), key=lambda r: r.info.start_time)
    assert first.data.tags["preset"] == "tiny" and first.info.run_name == "pretrain"
    (dataset,) = first.inputs.dataset_inputs  # the tracking helper logged the series it trained on
    assert dataset.dataset.name == "metr-la-week" and dataset.dataset.digest == first.data.tags["dataset_sha256"][:36]
    assert first.data.params["pretrain.epochs"] == str(project.params.pretrain.epochs)
    store_client = mlflow.tracking.MlflowClient(store)
    for run in (first, second):  # the second run resumed the finished checkpoint: it shows the whole curve
        history = store_client.get_metric_history(run.info.run_id, "val_metric")
        assert [m.step for m in history] == list(range(1, project.params.pretrain.epochs + 1))


def test_the_registered_encoder_loads_from_the_store_and_predicts_like_the_trained_model(stage, monkeypatch):
    project, results, first, *_, store = stage
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    bundle = load_model(load_encoder, f"models:/{ENCODER}/1")  # torch.load(weights_only=True) inside
    assert bundle.node_ids == load_series(project.series).node_ids and bundle.t_in == 12
    trained = results[0].model
    x = torch.randn(2, 12, len(bundle.node_ids), 1, generator=torch.Generator().manual_seed(0))
    cal = torch.rand(2, 12, 4)
    with torch.no_grad():
        assert torch.equal(bundle.model.encode(x, cal), trained.encode(x, cal))


def test_running_the_stage_again_with_nothing_changed_registers_no_second_version(stage):
    _, _, first, second, runs, _ = stage
    assert [str(v) for v in first["versions"]] == [str(v) for v in second["versions"]] == ["1"]
    assert first["md5"] == second["md5"]  # resumed from the finished checkpoint: the same bundle


def test_a_checkpoint_written_without_cuda_loads_on_cpu_and_predicts_the_same(stage):
    project, results, *_ = stage
    state = torch.load(project.root / "state" / "best.pt", map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in state.values())
    model = load_encoder(project.encoder).model
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    x, cal = torch.zeros(1, 12, model.cfg.num_nodes, 1), torch.zeros(1, 12, 4)
    with torch.no_grad():
        assert torch.equal(model.encode(x, cal), results[0].model.encode(x, cal))
