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
