"""The data stages called in-process on real files: the raw METR-LA slice with its real
missing readings, and bad inputs that must stop the stage without losing earlier outputs."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages import adjacency as adjacency_stage
from stages import finetune_params as finetune_params_stage
from stages import ingest as ingest_stage
from stages import validate as validate_stage

from .conftest import REPO_ROOT, TEST_DATA, WEEK_DIR

RAW100 = TEST_DATA / "metr-la-raw100" / "metr-la-raw100.h5"


class Project:
    """A params.yaml in a temp folder, and the three data stages run against it."""

    def __init__(self, root: Path, series: Path, graph: Path) -> None:
        self.root = root
        shutil.copytree(REPO_ROOT / "presets", root / "presets")
        self.raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
        self.set(series=str(series), graph=str(graph))
        self.out = root / "processed"
        self.reports = root / "validation"

    def set(self, **dataset) -> None:
        self.raw["dataset"].update(dataset)
        (self.root / "params.yaml").write_text(yaml.safe_dump(self.raw))

    def ingest(self) -> int:
        return ingest_stage.main(["--params", str(self.root / "params.yaml"), "--out", str(self.out)])

    def adjacency(self) -> int:
        """The finetune_params stage (its list of derived graphs), then the adjacency stage."""
        resolved = self.out / "finetune_params.yaml"
        params = ["--params", str(self.root / "params.yaml")]
        code = finetune_params_stage.main([*params, "--out", str(resolved)])
        if code:
            return code
        return adjacency_stage.main(
            [
                *params,
                "--series",
                str(self.out / "series.parquet"),
                "--out",
                str(self.out / "adjacency.npz"),
                "--finetune-params",
                str(resolved),
            ]
        )

    def validate(self) -> int:
        return validate_stage.main(
            [
                "--params",
                str(self.root / "params.yaml"),
                "--series",
                str(self.out / "series.parquet"),
                "--adjacency",
                str(self.out / "adjacency.npz"),
                "--out",
                str(self.reports),
            ]
        )

    def all(self) -> list[int]:
        return [self.ingest(), self.adjacency(), self.validate()]

    def outputs(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.out.iterdir())}


@pytest.fixture
def raw100(tmp_path: Path) -> Project:
    return Project(tmp_path, RAW100, WEEK_DIR / "adj_mx.pkl")


def write_week_variant(path: Path, change) -> Path:
    """A copy of the real week (first 300 steps) with a deliberate defect: synthetic edge case."""
    frame = pd.read_hdf(WEEK_DIR / "metr-la-week.h5", "df").iloc[:300]
    frame = change(frame.copy())
    frame.to_hdf(path, key="df")
    return path


def test_the_raw_metr_la_slice_validates_with_the_default_thresholds(raw100: Project, capsys):
    assert raw100.all() == [0, 0, 0]
    counts = json.loads((raw100.reports / "metrics.json").read_text())
    assert counts["blocking_failed"] == 0 and counts["evaluated"] == counts["successful"]
    assert 0.02 < counts["missing_share_overall"] < 0.04
    # the raw slice's int64 columns matched the pickle's string ids
    graph = np.load(raw100.out / "adjacency.npz")
    with open(WEEK_DIR / "adj_mx.pkl", "rb") as fh:  # trusted file of this repo
        ids, _, matrix = pickle.load(fh, encoding="latin1")
    assert graph["node_ids"].tolist() == list(ids)
    np.testing.assert_array_equal(graph["adj"], matrix)
    assert "validate: passed" in capsys.readouterr().out


def test_a_per_node_missing_threshold_of_half_blocks_and_names_sensor_718072(raw100: Project, capsys):
    raw100.raw["dataset"]["max_missing_per_node"] = 0.5
    raw100.set()
    assert raw100.all() == [0, 0, 3]  # 3: invalid data (gptst.errors)
    err = capsys.readouterr().err
    assert "718072" in err and "missing_share" in err
    assert "759602" not in err  # 33% missing: under the threshold
    result = json.loads((raw100.reports / "gx_result.json").read_text())
    failed = [r for suite in result["validation_results"] for r in suite["results"] if not r["success"]]
    assert [r["expectation_config"]["type"] for r in failed] == ["expect_column_values_to_be_between"]
    assert failed[0]["expectation_config"]["kwargs"]["column"] == "missing_share"
    assert failed[0]["result"]["unexpected_count"] == 1
    assert json.loads((raw100.reports / "metrics.json").read_text())["blocking_failed"] == 1


@pytest.mark.parametrize(
    "defect, expectation, named",
    [
        (lambda f: _set(f, 7, 3, np.nan), "n_nonfinite", "n_nonfinite"),
        (lambda f: _set(f, 9, 0, np.inf), "n_nonfinite", "n_nonfinite"),
        (lambda f: f.iloc[np.r_[0:50, 49:300]], "timestamp", "expect_column_values_to_be_unique"),
        (lambda f: f.iloc[np.r_[0:20, 21, 20, 22:300]], "timestamp", "expect_column_values_to_be_increasing"),
        (lambda f: f.drop(f.index[100:103]), "step_seconds", "expect_column_values_to_be_in_set"),
        (lambda f: f.assign(**{f.columns[5]: f.iloc[:, 5] * 3}), "max", "max"),
    ],
    ids=["nan", "inf", "duplicated-timestamps", "unsorted-timestamps", "gap", "above-speed-bound"],
)
def test_defective_series_pass_ingest_and_are_blocked_by_validate(
    tmp_path: Path, capsys, defect, expectation: str, named: str
):
    project = Project(tmp_path, write_week_variant(tmp_path / "bad.h5", defect), WEEK_DIR / "adj_mx.pkl")
    assert project.all() == [0, 0, 3]  # 3: invalid data (gptst.errors)
    err = capsys.readouterr().err
    assert re.search(r"^error: \S+series\.parquet: validation failed: \d+ blocking expectation\(s\) failed$", err, re.M)
    assert named in err
    result = json.loads((project.reports / "gx_result.json").read_text())
    failed_columns = {
        r["expectation_config"]["kwargs"].get("column")
        for suite in result["validation_results"]
        for r in suite["results"]
        if not r["success"]
    }
    assert expectation in failed_columns
    assert (project.reports / "summary.md").read_text().count("FAIL") >= 1


def _set(frame: pd.DataFrame, row: int, column: int, value: float) -> pd.DataFrame:
    frame.iloc[row, column] = value
    return frame


def test_a_gap_is_reported_with_its_count_and_first_positions(tmp_path: Path):
    project = Project(
        tmp_path, write_week_variant(tmp_path / "gap.h5", lambda f: f.drop(f.index[100:103])), WEEK_DIR / "adj_mx.pkl"
    )
    assert project.all() == [0, 0, 3]  # 3: invalid data (gptst.errors)
    assert json.loads((project.reports / "metrics.json").read_text())["gaps"] == 1
    summary = (project.reports / "summary.md").read_text()
    assert "2012-03-01 08:35:00" in summary  # the first step after the 3 dropped ones


def test_a_bad_graph_fails_the_adjacency_stage_and_keeps_the_previous_adjacency(raw100: Project, tmp_path, capsys):
    assert raw100.ingest() == 0 and raw100.adjacency() == 0
    before = raw100.outputs()

    np.save(tmp_path / "rect.npy", np.ones((207, 206)))
    raw100.set(graph=str(tmp_path / "rect.npy"))
    assert raw100.adjacency() == 2
    assert "must be a square 2-D matrix, got shape (207, 206)" in capsys.readouterr().err

    np.save(tmp_path / "small.npy", np.ones((20, 20)))
    raw100.set(graph=str(tmp_path / "small.npy"))
    assert raw100.adjacency() == 2
    assert "20" in capsys.readouterr().err

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    raw100.set(graph=str(evil))
    assert raw100.adjacency() == 2
    err = capsys.readouterr().err
    assert "os.system" in err or "posix.system" in err
    assert not marker.exists()
    assert raw100.outputs() == before


def test_a_series_file_that_disappeared_names_it(raw100: Project, capsys):
    raw100.set(series=str(raw100.root / "nowhere.h5"))
    assert raw100.ingest() == 2
    assert "nowhere.h5: file not found" in capsys.readouterr().err
