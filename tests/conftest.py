"""Shared fixtures: paths to the real test files and the embedded dataset."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _threads_per_test_process() -> int | None:
    """Under pytest-xdist, each worker's equal share of the cores (at least one): two workers with
    two threads each on two cores spin-wait on each other (several-fold slowdowns measured)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return None
    return max(1, (os.cpu_count() or 1) // int(workers))


THREADS = _threads_per_test_process()
if THREADS is not None:
    # before torch is imported; the stage processes the end-to-end tests start inherit it
    os.environ["OMP_NUM_THREADS"] = str(THREADS)

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = REPO_ROOT / "tests" / "data"
WEEK_DIR = REPO_ROOT / "data" / "raw" / "metr-la-week"


def load_bench_script(name: str) -> ModuleType:
    """``bench/<name>.py`` as the module ``bench_<name>`` (the bench folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO_ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with end-to-end (``slow``) tests first, in collection order otherwise: under
    ``make test`` (pytest-xdist, one module per work unit, in this order) the long modules start
    at once on their own workers while the short ones fill the gaps."""
    slow_modules = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_modules)


@pytest.fixture(autouse=True, scope="session")
def _threads_of_this_worker():
    if THREADS is not None:
        import torch

        torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True, scope="session")
def _isolated_tracking(tmp_path_factory: pytest.TempPathFactory):
    """Tests never write into the project's own MLflow store."""
    store = tmp_path_factory.mktemp("mlflow")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlruns.db'}"
    yield store
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_uri():
    """MLflow keeps the URI of ``mlflow.set_tracking_uri`` in a module global that outlives the
    test's environment: restore it, so a later test's clients read its own MLFLOW_TRACKING_URI."""
    from mlflow.tracking._tracking_service import utils

    before, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    yield
    utils._tracking_uri = before
    if env is not None:
        os.environ["MLFLOW_TRACKING_URI"] = env


def _ingested(factory: pytest.TempPathFactory, source: Path, **dataset):
    """A real file taken through the ingest path (reader, canonical Parquet, load_series)."""
    from gptst.data.ingest import ingest
    from gptst.data.series import load_series
    from gptst.params import DatasetParams

    params = DatasetParams(name="fixture", series=str(source), graph="unused", **dataset)
    out = factory.mktemp("series")
    ingest(params, source, out / "series.parquet", out / "meta.json")
    return load_series(out / "series.parquet")


@pytest.fixture(scope="session")
def week(tmp_path_factory: pytest.TempPathFactory):
    """The embedded METR-LA week as SeriesData [2016, 207, 1] (speeds, null value 0)."""
    return _ingested(tmp_path_factory, WEEK_DIR / "metr-la-week.h5", kind="speed", null_value=0.0)


@pytest.fixture(scope="session")
def raw100(tmp_path_factory: pytest.TempPathFactory):
    """The first 100 raw METR-LA steps [100, 207, 1]: zeros are real missing readings."""
    return _ingested(tmp_path_factory, TEST_DATA / "metr-la-raw100" / "metr-la-raw100.h5", kind="speed", null_value=0.0)


@pytest.fixture(scope="session")
def bike(tmp_path_factory: pytest.TempPathFactory):
    """The NYC bike grid [1369, 128, 2] (inflow, outflow counts, hourly; real zeros)."""
    return _ingested(
        tmp_path_factory,
        TEST_DATA / "nycbike-grid" / "nycbike-grid.npz",
        kind="demand",
        null_value=None,
        channel_names=["inflow", "outflow"],
    )
