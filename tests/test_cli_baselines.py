"""``gptst baselines``: every registered baseline with its parameter count at the dataset's size,
for the input width of each variant (plain C, calendar C + 4, gptst the pre-training hidden size)."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from gptst.cli import main
from gptst.data.series import write_series
from gptst.data.splits import chronological_split
from gptst.graph.adjacency import build_adjacency
from gptst.graph.bundle import GraphBundle, write_adjacency
from gptst.graph.derived import build_derived_graphs, derived_graph_inputs
from gptst.models.baselines.registry import build_baseline, graphs_needed, parameter_count, registered_baselines
from gptst.params import load_params
from gptst.training.baseline_config import baseline_config

from .conftest import REPO_ROOT, TEST_DATA, WEEK_DIR

ROW = re.compile(r"^(\w+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)(?:\s+\(applies to .*\))?$")


class Project:
    """The project's params.yaml and presets in a temp folder, pointed at real embedded data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.copytree(REPO_ROOT / "presets", root / "presets")
        self.raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
        self.set("dataset", series=str(WEEK_DIR / "metr-la-week.h5"), graph=str(WEEK_DIR / "adj_mx.pkl"))

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def processed(self) -> Path:
        return self.root / "data" / "processed" / self.raw["dataset"]["name"]

    def set(self, section: str, **values) -> None:
        self.raw[section].update(values)
        self.params_file.write_text(yaml.safe_dump(self.raw))

    def run(self, capsys) -> tuple[int, str, str]:
        code = main(["baselines", "--params", str(self.params_file)])
        out, err = capsys.readouterr()
        return code, out, err


def rows(out: str) -> dict[str, tuple[int, int, int]]:
    """Baseline name -> (plain, calendar, gptst) counts from the printed table."""
    found = {}
    for line in out.splitlines():
        if match := ROW.match(line):
            found[match[1]] = tuple(int(count.replace(",", "")) for count in match.groups()[1:])
    return found


def week_subset(project: Project, week, nodes: int) -> tuple[np.ndarray, list[str]]:
    """Write the week's first ``nodes`` sensors as the project's ingested series; return their
    graph (the real one, restricted to them)."""
    write_series(
        project.processed / "series.parquet",
        replace(week, values=np.ascontiguousarray(week.values[:, :nodes]), node_ids=week.node_ids[:nodes]),
    )
    adj, ids = build_adjacency(WEEK_DIR / "adj_mx.pkl", week.node_ids, load_params(project.params_file).graph)
    return adj[:nodes, :nodes], ids[:nodes]


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


def test_counts_every_registered_baseline_as_finetune_builds_it_from_the_raw_files(project, week, capsys):
    """Before any stage has run, the sizes come from the raw series and graph files (read as the
    ingest and adjacency stages read them): 207 nodes, 1 channel; the counts are those of the
    models finetune builds, with the preset's baseline sections and the pre-training hidden size."""
    code, out, _ = project.run(capsys)
    assert code == 0
    params = load_params(project.params_file)
    hidden = params.pretrain.model.hidden
    assert f"series {WEEK_DIR / 'metr-la-week.h5'}" in out and f"graph {WEEK_DIR / 'adj_mx.pkl'}" in out
    assert "207 nodes, 1 channel (speed), 12 -> 12 steps" in out
    assert "plain (in 1)" in out and "calendar (in 5)" in out and f"gptst (in {hidden})" in out

    table = rows(out)
    assert sorted(table) == registered_baselines() and len(table) >= 5
    adj, ids = build_adjacency(WEEK_DIR / "adj_mx.pkl", week.node_ids, params.graph)
    # the derived graphs some baselines read, built from the training split as the adjacency stage does
    train = chronological_split(len(week.values), params.dataset.split).train
    extras, _ = build_derived_graphs(
        graphs_needed(registered_baselines()), derived_graph_inputs(adj, week, train, params.graph.derived)
    )
    graph = GraphBundle(adj=adj, node_ids=ids, extras=extras)
    for name, counts in table.items():
        expected = tuple(
            parameter_count(
                build_baseline(
                    name,
                    num_nodes=207,
                    in_dim=width,
                    out_dim=1,
                    in_steps=12,
                    out_steps=12,
                    graph=graph,
                    params=baseline_config(params, name),
                )
            )
            for width in (1, 5, hidden)
        )
        assert counts == expected, name
    # T-GCN in closed form: two graph-convolution weight/bias pairs on [x, h] and the h -> 12 head.
    h = baseline_config(params, "tgcn").hidden
    assert table["tgcn"] == tuple(3 * h * (width + h) + 3 * h + 12 * (h + 1) for width in (1, 5, hidden))
    # speed data: the demand-only baselines are counted and marked
    assert re.search(r"^ccrnn\s.*\(applies to demand data only\)$", out, re.MULTILINE)


def test_reads_the_stage_outputs_when_they_exist_and_not_the_raw_files(project, week, capsys):
    """With data/processed/<name>/series.parquet and adjacency.npz present (here: the week's
    first 30 sensors) the command reads those, so it reports 30 nodes and never opens the raw
    files (which no longer exist)."""
    adj, ids = week_subset(project, week, nodes=30)
    write_adjacency(project.processed / "adjacency.npz", adj, ids)
    project.set("dataset", series="data/raw/gone.h5", graph="data/raw/gone.pkl")

    code, out, _ = project.run(capsys)
    assert code == 0
    assert "30 nodes, 1 channel (speed)" in out
    assert "series data/processed/metr-la-week/series.parquet" in out
    assert "graph data/processed/metr-la-week/adjacency.npz" in out
    assert sorted(rows(out)) == registered_baselines()


def test_a_stale_adjacency_is_refused_with_one_clear_line(project, week, capsys):
    """An adjacency.npz whose nodes are not the series' (the adjacency stage was not re-run after
    the series changed) stops the command with exit code 2, naming the file."""
    adj, ids = week_subset(project, week, nodes=20)
    write_adjacency(project.processed / "adjacency.npz", adj[1:, 1:], ids[1:])
    code, out, err = project.run(capsys)
    assert code == 2 and out == ""
    assert "adjacency.npz" in err and "re-run the adjacency stage" in err


def test_a_missing_graph_file_is_bad_input(project, capsys):
    """No adjacency stage output and no raw graph file: exit code 2 and the path on stderr."""
    project.set("dataset", graph=str(project.root / "missing.pkl"))
    code, _, err = project.run(capsys)
    assert code == 2 and "missing.pkl" in err


def test_multi_channel_data_widens_plain_and_calendar(project, capsys):
    """The NYC bike grid (128 cells, inflow and outflow, a dense .npz graph): plain reads 2
    channels, calendar 2 + 4, gptst the hidden size; every baseline forecasts both channels, so
    T-GCN's head is h -> 12 x 2."""
    project.set(
        "dataset",
        name="nycbike-grid",
        kind="demand",
        series=str(TEST_DATA / "nycbike-grid" / "nycbike-grid.npz"),
        graph=str(TEST_DATA / "nycbike-grid" / "adj_mx.npz"),
        channel_names=["inflow", "outflow"],
        null_value=None,
    )
    code, out, _ = project.run(capsys)
    assert code == 0
    params = load_params(project.params_file)
    hidden, h = params.pretrain.model.hidden, baseline_config(params, "tgcn").hidden
    assert "128 nodes, 2 channels (inflow, outflow)" in out
    assert "plain (in 2)" in out and "calendar (in 6)" in out and f"gptst (in {hidden})" in out
    table = rows(out)
    assert sorted(table) == registered_baselines()
    assert table["tgcn"] == tuple(3 * h * (width + h) + 3 * h + 24 * (h + 1) for width in (2, 6, hidden))


def test_a_baseline_that_refuses_the_window_length_says_so_and_the_others_are_counted(project, capsys):
    """24 input steps exceed Graph WaveNet's receptive field (13 steps): its row says why it cannot
    be built; the other baselines are still listed with their counts."""
    project.set("windows", t_in=24)
    code, out, _ = project.run(capsys)
    assert code == 0
    assert re.search(r"^gwn\s+not buildable at these sizes: .*13 input steps", out, re.MULTILINE)
    assert sorted(rows(out)) == [name for name in registered_baselines() if name != "gwn"]
