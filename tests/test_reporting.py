"""`gptst outputs` (the end of `make run`): what was produced, the comparison table, the promotion
decisions and the MLflow UI command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gptst.reporting import print_outputs

from .conftest import REPO_ROOT


def test_outputs_list_files_group_item_folders_and_end_with_the_comparison_and_the_ui(tmp_path: Path, capsys):
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO_ROOT / "presets", tmp_path / "presets")
    models, reports = tmp_path / "models" / "metr-la-week", tmp_path / "reports" / "metr-la-week"
    for baseline in ("gwn", "tgcn"):
        for variant in ("plain", "gptst"):
            (models / "finetune" / baseline / variant).mkdir(parents=True)
            (models / "finetune" / baseline / variant / "model.pt").write_bytes(b"x" * 1024)
    (models / "encoder.pt").write_bytes(b"e" * 10)
    reports.mkdir(parents=True)
    (reports / "comparison.md").write_text("| baseline | plain |\n|---|---|\n| gwn | 4.17 |\n")
    (reports / "promotion.json").write_text(
        json.dumps(
            {"decisions": [{"model_name": "gwn-metr-la-week", "summary": "promoted version 1: no champion yet"}]}
        )
    )

    assert print_outputs(tmp_path) == 0
    out = capsys.readouterr().out
    assert "models/metr-la-week/finetune/ (4 files)" in out and "4.0 KB" in out
    assert "models/metr-la-week/encoder.pt" in out
    assert "| gwn | 4.17 |" in out
    assert "gwn-metr-la-week: promoted version 1: no champion yet" in out
    assert out.rstrip().endswith("MLflow UI: make ui  (http://127.0.0.1:5000)")
