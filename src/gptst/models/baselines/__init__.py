"""Downstream baselines, one file each (BASELINES.md); importing the package registers them all."""

import importlib as _importlib
import pkgutil as _pkgutil

from gptst.models.baselines.registry import (
    BaselineSpec,
    baseline_spec,
    build_baseline,
    parameter_count,
    register_baseline,
    registered_baselines,
)

# Every module of this package but the registry is a baseline that registers itself on import.
for _module in _pkgutil.iter_modules(__path__):
    if _module.name != "registry":
        _importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "BaselineSpec",
    "baseline_spec",
    "build_baseline",
    "parameter_count",
    "register_baseline",
    "registered_baselines",
]
