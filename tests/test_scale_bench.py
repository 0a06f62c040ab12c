"""bench/scale.py's growth fits: the exponent of a power law through the measured points and the
largest N whose fitted peak memory fits a budget."""

from __future__ import annotations

import sys

import pytest

from .conftest import REPO_ROOT, load_bench_script


@pytest.fixture(scope="module")
def scale():
    sys.path.insert(0, str(REPO_ROOT / "bench"))  # scale.py imports its sibling speed_common
    try:
        yield load_bench_script("scale")
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))


def test_the_fitted_exponent_of_a_power_law_is_its_exponent(scale):
    assert scale.fit_exponent([(n, 3e-4 * n**1.0) for n in (207, 716, 2352, 8600)]) == pytest.approx(1.0)
    assert scale.fit_exponent([(n, 2.0 * n**2) for n in (207, 716)]) == pytest.approx(2.0)
    assert scale.fit_exponent([(207, 1.0)]) is None


def test_the_largest_n_in_a_budget_follows_the_fitted_growth(scale):
    linear = [(716, 1024.0), (2352, 1024.0 * 2352 / 716)]  # 1 GB at N=716, linear
    assert scale.largest_nodes(linear, 24 * 1024) == pytest.approx(24 * 716, abs=1)
    quadratic = [(1000, 100.0), (2000, 400.0)]
    assert scale.largest_nodes(quadratic, 10_000.0) == pytest.approx(10_000, abs=1)
    assert scale.largest_nodes([(716, 10.0), (2352, 10.0)], 1e6) is None  # no growth: no limit from memory
