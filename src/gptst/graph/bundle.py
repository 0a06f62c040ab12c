"""The ``adjacency.npz`` contract: ``adj`` float32 [N, N], ``node_ids`` unicode [N], extras.

Node ids are stored as a numpy unicode array (not objects), so the file loads with
``allow_pickle=False``; further graphs may be added later as extra keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gptst.data.series import canonical_ids
from gptst.errors import InputError
from gptst.io import write_npz

ADJ_KEY = "adj"
NODE_IDS_KEY = "node_ids"
_CHECKSUM_TAG = b"gptst-adjacency-v1\n"


@dataclass(frozen=True)
class GraphBundle:
    """An adjacency with its node ids (series order) and any extra arrays of the file."""

    adj: np.ndarray
    node_ids: list[str]
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        return len(self.node_ids)

    def checksum(self) -> str:
        """:func:`graph_checksum` of ``adj`` and ``node_ids``."""
        return graph_checksum(self.adj, self.node_ids)

    def restricted(self, extras: Sequence[str]) -> GraphBundle:
        """The road graph with only the extra arrays ``extras`` (what one model reads)."""
        return GraphBundle(adj=self.adj, node_ids=self.node_ids, extras={k: self.extras[k] for k in extras})

    def digest(self, extras: Sequence[str] = ()) -> str:
        """sha256 of :meth:`checksum` and the extra arrays ``extras`` (name, shape, dtype, bytes):
        what a model reading those graphs depends on, and nothing else of the file."""
        digest = hashlib.sha256(self.checksum().encode())
        for key in sorted(extras):
            arr = np.ascontiguousarray(self.extras[key])
            digest.update(f"\0{key}|{arr.shape}|{arr.dtype.str}\0".encode())
            digest.update(arr.tobytes())
        return digest.hexdigest()


def _checked(adj: Any, node_ids: Any) -> tuple[np.ndarray, list[str]]:
    arr = np.asarray(adj)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"adj must be a square 2-D matrix, got shape {arr.shape}")
    ids = canonical_ids(node_ids)
    if len(ids) != arr.shape[0]:
        raise ValueError(f"{len(ids)} node ids for a {arr.shape[0]} x {arr.shape[0]} adjacency")
    return np.ascontiguousarray(arr, dtype=np.float32), ids


def graph_checksum(adj: np.ndarray, node_ids: list[str]) -> str:
    """sha256 hex of the canonical bytes: tag, N, ids (one per line), then ``adj`` as C-order
    little-endian float32 with -0.0 folded into 0.0. Equal graphs give equal checksums
    whatever dtype or memory layout they were passed in."""
    arr, ids = _checked(adj, node_ids)
    digest = hashlib.sha256(_CHECKSUM_TAG)
    digest.update(f"{len(ids)}\n".encode())
    digest.update("".join(f"{i}\n" for i in ids).encode("utf-8"))
    # Adding 0.0 maps -0.0 to +0.0, which compare equal but differ in bytes.
    digest.update(np.ascontiguousarray(arr + np.float32(0.0), dtype="<f4").tobytes())
    return digest.hexdigest()


def write_adjacency(path: str | Path, adj: np.ndarray, node_ids: list[str], **extra: np.ndarray) -> Path:
    """Write ``adjacency.npz`` atomically: ``adj`` float32, ``node_ids`` unicode, plus ``extra``."""
    arr, ids = _checked(adj, node_ids)
    clash = {ADJ_KEY, NODE_IDS_KEY} & set(extra)
    if clash:
        raise ValueError(f"extra arrays may not be named {sorted(clash)}")
    arrays: dict[str, np.ndarray] = {}
    for key, value in extra.items():
        value = np.asarray(value)
        if value.dtype.kind == "O":
            raise ValueError(f"extra array {key!r} has dtype object; it would need pickle to load")
        arrays[key] = value
    return write_npz(path, **{ADJ_KEY: arr, NODE_IDS_KEY: np.asarray(ids, dtype=np.str_)}, **arrays)


def load_adjacency(path: str | Path) -> GraphBundle:
    """Load ``adjacency.npz`` (``allow_pickle=False``) into a :class:`GraphBundle`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "adjacency file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError) as err:
        raise InputError(path, None, f"not a readable .npz without pickled objects ({err})") from None
    for key in (ADJ_KEY, NODE_IDS_KEY):
        if key not in arrays:
            raise InputError(path, key, f"missing key; available keys: {sorted(arrays)}")
    adj = arrays.pop(ADJ_KEY)
    raw_ids = arrays.pop(NODE_IDS_KEY)
    if raw_ids.ndim != 1 or raw_ids.dtype.kind != "U":
        raise InputError(path, NODE_IDS_KEY, f"expected a 1-D unicode array, got {raw_ids.dtype} shape {raw_ids.shape}")
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1] or adj.shape[0] != raw_ids.shape[0]:
        raise InputError(path, ADJ_KEY, f"expected [{raw_ids.shape[0]}, {raw_ids.shape[0]}], got {adj.shape}")
    return GraphBundle(adj=adj.astype(np.float32, copy=False), node_ids=raw_ids.tolist(), extras=arrays)
