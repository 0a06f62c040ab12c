"""Self-contained model files: one ``torch.save`` of plain containers and CPU tensors.

Shared by the encoder bundle and the forecaster bundle. A bundle loads with
``torch.load(weights_only=True)`` on any machine, CUDA or not, and its bytes are a function of
its contents alone (registration is keyed by the file's md5). Two things would otherwise leak
into the bytes: ``torch.save`` to a *path* names the zip's top folder after the file (and the
atomic temp name is random), so we save through a file handle; and pickle shares equal strings
only when they are the same object, so the non-tensor part is rebuilt from its JSON text (keys
sorted), making the bytes independent of object identity and dict order.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptst.errors import InputError
from gptst.io import atomic_path


def write_bundle(
    path: str | Path,
    fmt: str,
    state_dict: Mapping[str, torch.Tensor],
    plain: dict[str, Any],
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``{"format": fmt, "state_dict": ..., **plain}`` (plus ``"tensors"``: named arrays
    that are not weights, such as a graph) to ``path`` atomically and deterministically."""
    plain = json.loads(json.dumps(plain, sort_keys=True))
    payload = {"format": fmt, "state_dict": _cpu(state_dict), **plain}
    if tensors is not None:
        payload["tensors"] = _cpu(dict(sorted(tensors.items())))
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)
    return path


def _cpu(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Own compact CPU storages: a view would drag its whole base storage along, and a CUDA
    # tensor would need CUDA (or map_location) to load.
    return {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}


def read_bundle(path: Path, where: str, fmt: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The payload of a bundle file, checked for its format and keys (:class:`InputError` otherwise).

    Always ``torch.load(weights_only=True)`` onto the CPU: a file that is not a bundle, or a
    pickle that would import or call anything, is refused without running it.
    """
    if not path.is_file():
        raise InputError(where, None, "no such file")
    try:
        with warnings.catch_warnings():
            # Foreign pickles (protocol > 2) make torch warn before it refuses them anyway.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever the bytes are, the answer is "not a bundle"
        raise InputError(
            where, None, f"not a {fmt} bundle: torch.load(weights_only=True) refused it ({reason(err)})"
        ) from None
    if not isinstance(payload, dict):
        raise InputError(where, None, f"holds a {type(payload).__name__}, not a {fmt} dict")
    if payload.get("format") != fmt:
        raise InputError(where, "format", f"is {payload.get('format')!r}, expected {fmt!r}")
    missing = [k for k in keys if k not in payload]
    if missing:
        raise InputError(where, ", ".join(missing), "missing from the bundle")
    state = field(payload, "state_dict", dict, where)
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise InputError(where, "state_dict", "must map parameter names to tensors")
    return payload


def field(payload: dict, key: str, kind: type, where: str) -> Any:
    """``payload[key]``, which must be a ``kind``."""
    value = payload[key]
    # bool is an int subclass: a True t_in is a broken file, not 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InputError(where, key, f"must be a {kind.__name__}, got {type(value).__name__}")
    return value


def str_list(payload: dict, key: str, where: str) -> list[str]:
    value = field(payload, key, list, where)
    if not all(isinstance(v, str) for v in value):
        raise InputError(where, key, "must be a list of strings")
    return list(value)


def parse(where: str, key: str, parser: Any, value: Any) -> Any:
    """``parser(value)``, with a parse error reported as an :class:`InputError` on ``key``."""
    try:
        return parser(value)
    except (TypeError, ValueError, KeyError) as err:
        raise InputError(where, key, f"invalid: {err}") from None


def meta_value(key: Any, value: Any) -> str | int | float | bool | None:
    """A metadata value as a plain JSON scalar."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise ValueError(f"meta[{key!r}] must be a string or a number, got {type(value).__name__}")


def reason(err: BaseException, lines: int = 1) -> str:
    """The informative part of a (possibly very long) exception message."""
    text = [line.strip() for line in str(err).splitlines() if line.strip()]
    # torch's weights-only refusal puts the offending global after a generic preamble.
    blocked = [line for line in text if "Unsupported global" in line or "Unsupported operand" in line]
    if blocked:
        head = blocked[0].split(". Please")[0].removeprefix("WeightsUnpickler error: ")
    else:
        head = " ".join(text[:lines])
    text_reason = f"{type(err).__name__}: {head}" if head else type(err).__name__
    return text_reason if len(text_reason) <= 400 else text_reason[:400] + "..."
