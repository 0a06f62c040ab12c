"""Reading DCRNN ``adj_mx.pkl`` files without letting the pickle run code.

A pickle may name any importable callable (``os.system``, ``builtins.eval``) and call it while
loading. :class:`RestrictedUnpickler` resolves only the handful of globals a pickle of plain
containers and numpy arrays needs and refuses everything else before it is called.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from gptst.data.series import canonical_id
from gptst.errors import InputError

try:  # numpy >= 2 (and the forward-compat stubs of 1.26)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy < 1.26
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    # Protocols 0-2 store bytes as ``_codecs.encode(text, 'latin1')``; any other codec name is
    # not something a plain container pickle produces, so it is refused rather than run.
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r} is not allowed")
    return codecs.encode(text, "latin1", errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
    }
    # Real pickles name numpy's helpers under both layouts: ``numpy.core`` (numpy 1.x, e.g. the
    # published DCRNN files) and ``numpy._core`` (numpy 2.x); both resolve to the installed one.
    for package in ("numpy.core", "numpy._core"):
        table[(f"{package}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        table[(f"{package}.multiarray", "scalar")] = _multiarray.scalar
        # numpy's stubs omit this private helper; it exists at runtime (pickles of arrays name it).
        table[(f"{package}.numeric", "_frombuffer")] = _numeric._frombuffer  # type: ignore[attr-defined]
    return table


_ALLOWED = _allowed_globals()
# Python 2 pickles spell the builtins module differently.
_PY2_MODULES = {"__builtin__": "builtins", "exceptions": "builtins"}


class DisallowedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""

    def __init__(self, module: str, name: str) -> None:
        self.qualname = f"{module}.{name}"
        super().__init__(f"global {self.qualname} is not allowed")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array/scalar reconstruction and container builtins.

    ``find_class`` runs when the pickle *names* a global, before anything can call it, so
    raising there guarantees that a refused callable is never executed.
    """

    def find_class(self, module: str, name: str) -> Any:
        key = (_PY2_MODULES.get(module, module), name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        raise DisallowedGlobal(module, name)


def restricted_load(data: bytes, encoding: str = "latin1") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (raises ``pickle.UnpicklingError``)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


def read_dcrnn_pickle(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read a DCRNN pickle ``[sensor_ids, sensor_id_to_ind, adj_mx]`` safely.

    Returns the canonical node ids in matrix order and the matrix as float64. Any global
    outside the allow-list, any other structure, or an inconsistent id map raises
    :class:`InputError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "graph pickle not found")
    data = path.read_bytes()
    try:
        obj = restricted_load(data)
    except DisallowedGlobal as err:
        raise InputError(
            path,
            "pickle globals",
            f"refused to load: the pickle references {err.qualname}, which is not "
            "numpy array or container data (only numpy arrays, dtypes, scalars and containers are allowed)",
        ) from None
    except Exception as err:  # any failure inside pickle is "not a readable pickle"
        raise InputError(path, None, f"not a readable pickle ({type(err).__name__}: {err})") from None
    return _validate_structure(path, obj)


def _validate_structure(path: Path, obj: Any) -> tuple[list[str], np.ndarray]:
    expected = "a list [sensor_ids, sensor_id_to_ind, adj_mx] (the DCRNN adj_mx.pkl layout)"
    if not isinstance(obj, (list, tuple)) or len(obj) != 3:
        got = f"{type(obj).__name__} of length {len(obj)}" if isinstance(obj, (list, tuple)) else type(obj).__name__
        raise InputError(path, "pickle structure", f"expected {expected}, got a {got}")
    raw_ids, id_to_ind, matrix = obj
    if isinstance(raw_ids, np.ndarray):
        raw_ids = raw_ids.tolist()
    if not isinstance(raw_ids, (list, tuple)):
        raise InputError(path, "sensor_ids", f"expected a list of ids, got {type(raw_ids).__name__}")
    if not isinstance(id_to_ind, dict):
        raise InputError(path, "sensor_id_to_ind", f"expected a dict id -> index, got {type(id_to_ind).__name__}")
    if not isinstance(matrix, np.ndarray):
        raise InputError(path, "adj_mx", f"expected a numpy array, got {type(matrix).__name__}")
    ids = [canonical_id(x) for x in raw_ids]
    matrix = check_square_matrix(path, "adj_mx", matrix)
    n = len(ids)
    if matrix.shape[0] != n:
        raise InputError(
            path, "adj_mx", f"matrix is {matrix.shape[0]} x {matrix.shape[1]} but there are {n} sensor_ids"
        )
    check_unique_ids(path, "sensor_ids", ids)
    index = {canonical_id(k): v for k, v in id_to_ind.items()}
    wrong = [(i, s, index.get(s)) for i, s in enumerate(ids) if index.get(s) != i]
    if wrong or len(index) != n:
        detail = ", ".join(f"{s!r} -> {got} (position {i})" for i, s, got in wrong[:3])
        raise InputError(
            path,
            "sensor_id_to_ind",
            f"does not map each sensor id to its position in sensor_ids ({len(index)} entries for {n} ids"
            + (f"; e.g. {detail}" if detail else "")
            + ")",
        )
    return ids, matrix


def check_square_matrix(source: str | Path, field: str, matrix: Any) -> np.ndarray:
    """Return ``matrix`` as a finite float64 square 2-D array, or raise :class:`InputError`."""
    arr = np.asarray(matrix)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise InputError(source, field, f"adjacency must be a square 2-D matrix, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise InputError(source, field, f"adjacency must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise InputError(source, field, f"{int(bad.sum())} non-finite entries, first at [{r}, {c}] = {arr[r, c]}")
    return arr


def check_unique_ids(source: str | Path, field: str, ids: list[str]) -> None:
    seen: set[str] = set()
    dups = [x for x in ids if x in seen or seen.add(x)]  # type: ignore[func-returns-value]
    if dups:
        raise InputError(source, field, f"{len(dups)} duplicate ids, e.g. {sorted(set(dups))[:5]}")


__all__: list[str] = ["RestrictedUnpickler", "read_dcrnn_pickle", "restricted_load", "check_square_matrix"]
