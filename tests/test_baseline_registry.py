"""The baseline registry: each module owns its config, modules are imported lazily by name, and a
baseline registered at run time (defined here, no other file edited) goes through params
validation, the finetune_params stage and the finetune stage to a bundle and its metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
import yaml
from pydantic import Field
from torch import nn

import stages.finetune as finetune_stage
import stages.finetune_params as finetune_params_stage
from gptst.data.series import write_series
from gptst.errors import InputError
from gptst.graph.bundle import GraphBundle, write_adjacency
from gptst.graph.normalize import normalized_adjacency
from gptst.metrics import masked_mae
from gptst.models.baselines.registry import (
    BaselineConfig,
    baseline_modules,
    baseline_spec,
    build_baseline,
    register_baseline,
    registered_baselines,
    unregister_baseline,
)
from gptst.models.forecaster_bundle import load_forecaster
from gptst.params import load_params
from gptst.training.baseline_config import baseline_config, validate_baselines
from gptst.training.finetune import downstream_loss

from .baseline_checks import week_graph
from .conftest import REPO_ROOT

NODES = 12


class ToyConfig(BaselineConfig):
    """A toy baseline's config: its own size, and Huber as its registered default loss."""

    loss: Literal["mae", "huber"] = "huber"
    hidden: int = Field(8, ge=1)


class Toy(nn.Module):
    """One graph propagation of the window, flattened over time, then a per-node MLP to every step."""

    def __init__(self, *, num_nodes, in_dim, out_dim, in_steps, out_steps, graph: GraphBundle, params: ToyConfig):
        super().__init__()
        self.out_steps, self.out_dim = out_steps, out_dim
        adj = torch.from_numpy(normalized_adjacency(graph.adj, self_loops=True))
        self.register_buffer("adj", adj, persistent=False)
        self.net = nn.Sequential(
            nn.Linear(in_steps * in_dim, params.hidden),
            nn.ReLU(),
            nn.Dropout(params.dropout),
            nn.Linear(params.hidden, out_steps * out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, nodes, channels = x.shape
        h = torch.einsum("nm,btmc->bntc", self.adj, x).reshape(batch, nodes, steps * channels)
        return self.net(h).reshape(batch, nodes, self.out_steps, self.out_dim).transpose(1, 2)


@pytest.fixture
def toy():
    register_baseline("toy", ToyConfig)(Toy)
    yield "toy"
    unregister_baseline("toy")


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    return proc.stdout


# --------------------------------------------------------------------------------- the registry
def finetune_args(project, baseline: str, out, reports) -> list[str]:
    """The finetune stage's command line for the plain variant of ``baseline`` in ``project``."""
    return [
        "--params", str(project / "params.yaml"), "--baseline", baseline, "--variant", "plain",
        "--series", str(project / "series.parquet"), "--adjacency", str(project / "adjacency.npz"),
        "--out", str(out), "--state", str(project / "state"), "--reports", str(reports),
    ]  # fmt: skip


def test_the_registry_imports_one_baseline_module_only_when_asked_for_it():
    """Importing the package or its registry imports no baseline; asking for gwn imports gwn alone,
    so a finetune item's code is its own baseline's; params imports no model at all."""
    out = _run(
        "import sys\n"
        "import gptst.params, gptst.models.baselines.registry as r\n"
        "mods = lambda: sorted(m for m in sys.modules\n"
        "                      if m.startswith('gptst.models.baselines.') and not m.endswith('registry'))\n"
        "print(mods())\n"
        "assert 'gwn' in r.registered_baselines()\n"
        "print(mods())\n"
        "r.baseline_spec('gwn')\n"
        "print(mods())\n"
    )
    assert out.splitlines() == ["[]", "[]", "['gptst.models.baselines.gwn']"]
    out = _run(
        "import sys, gptst.params\n"
        "print(sorted(m for m in sys.modules if m.startswith('gptst.models') or m == 'torch'))"
    )
    assert out.strip() == "[]"


def test_registered_baselines_are_the_package_modules_and_run_time_registrations(toy):
    assert {"gwn", "stgcn", "mtgnn", "astgcn", "tgcn"} <= set(baseline_modules())
    assert "registry" not in baseline_modules() and "toy" not in baseline_modules()
    assert registered_baselines() == sorted([*baseline_modules(), "toy"])
    spec = baseline_spec("toy")
    assert (spec.cls, spec.config_cls, spec.graphs) == (Toy, ToyConfig, ())
    assert spec.config().loss == "huber" and spec.config({"hidden": 3}).hidden == 3


def test_an_unknown_baseline_and_a_clashing_registration_are_refused(toy):
    with pytest.raises(KeyError, match=r"unknown baseline 'nope'; registered: \["):
        baseline_spec("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register_baseline("toy", ToyConfig)(type("Other", (Toy,), {}))
    with pytest.raises(ValueError, match="lower-case letters"):
        register_baseline("my-toy", ToyConfig)
    with pytest.raises(TypeError, match="subclass of BaselineConfig"):
        register_baseline("toy2", dict)


def test_a_baseline_needing_an_extra_graph_says_which(week, toy):
    register_baseline("toy_dtw", ToyConfig, graphs=("dtw",))(Toy)
    try:
        graph = week_graph(week, nodes=NODES)
        with pytest.raises(ValueError, match=r"baseline 'toy_dtw' needs the graphs \['dtw'\] in adjacency.npz"):
            build_baseline("toy_dtw", num_nodes=NODES, in_dim=1, out_dim=1, in_steps=12, out_steps=12, graph=graph)
        graph = replace(graph, extras={"dtw": graph.adj})
        model = build_baseline(
            "toy_dtw",
            num_nodes=NODES,
            in_dim=1,
            out_dim=1,
            in_steps=12,
            out_steps=12,
            graph=graph,
            params={"hidden": 4},
        )
        assert model(torch.zeros(2, 12, NODES, 1)).shape == (2, 12, NODES, 1)
    finally:
        unregister_baseline("toy_dtw")


# ------------------------------------------------------- a toy baseline through the finetune stage
@pytest.fixture
def project(tmp_path: Path, week, toy):
    """The project's params.yaml (tiny preset) listing only the toy, its series and graph files."""
    shutil.copytree(REPO_ROOT / "presets", tmp_path / "presets")
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["preset"] = "tiny"
    raw["finetune"]["baselines"] = [toy]
    raw["baselines"] = {toy: {"hidden": 6}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    series = replace(week, values=np.ascontiguousarray(week.values[:, :NODES]), node_ids=week.node_ids[:NODES])
    write_series(tmp_path / "series.parquet", series)
    graph = week_graph(week, nodes=NODES)
    write_adjacency(tmp_path / "adjacency.npz", graph.adj, graph.node_ids)
    return tmp_path


def test_a_run_time_baseline_is_validated_against_its_own_config(project, toy):
    params = load_params(project / "params.yaml")
    assert baseline_config(params, toy) == ToyConfig(hidden=6)
    # trained with its registered default loss (Huber), unless params say otherwise
    assert downstream_loss(params, toy) is not masked_mae
    mae = load_params(project / "params.yaml", overrides={"baselines.toy.loss": "mae"})
    assert downstream_loss(mae, toy) is masked_mae
    bad = load_params(project / "params.yaml", overrides={"baselines.toy.hidden": 0})
    with pytest.raises(InputError, match=r"baselines\.toy\.hidden: Input should be greater than or equal to 1"):
        validate_baselines(bad)
    with pytest.raises(InputError, match=r"baselines\.toy\.depth: unknown key \(not a field of ToyConfig\)"):
        validate_baselines(load_params(project / "params.yaml", overrides={"baselines.toy.depth": 2}))


def test_a_run_time_baseline_trains_through_the_finetune_stage(project, toy, capsys):
    """No file but this test names the toy: the finetune_params stage resolves it (defaults, the
    params.yaml section), and the finetune stage trains it into a self-contained bundle, the
    contract's metrics JSON and curves, trained with its own default loss."""
    resolved_file = project / "finetune_params.yaml"
    assert finetune_params_stage.main(["--params", str(project / "params.yaml"), "--out", str(resolved_file)]) == 0
    resolved = yaml.safe_load(resolved_file.read_text())
    assert resolved["baselines"] == {toy: {"loss": "huber", "huber_delta": 1.0, "dropout": 0.0, "hidden": 6}}
    assert resolved["finetune"]["common"]["epochs"] == 1  # the tiny preset's

    out, reports = project / "out", project / "reports"
    code = finetune_stage.main(finetune_args(project, toy, out, reports))
    assert code == 0, capsys.readouterr().err
    assert f"finetune {toy}/plain: best epoch" in capsys.readouterr().out

    bundle = load_forecaster(out / "model.pt")
    assert (bundle.baseline, bundle.variant, bundle.node_ids) == (toy, "plain", project_nodes(project))
    assert isinstance(bundle.forecaster.baseline, Toy)
    assert bundle.forecaster.baseline.net[0].out_features == 6
    metrics = json.loads((reports / "metrics.json").read_text())
    assert (metrics["baseline"], metrics["variant"], metrics["split"]) == (toy, "plain", "test")
    assert list(metrics["horizons"]) == [str(k) for k in range(1, 13)] + ["avg"]
    assert all(np.isfinite(row["mae"]) for row in metrics["horizons"].values())
    assert json.loads((reports / "val_metrics.json").read_text())["split"] == "val"
    assert (out / "predictions.npz").is_file() and (reports / "curves.csv").is_file()


def test_the_finetune_stage_refuses_a_bad_baseline_section_with_exit_code_2(project, toy, capsys):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["baselines"][toy]["hiden"] = 6
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    code = finetune_stage.main(finetune_args(project, toy, project / "out", project / "reports"))
    assert code == 2 and "baselines.toy.hiden: unknown key" in capsys.readouterr().err
    assert finetune_params_stage.main(["--params", str(project / "params.yaml"), "--out", str(project / "f.yaml")]) == 2
    assert not (project / "f.yaml").exists()


def project_nodes(project: Path) -> list[str]:
    from gptst.data.series import read_series_metadata

    return list(read_series_metadata(project / "series.parquet")["node_ids"])


def test_a_finetune_item_never_imports_pandas_or_parses_its_own_imports_twice(tmp_path: Path, week):
    """A finetune item's process pays for what it uses: pandas (0.4 s of imports) is for the
    evaluation and serving code, not for training (its series, calendar, curves and model log)."""
    shutil.copytree(REPO_ROOT / "presets", tmp_path / "presets")
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["preset"] = "tiny"
    raw["finetune"]["baselines"] = ["tgcn"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    series = replace(week, values=np.ascontiguousarray(week.values[:, :NODES]), node_ids=week.node_ids[:NODES])
    write_series(tmp_path / "series.parquet", series)
    graph = week_graph(week, nodes=NODES)
    write_adjacency(tmp_path / "adjacency.npz", graph.adj, graph.node_ids)
    args = finetune_args(tmp_path, "tgcn", tmp_path / "out", tmp_path / "reports")
    out = _run(
        "import sys\n"
        "from stages.finetune import main\n"
        f"assert main({args!r}) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'matplotlib')))\n"
    )
    assert out.splitlines()[-1] == "[]"
    assert (tmp_path / "reports" / "curves.csv").read_text().startswith("epoch,")
