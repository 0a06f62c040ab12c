"""The accuracy study (bench/accuracy.py) stores each result as it completes and a rerun after a
stop computes only what is missing; the report carries every seed's rows and the references. Run
through bench/gpu_protocol.sh --shrink (its CPU mode: the tiny preset on the embedded week)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO_ROOT, load_bench_script

PROTOCOL = {
    "study": "test",
    "study_iteration": 3,
    "budget_minutes": 30,
    "seeds": [0],
    "baselines": ["tgcn"],
    "variants": ["plain", "gptst"],
    "quick": {"seeds": [0], "baselines": ["tgcn"]},
    "preset": "tiny",
    "overrides": {
        "pretrain.epochs": 2,
        "pretrain.max_batches_per_epoch": 2,
        "finetune.common.max_batches_per_epoch": 2,
    },
    "datasets": {"metr-la-week": {"dataset.name": "study-test-week"}},
}


def _study_module():
    return load_bench_script("accuracy")


def test_every_result_is_an_mlflow_run_of_the_study_experiment(tmp_path: Path):
    """Reference forecasts only (no training): experiment gptst-study-<dataset>, tag study_iteration."""
    import mlflow

    study = _study_module()
    protocol = study.Protocol.read(_write(tmp_path), quick=False)
    store = study.Study(protocol, tmp_path / "results", tmp_path / "work", REPO_ROOT / "params.yaml")
    params = protocol.params("metr-la-week", 0, REPO_ROOT / "params.yaml")
    series, _ = store.data("metr-la-week", params)
    study._references(store, "metr-la-week", params, series, log=True)
    runs = mlflow.search_runs(experiment_names=["gptst-study-metr-la-week"], output_format="list")
    assert {r.data.tags["baseline"] for r in runs} >= {"persistence", "historical_average"}
    assert all(r.data.tags["study_iteration"] == "3" for r in runs)


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(PROTOCOL))
    return path


def _gpu_protocol(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RESULTS": str(tmp_path / "results"), "WORK": str(tmp_path / "work"), "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(REPO_ROOT / "bench" / "gpu_protocol.sh"), "--shrink", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_gpu_protocol_runs_on_cpu_shrunk_and_a_stopped_study_resumes_without_recomputing(tmp_path: Path):
    """bench/gpu_protocol.sh --shrink (the tiny preset): stopped after its first result (as a kill
    would), then rerun: the stored result is not recomputed, the other three variants of GWN are,
    and the accuracy table, accuracy.json and the plot carry all four and the references."""
    stopped = _gpu_protocol(tmp_path, "--stop-after", "1")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "on cpu" in stopped.stdout and "stopped" in stopped.stdout
    store = tmp_path / "results" / "accuracy" / "gpu-protocol-tiny" / "metr-la-week" / "gwn"
    first = store / "plain" / "seed0.json"
    assert first.is_file() and not (store / "calendar" / "seed0.json").exists()
    stamp, content = first.stat().st_mtime_ns, first.read_bytes()

    resumed = _gpu_protocol(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "3 results computed" in resumed.stdout and "complete" in resumed.stdout
    assert first.stat().st_mtime_ns == stamp and first.read_bytes() == content
    for variant in ("plain", "calendar", "gptst", "gptst_random"):
        assert f"| gwn | {variant} |" in resumed.stdout
    assert "| gwn | persistence |" in resumed.stdout and "gpu_protocol:" in resumed.stdout
    doc = json.loads((store / "gptst" / "seed0.json").read_text())
    assert doc["study_iteration"] == 1 and doc["uptime"].startswith("up ")

    rows = json.loads((tmp_path / "results" / "accuracy.json").read_text())
    keys = {(r["baseline"], r["variant"], r["horizon"]) for r in rows}
    assert {("gwn", "plain", "avg"), ("gwn", "gptst_random", "12"), ("persistence", "reference", "3")} <= keys
    assert all(
        set(r) == {"study", "dataset", "baseline", "variant", "seed", "horizon", "mae", "rmse", "mape"} for r in rows
    )
    assert (tmp_path / "results" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_an_ablation_study_finetunes_each_configuration_scores_robustness_and_maps_the_clusters(tmp_path: Path):
    """bench/ablations.yaml's shape at the tiny preset, in-process: one ablated pre-training
    besides the full one, robustness of plain and gptst, the cluster map beside the per-sensor MAE."""
    study = _study_module()
    protocol = {
        **PROTOCOL,
        "report": "ablations",
        "ablations": {"random_mask": {"pretrain.mask_strategy": "random"}},
        "robustness": {"shares": [0.2], "variants": ["plain", "gptst"]},
        "locations": {"metr-la-week": "data/raw/metr-la-week/graph_sensor_locations.csv"},
    }
    path = tmp_path / "ablations.yaml"
    path.write_text(yaml.safe_dump(protocol))
    results = tmp_path / "results"
    args = ["--protocol", str(path), "--results", str(results), "--work", str(tmp_path / "work"), "--no-mlflow"]
    assert study.main(args) == 0

    store = results / "ablations" / "test" / "metr-la-week"
    ablated = json.loads((store / "tgcn" / "gptst@random_mask" / "seed0.json").read_text())
    assert "robustness" not in ablated  # robustness is scored on the full configuration only
    gptst = json.loads((store / "tgcn" / "gptst" / "seed0.json").read_text())
    assert set(gptst["robustness"]) == {"0.2"}
    assert gptst["robustness"]["0.2"]["avg"]["mae"] != gptst["test"]["avg"]["mae"]
    assert len(gptst["nodes"]["abs_sum"]) == len(gptst["nodes"]["node_ids"]) == 207
    full = json.loads((store / "pretrain" / "seed0.json").read_text())
    assert full["config"] == "full" and len(full["clusters"]["modal"]) == 207
    assert (store / "pretrain" / "seed0@random_mask.json").is_file()

    report = (results / "ablations.md").read_text()
    assert "| tgcn | gptst@random_mask |" in report
    assert "20% missing" in report and "| tgcn | plain |" in report
    assert "| random_mask | 0 |" in report and "stable all day" in report
    assert (results / "ablations_clusters_metr-la-week.png").read_bytes()[:4] == b"\x89PNG"

    assert study.main(args) == 0  # a rerun of a complete study computes nothing
    assert json.loads((store / "tgcn" / "gptst" / "seed0.json").read_text()) == gptst


def test_the_cluster_map_places_each_sensor_at_its_own_coordinates_by_id(tmp_path: Path):
    """Rows of the locations file in another order, one study sensor without a location and one
    location of no study sensor: each drawn point carries its own sensor's coordinates, cluster,
    stability and MAE."""
    study = _study_module()
    locations = tmp_path / "locations.csv"
    locations.write_text(
        "index,sensor_id,latitude,longitude\n0,773869,34.3,-118.3\n1,000001,0.0,0.0\n2,767541,34.1,-118.1\n"
    )
    clusters = {"node_ids": ["767541", "716331", "773869"], "modal": [4, 2, 7], "stable": [True, False, False]}
    errors = (
        "gwn/gptst",
        [{"nodes": {"node_ids": clusters["node_ids"], "abs_sum": [3.0, 4.0, 10.0], "count": [1, 2, 4]}}],
    )
    points = study.cluster_map_points(clusters, errors, locations).set_index("sensor_id")
    assert list(points.index) == ["767541", "773869"]  # the study's order; 716331 has no location
    assert points.loc["767541"].tolist() == [-118.1, 34.1, 4, True, 3.0]
    assert points.loc["773869"].tolist() == [-118.3, 34.3, 7, False, 2.5]
    assert study.cluster_map_points(clusters, None, locations)["mae"].isna().all()

    locations.write_text("sensor_id,lat,lon\n773869,34.3,-118.3\n")
    with pytest.raises(ValueError, match=r"locations.csv: no column latitude, longitude"):
        study.cluster_map_points(clusters, None, locations)


def test_one_pre_training_serves_every_seed_and_results_of_another_iteration_stop_the_study(tmp_path: Path, capsys):
    """With ``pretrain_seed``, the finetune seeds vary and share one encoder: one pre-training
    document, one result per seed, the seeds' finetunes differ. Results stored by another
    iteration of the protocol are never mixed in: the study stops naming the file and both
    iterations."""
    study = _study_module()
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump({**PROTOCOL, "seeds": [0, 1], "variants": ["gptst"], "pretrain_seed": 0}))
    results = tmp_path / "results"
    args = ["--protocol", str(path), "--results", str(results), "--work", str(tmp_path / "work"), "--no-mlflow"]
    assert study.main(args) == 0
    store = results / "accuracy" / "test" / "metr-la-week"
    assert sorted(p.name for p in (store / "pretrain").iterdir()) == ["seed0.json"]
    seeds = [json.loads((store / "tgcn" / "gptst" / f"seed{k}.json").read_text()) for k in (0, 1)]
    assert seeds[0]["test"]["avg"]["mae"] != seeds[1]["test"]["avg"]["mae"]

    path.write_text(yaml.safe_dump({**PROTOCOL, "study_iteration": 4, "seeds": [0, 1], "variants": ["gptst"]}))
    with pytest.raises(SystemExit) as stop:
        study.main(args)
    message = str(stop.value)
    assert "study_iteration is 3, the protocol's is 4" in message and str(store) in message
