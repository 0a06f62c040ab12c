"""Paired bootstrap over test windows: is gptst's MAE really lower than plain's?

Both variants forecast the same test windows, so windows are resampled once per draw and both
variants are scored on that resample (paired): the window-to-window variation that both share
cancels. Each resample's MAE is pooled (sum of absolute errors over sum of valid cells), like
the reported MAE, so windows with more missing readings weigh less.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from gptst.evaluation.comparison import markdown_table

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
# Resamples drawn per block: [block, W] int64 indices, 14 MB at 6850 windows.
_BLOCK = 256


@dataclass(frozen=True)
class WindowErrors:
    """One variant's masked absolute errors summed per test window."""

    starts: np.ndarray  # int64 [W], window start indices into the series
    abs_sum: np.ndarray  # float64 [W], sum of |pred - true| over the window's valid cells
    count: np.ndarray  # int64 [W], number of valid cells

    @property
    def mae(self) -> float:
        """Pooled MAE over all windows."""
        total = int(self.count.sum())
        return float(self.abs_sum.sum() / total) if total else float("nan")


@dataclass(frozen=True)
class BootstrapResult:
    """Candidate minus reference MAE (absolute and in percent of the reference), with intervals."""

    mae_reference: float
    mae_candidate: float
    diff: float  # candidate - reference; negative: the candidate is better
    diff_low: float
    diff_high: float
    rel_diff: float  # percent of the reference MAE
    rel_diff_low: float
    rel_diff_high: float
    share_better: float  # share of resamples where the candidate's MAE is lower
    confidence: float
    n_windows: int
    n_resamples: int
    seed: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired_bootstrap(
    candidate: WindowErrors,
    reference: WindowErrors,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> BootstrapResult:
    """Bootstrap the MAE difference ``candidate - reference`` over windows resampled with replacement.

    The point estimate is the difference on the full test set; the interval is the percentile
    interval of the resampled differences. Raises ValueError when the two do not cover the same
    windows in the same order.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if len(candidate.starts) != len(reference.starts) or not np.array_equal(candidate.starts, reference.starts):
        raise ValueError(
            f"the variants were scored on different test windows ({len(candidate.starts)} vs "
            f"{len(reference.starts)} windows, or other start indices): a paired comparison needs the same windows"
        )
    n_windows = len(reference.starts)
    if n_windows == 0 or reference.count.sum() == 0 or candidate.count.sum() == 0:
        raise ValueError("no valid test cell: nothing to compare")

    rng = np.random.default_rng(seed)
    mae_ref = np.empty(n_resamples)
    mae_cand = np.empty(n_resamples)
    for lo in range(0, n_resamples, _BLOCK):
        idx = rng.integers(0, n_windows, size=(min(_BLOCK, n_resamples - lo), n_windows))
        hi = lo + len(idx)
        # A resample whose windows are all missing has no MAE: NaN, left out of the quantiles.
        with np.errstate(invalid="ignore", divide="ignore"):
            mae_ref[lo:hi] = reference.abs_sum[idx].sum(axis=1) / reference.count[idx].sum(axis=1)
            mae_cand[lo:hi] = candidate.abs_sum[idx].sum(axis=1) / candidate.count[idx].sum(axis=1)
    diffs = mae_cand - mae_ref
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = 100.0 * diffs / mae_ref
    tail = (1.0 - confidence) / 2.0
    low, high = np.nanquantile(diffs, [tail, 1.0 - tail])
    rel_low, rel_high = np.nanquantile(rel, [tail, 1.0 - tail])
    point_ref, point_cand = reference.mae, candidate.mae
    return BootstrapResult(
        mae_reference=point_ref,
        mae_candidate=point_cand,
        diff=point_cand - point_ref,
        diff_low=float(low),
        diff_high=float(high),
        rel_diff=100.0 * (point_cand - point_ref) / point_ref if point_ref else float("nan"),
        rel_diff_low=float(rel_low),
        rel_diff_high=float(rel_high),
        share_better=float(np.mean(diffs[np.isfinite(diffs)] < 0)),
        confidence=confidence,
        n_windows=n_windows,
        n_resamples=n_resamples,
        seed=seed,
    )


def bootstrap_markdown(results: Mapping[str, BootstrapResult]) -> str:
    """A short markdown table of each baseline's paired bootstrap (gptst against plain)."""
    if not results:
        return ""
    first = next(iter(results.values()))
    heading = (
        f"### gptst vs plain: paired bootstrap over test windows ({first.n_resamples} resamples, "
        f"{100 * first.confidence:g}% percentile intervals; negative = gptst better)"
    )
    header = ["baseline", "MAE plain", "MAE gptst", "difference [interval]", "relative [interval]", "gptst better in"]
    rows = [
        [
            baseline,
            f"{r.mae_reference:.3f}",
            f"{r.mae_candidate:.3f}",
            f"{r.diff:+.3f} [{r.diff_low:+.3f}, {r.diff_high:+.3f}]",
            f"{r.rel_diff:+.2f}% [{r.rel_diff_low:+.2f}%, {r.rel_diff_high:+.2f}%]",
            f"{100 * r.share_better:.1f}% of resamples",
        ]
        for baseline, r in results.items()
    ]
    lines = [heading, "", *markdown_table(header, rows)]
    return "\n".join(lines) + "\n"
