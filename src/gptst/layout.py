"""Names spelled once: the variants, registered-model names and the pipeline's folder layout.

Bottom of the library (imports nothing of it): stages, CLI, flows, tracking and tests all read
these, and ``dvc.yaml`` spells the same folders (a test checks it against :func:`stage_paths`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Variant = Literal["plain", "calendar", "gptst", "gptst_random"]
# plain: the signal only; calendar: + time-of-day/day-of-week features (the fairness control);
# gptst: + the frozen pre-trained encoder; gptst_random: + the same encoder untrained.
VARIANTS: tuple[Variant, ...] = ("plain", "calendar", "gptst", "gptst_random")
ENCODER_VARIANTS: tuple[Variant, ...] = ("gptst", "gptst_random")
PLAIN_VARIANTS: tuple[Variant, ...] = ("plain", "calendar")


def model_name(baseline: str, dataset: str) -> str:
    """Registered model of one baseline on one dataset (every variant is a version of it)."""
    return f"{baseline}-{dataset}"


def encoder_model_name(dataset: str) -> str:
    """Registered model of the pre-trained GPT-ST encoder of a dataset."""
    return f"gptst-encoder-{dataset}"


# The key of data/processed/<dataset>/finetune_params.yaml that lists the derived graphs the
# listed baselines need: the adjacency stage reads it, so it depends on that list, not on their code.
DERIVED_GRAPHS_KEY = "derived_graphs"


def processed_dir(root: Path, dataset: str) -> Path:
    """``data/processed/<dataset>``: the ingest and adjacency stages' outputs."""
    return root / "data" / "processed" / dataset


def models_dir(root: Path, dataset: str) -> Path:
    """``models/<dataset>``: encoder, encode cache, finetune bundles and resume state."""
    return root / "models" / dataset


def reports_dir(root: Path, dataset: str) -> Path:
    """``reports/<dataset>``: validation, metrics, comparison and figures."""
    return root / "reports" / dataset


def finetune_item_dirs(root: Path, dataset: str, baseline: str, variant: str) -> dict[str, Path]:
    """The folders of one finetune item: ``out`` (model.pt, predictions.npz), ``state``, ``reports``."""
    return {
        "out": models_dir(root, dataset) / "finetune" / baseline / variant,
        "state": models_dir(root, dataset) / "finetune_state" / baseline / variant,
        "reports": reports_dir(root, dataset) / "finetune" / baseline / variant,
    }
