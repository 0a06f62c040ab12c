"""`gptst outputs` (the end of `make run`): what was produced, the comparison table, the promotion
decisions and the MLflow UI command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gptst.reporting import plot_curves, print_outputs, write_curves

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


def test_the_curves_file_is_what_pandas_writes_for_the_history(tmp_path: Path):
    import pandas as pd

    history = [
        {"epoch": 1, "train_loss": 0.123456789012, "val_metric": 7.33, "seconds": 1.2, "lr": 0.003},
        {"epoch": 2, "train_loss": 1e-05, "val_metric": float("nan"), "seconds": 1.1, "lr": 0.0009},
        {"epoch": 3, "train_loss": 2.5, "val_metric": 6.0, "seconds": 0.9, "lr": 0.0009, "train_kl": 0.5},
    ]
    rows = write_curves(history, tmp_path / "curves.csv")

    expected = pd.DataFrame(history).drop(columns="seconds").rename(columns={"val_metric": "val_mae"})
    expected["epoch"] = expected["epoch"].astype(int)
    expected.to_csv(tmp_path / "pandas.csv", index=False)
    assert (tmp_path / "curves.csv").read_text() == (tmp_path / "pandas.csv").read_text()
    assert [row["epoch"] for row in rows] == [1, 2, 3] and "seconds" not in rows[0]
    assert plot_curves(rows, tmp_path / "curves.png").stat().st_size > 0
