"""What the pipeline has produced for the current dataset, for `make run` to print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptst.params import load_params

OUTPUT_FOLDERS = ("data/processed", "models", "reports")
GROUP_ABOVE = 8  # files in one first-level folder listed one by one


def _size(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return ""


def print_outputs(root: Path) -> int:
    """List the current dataset's outputs with their sizes (a folder of many files as one line),
    the validation verdict, the comparison table, the promotion decisions and the UI command."""
    params = load_params(root / "params.yaml")
    name = params.dataset.name
    print(f"\nOutputs for dataset '{name}' (preset '{params.preset}'):")
    found = 0
    for folder in OUTPUT_FOLDERS:
        base = root / folder / name
        files = sorted(p for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))
        count: dict[str, int] = {}
        nested: set[str] = set()
        for path in files:
            rel = path.relative_to(base)
            count[rel.parts[0]] = count.get(rel.parts[0], 0) + 1
            if len(rel.parts) > 2:
                nested.add(rel.parts[0])
        grouped: dict[Path, list[Path]] = {}
        for path in files:
            top = path.relative_to(base).parts[0]
            # a folder of many or nested files (the finetune items, the encoder cache) is one line
            key = base / top if top in nested or count[top] > GROUP_ABOVE else path
            grouped.setdefault(key, []).append(path)
        for key, members in grouped.items():
            size = _size(sum(p.stat().st_size for p in members))
            label = f"{key.relative_to(root)}/ ({len(members)} files)" if key.is_dir() else str(key.relative_to(root))
            print(f"  {label:<60} {size:>10}")
            found += len(members)
    if not found:
        print("  nothing yet: run `dvc repro` (or `make run`)")
    reports = root / "reports" / name
    metrics = reports / "validation" / "metrics.json"
    if metrics.is_file():
        counts = json.loads(metrics.read_text())
        verdict = "passed" if counts.get("blocking_failed", 1) == 0 else "FAILED"
        print(
            f"\nValidation {verdict}: {counts.get('successful')}/{counts.get('evaluated')} expectations met; "
            f"report: reports/{name}/validation/summary.md"
        )
    comparison = reports / "comparison.md"
    if comparison.is_file():
        print(f"\nTest-split comparison ({comparison.relative_to(root)}; long form: comparison.csv):\n")
        print(comparison.read_text().rstrip())
    promotion = reports / "promotion.json"
    if promotion.is_file():
        print("\nPromotion (champion alias on <baseline>-<dataset>, validation windows):")
        for decision in json.loads(promotion.read_text()).get("decisions", []):
            print(f"  {decision['model_name']}: {decision['summary']}")
    print("MLflow UI: make ui  (http://127.0.0.1:5000)")
    return 0


def write_curves(history: list[dict[str, float]], path: Path) -> list[dict[str, float]]:
    """The trainer's per-epoch history as ``curves.csv`` (DVC plots); returns the rows written.

    Without wall-clock seconds the file is deterministic (timings go to MLflow); the selection
    metric is named ``val_mae``. Written with :mod:`csv` (pandas would cost a finetune item 0.4 s
    of imports): floats as ``repr``, a missing or NaN value as an empty cell.
    """
    import csv

    from gptst.io import atomic_path

    rows = [{("val_mae" if k == "val_metric" else k): v for k, v in h.items() if k != "seconds"} for h in history]
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(column: str, value: Any) -> str:
        if value is None or (number := float(value)) != number:
            return ""
        return str(int(number)) if column == "epoch" else repr(number)

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([cell(c, row.get(c)) for c in columns] for row in rows)
    return rows


def plot_curves(curves: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """Render per-epoch training curves (every ``train_*`` loss column and ``val_*``) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gptst.io import atomic_path

    columns = list(dict.fromkeys(k for row in curves for k in row))
    losses = [c for c in columns if c.startswith("val_") or c in ("train_loss", "train_reconstruction")]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for column in losses:
        ax.plot(
            [row["epoch"] for row in curves],
            [float("nan") if row.get(column) is None else row[column] for row in curves],
            marker="o",
            label=column,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("MAE (raw units)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
