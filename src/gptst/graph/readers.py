"""Graph file readers: dense matrices (.npy, .npz, .csv) and ``from,to,cost`` edge lists (.csv).

Rules for a ``.csv`` (one suffix, two layouts):

* Header: the first row is data when its first two fields both parse as numbers; otherwise it
  is a header and is skipped (so an edge list with non-numeric ids needs a header row).
* Layout: a headerless, all-numeric file with as many rows as columns is a dense matrix;
  anything else must have exactly three columns and is an edge list ``from, to, cost`` (by
  position, whatever the header calls them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gptst.data.series import canonical_id
from gptst.errors import InputError
from gptst.graph.dcrnn_pickle import check_square_matrix

EDGE_COLUMNS = ["from", "to", "cost"]
NPZ_DEFAULT_KEYS = ("adj", "adj_mx")
_INT_RE = re.compile(r"^[+-]?[0-9]+$")


@dataclass(frozen=True)
class EdgeList:
    """An edge list read from a file: ``frame`` has str columns ``from``/``to`` (canonical
    tokens) and float ``cost``; ``source`` is the file it came from."""

    frame: pd.DataFrame
    source: Path

    def endpoint_tokens(self) -> list[str]:
        """Distinct endpoint tokens in first-seen order."""
        both = pd.concat([self.frame["from"], self.frame["to"]], ignore_index=True)
        return list(dict.fromkeys(both.tolist()))


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(path, None, "graph file not found")


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def as_index(token: str, n: int) -> int | None:
    """``int(token)`` when ``token`` is a 0-based index in ``[0, n)``, else ``None``."""
    if token.isascii() and token.isdigit():
        value = int(token)
        return value if value < n else None
    return None


def canonical_token(token: str) -> str:
    """Canonical node id of a CSV cell: integral numbers ("400001", "7.0") become ``str(int)``,
    so they match ids read from other sources through :func:`canonical_id`."""
    token = token.strip()
    if _INT_RE.match(token):
        return str(int(token))
    if _is_number(token):
        return canonical_id(float(token))
    return token


def read_npy(path: str | Path) -> np.ndarray:
    """Read a dense square adjacency from ``.npy`` (no pickled objects)."""
    path = Path(path)
    _require_file(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(path, None, f"not a readable .npy array ({err})") from None
    return check_square_matrix(path, "array", arr)


def read_npz(path: str | Path, key: str | None = None) -> np.ndarray:
    """Read a dense square adjacency from ``.npz``.

    ``key`` names the array; when ``None`` the only array is used, else ``adj`` or ``adj_mx``.
    """
    path = Path(path)
    _require_file(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            if key is None:
                if len(keys) == 1:
                    key = keys[0]
                else:
                    key = next((k for k in NPZ_DEFAULT_KEYS if k in keys), None)
                    if key is None:
                        raise InputError(
                            path,
                            "graph.npz_key",
                            f"no key given and the archive has {len(keys)} arrays and none named "
                            f"{' or '.join(NPZ_DEFAULT_KEYS)}; available keys: {keys}",
                        )
            elif key not in keys:
                raise InputError(path, f"graph.npz_key={key!r}", f"key not in the archive; available keys: {keys}")
            arr = npz[key]
    except InputError:
        raise
    except (ValueError, OSError, EOFError) as err:
        raise InputError(path, None, f"not a readable .npz archive ({err})") from None
    return check_square_matrix(path, key, arr)


def read_csv_graph(path: str | Path) -> np.ndarray | EdgeList:
    """Read a ``.csv`` graph: a dense matrix (ndarray) or an edge list (:class:`EdgeList`)."""
    path = Path(path)
    _require_file(path)
    try:
        table = pd.read_csv(
            path, header=None, dtype=str, keep_default_na=False, skip_blank_lines=True, encoding="utf-8-sig"
        )
    except pd.errors.EmptyDataError:
        raise InputError(path, None, "file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(path, None, f"not a readable CSV ({str(err).strip()})") from None
    first = [str(x).strip() for x in table.iloc[0].tolist()]
    has_header = not all(_is_number(x) for x in first[:2])
    body = table.iloc[1:] if has_header else table
    # pandas reports lines 1-based; a header shifts data by one more.
    first_line = 2 if has_header else 1
    if not has_header and body.shape[0] == body.shape[1] and body.shape[1] != 0:
        return _dense_from_table(path, body)
    if body.shape[1] != 3:
        raise InputError(
            path,
            "columns",
            f"expected an edge list with 3 columns from,to,cost or a square numeric matrix without header; "
            f"got {body.shape[0]} data rows x {body.shape[1]} columns",
        )
    if body.shape[0] == 0:
        raise InputError(path, None, "edge list has a header but no rows")
    return _edges_from_table(path, body, first_line)


def _dense_from_table(path: Path, body: pd.DataFrame) -> np.ndarray:
    values = body.apply(lambda col: pd.to_numeric(col.str.strip(), errors="coerce"))
    bad = values.isna().to_numpy()
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise InputError(path, f"row {r + 1}, column {c + 1}", f"non-numeric cell {body.iat[r, c]!r} in a dense matrix")
    return check_square_matrix(path, "matrix", values.to_numpy(dtype=np.float64))


def _edges_from_table(path: Path, body: pd.DataFrame, first_line: int) -> EdgeList:
    body = body.reset_index(drop=True)
    body.columns = EDGE_COLUMNS
    for col in ("from", "to"):
        empty = body[col].str.strip() == ""
        if empty.any():
            line = int(np.flatnonzero(empty.to_numpy())[0]) + first_line
            raise InputError(path, f"line {line}, column {col}", "empty node id")
    cost = pd.to_numeric(body["cost"].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(cost)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            path,
            f"line {i + first_line}, column cost",
            f"cost {body['cost'].iat[i]!r} is not a finite number ({int(bad.sum())} such rows)",
        )
    frame = pd.DataFrame(
        {
            "from": [canonical_token(x) for x in body["from"]],
            "to": [canonical_token(x) for x in body["to"]],
            "cost": cost,
        }
    )
    return EdgeList(frame=frame, source=path)
