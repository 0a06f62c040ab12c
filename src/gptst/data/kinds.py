"""Kinds of data (``dataset.kind``): every rule that depends on the kind, in one table.

Bottom of the library (imports nothing of it): params, validation and the metrics' settings read
these rules instead of comparing kind names. A new kind is one more :class:`DataKind` in
:data:`KINDS`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataKind:
    """What the kind of a series means for reading, validating and scoring it."""

    name: str
    description: str
    # physical bounds of valid readings (validation); None: unbounded on that side
    min_value: float | None
    max_value: float | None
    # the usual missing-value marker of such data (``dataset.null_value`` states it per dataset)
    usual_null_value: float | None
    missing_note: str
    # MAPE counts only |y| > this (``metrics.mape_min`` when null)
    mape_min: float
    # chronological (train, val, test) ratios of the literature (``dataset.split`` when absent)
    default_split: tuple[float, float, float]
    # validation: nodes that are zero at every step are reported (an expectation of their own),
    # blocking only if ``validation.block_on_zero_nodes``; else the summary says why not (the note)
    checks_zero_nodes: bool
    zero_nodes_note: str


KINDS: dict[str, DataKind] = {
    kind.name: kind
    for kind in (
        DataKind(
            name="speed",
            description="traffic speeds (METR-LA, PEMS-BAY)",
            min_value=0.0,
            max_value=120.0,
            usual_null_value=0.0,
            missing_note="a zero speed is a missing reading (null_value 0.0)",
            mape_min=0.0,
            default_split=(0.7, 0.1, 0.2),
            checks_zero_nodes=False,
            zero_nodes_note="Not checked (only demand data is; zero speeds are missing readings).",
        ),
        DataKind(
            name="demand",
            description="flows and demand counts (PEMS0x flow, NYC bike/taxi)",
            min_value=0.0,
            max_value=None,
            usual_null_value=None,
            missing_note="zero is a real count; readings are missing only where null_value says so",
            mape_min=0.001,
            default_split=(0.6, 0.2, 0.2),
            checks_zero_nodes=True,
            zero_nodes_note="Checked: demand grids have cells nobody uses, worth knowing about, not fatal by default.",
        ),
    )
}
KIND_NAMES: tuple[str, ...] = tuple(KINDS)


def data_kind(name: str) -> DataKind:
    """The rules of kind ``name``; ValueError naming the known kinds otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown kind of data {name!r}; known: {list(KINDS)}") from None
