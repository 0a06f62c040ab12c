"""Shared fixtures: paths to the real test files and the embedded dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = REPO_ROOT / "tests" / "data"
WEEK_DIR = REPO_ROOT / "data" / "raw" / "metr-la-week"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def test_data() -> Path:
    return TEST_DATA


@pytest.fixture(scope="session")
def week_h5() -> Path:
    return WEEK_DIR / "metr-la-week.h5"


@pytest.fixture(scope="session")
def week_pkl() -> Path:
    return WEEK_DIR / "adj_mx.pkl"


@pytest.fixture(autouse=True, scope="session")
def _isolated_tracking(tmp_path_factory: pytest.TempPathFactory):
    """Tests never write into the project's own MLflow store."""
    import os

    store = tmp_path_factory.mktemp("mlflow")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlruns.db'}"
    yield store
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old
