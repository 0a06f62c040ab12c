"""The GPU benchmark's needs: the model, the trainer, the baselines and the data readers import
without the pipeline's heavy dependencies (a GPU machine may have torch, numpy, pandas, pyarrow
and pyyaml only, plus carried pure-Python wheels), and bench/gpu.sh runs its CPU mode end to end
at tiny sizes, printing its one table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from .conftest import REPO_ROOT

PIPELINE_ONLY = ("mlflow", "dvc", "prefect", "great_expectations", "tables", "sqlalchemy", "matplotlib")


def test_model_trainer_baselines_and_readers_import_without_the_pipeline_dependencies():
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {PIPELINE_ONLY!r}:
                    raise ImportError(f"{{name}} is a pipeline-only dependency")
                return None

        sys.meta_path.insert(0, Refuse())
        import gptst.models.gptst.model, gptst.training.trainer, gptst.training.pretrain
        import gptst.training.finetune, gptst.data.series, gptst.graph.adjacency, gptst.params
        from gptst.models.baselines.registry import baseline_spec, registered_baselines
        for name in registered_baselines():
            baseline_spec(name)
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.slow
def test_gpu_sh_runs_its_cpu_mode_end_to_end_and_prints_one_table(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "bench/gpu.sh", "--tiny", "--baselines", "tgcn", "--amp-dtype", "bfloat16", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert {r["what"] for r in rows} >= {"pretrain step", "encoder inference", "finetune step", "epoch end to end"}
    assert {r["nodes"] for r in rows if r["what"] == "pretrain step"} == set(doc["node_counts"])
    assert len(doc["node_counts"]) == 2 and doc["node_counts"][0] == 207  # the week, and a tiled copy of it
    assert all(r["seconds"] > 0 for r in rows)
    assert doc["device"] == "cpu" and doc["mode"] == "tiny"
    assert doc["amp_dtype"] == "bfloat16"  # the step rows ran the GPU's mixed-precision path
    table = proc.stdout
    assert "pretrain step" in table and "finetune step" in table and "peak" in table
