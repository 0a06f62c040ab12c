"""The baseline registry: each baseline module defines its config class next to its ``nn.Module``
and registers both under its name, the module's name (``gptst/models/baselines/<name>.py``)::

    class TgcnConfig(BaselineConfig):        # the GPT-ST configuration's values as defaults
        hidden: int = Field(100, ge=1)

    @register_baseline("tgcn", TgcnConfig)   # graphs=("dtw",) for one that needs derived graphs,
                                             # kinds=("demand",) for one that applies to demand only
    class TGCN(nn.Module): ...

Every baseline is built from ``(num_nodes, in_dim, out_dim, in_steps, out_steps, graph, params)``
and maps ``x [B, in_steps, N, in_dim]`` to ``[B, out_steps, N, out_dim]``. ``graph`` is a
:class:`gptst.graph.bundle.GraphBundle`; each baseline derives the normalisations it needs through
``gptst.graph`` functions. ``params`` is the baseline's config (its class's defaults overlaid with
``baselines.<name>`` of params.yaml and the preset, resolved above this layer).

Modules are imported lazily, one by name: :func:`baseline_spec` imports
``gptst.models.baselines.<name>`` the first time it is asked for ``name``, and nothing imports
every baseline, so a finetune item's code closure holds only its own baseline's module (editing
one baseline re-runs only its DVC items). :func:`registered_baselines` lists the package's modules
without importing them, plus baselines registered at run time (a test's toy model). Modules of
this package whose name starts with ``_`` are helpers, not baselines.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from gptst.graph.bundle import GraphBundle

# A baseline name is a module name without '-': DVC item names are finetune@<baseline>-<variant>.
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_NOT_BASELINES = frozenset({"registry"})


class BaselineConfig(BaseModel):
    """Fields every baseline has; each baseline's config class adds its own hyper-parameters and
    may change these defaults (``loss: ... = "huber"`` for a baseline trained with Huber loss)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    loss: Literal["mae", "huber"] = Field("mae", description="training loss on de-normalised values")
    huber_delta: float = Field(1.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


@dataclass(frozen=True)
class BaselineSpec:
    """A registered baseline: its module class, its config class, the derived graphs it needs
    (keys of ``adjacency.npz`` beyond ``adj``, :mod:`gptst.graph.derived`) and the data kinds it
    applies to (``gptst.data.kinds``: speed, flow, demand; empty: every kind)."""

    name: str
    cls: type[nn.Module]
    config_cls: type[BaselineConfig]
    graphs: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()

    def config(self, values: Mapping[str, Any] | None = None) -> BaselineConfig:
        """The config class's defaults overlaid with ``values`` (pydantic's ValidationError if invalid)."""
        return self.config_cls.model_validate(dict(values or {}))


_REGISTRY: dict[str, BaselineSpec] = {}


def register_baseline(
    name: str, config: type[BaselineConfig], *, graphs: Sequence[str] = (), kinds: Sequence[str] = ()
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: register a baseline ``nn.Module`` under ``name`` with its config class.

    Also usable at run time, ``register_baseline("toy", ToyConfig)(Toy)``, for a baseline defined
    outside this package (remove it with :func:`unregister_baseline`).
    """
    if not NAME.match(name):
        raise ValueError(f"baseline name {name!r}: lower-case letters, digits and '_', starting with a letter")
    if not (isinstance(config, type) and issubclass(config, BaselineConfig)):
        raise TypeError(f"baseline {name!r}: config must be a subclass of BaselineConfig, got {config!r}")

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        old = _REGISTRY.get(name)
        # the same class again (a module reloaded) replaces it; another class is a clash
        if old is not None and (old.cls.__module__, old.cls.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"baseline {name!r} is registered twice ({old.cls.__module__}.{old.cls.__qualname__})")
        _REGISTRY[name] = BaselineSpec(name, cls, config, tuple(graphs), tuple(kinds))
        return cls

    return decorate


def unregister_baseline(name: str) -> None:
    """Forget a baseline registered at run time (a test's toy model)."""
    _REGISTRY.pop(name, None)


def baseline_modules() -> list[str]:
    """Names of this package's baseline modules, found on disk without importing them."""
    return sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if not m.ispkg and not m.name.startswith("_") and m.name not in _NOT_BASELINES
    )


def registered_baselines() -> list[str]:
    """Every baseline: the package's modules (not imported) and the run-time registrations, sorted."""
    return sorted(set(baseline_modules()) | set(_REGISTRY))


def baseline_spec(name: str) -> BaselineSpec:
    """The spec of baseline ``name``, importing ``gptst.models.baselines.<name>`` if needed."""
    spec = _REGISTRY.get(name)
    if spec is None and NAME.match(name) and name in baseline_modules():
        module = f"{__package__}.{name}"
        importlib.import_module(module)
        spec = _REGISTRY.get(name)
        if spec is None:
            raise KeyError(
                f"module {module} registers no baseline {name!r} (decorate its class with "
                f"@register_baseline({name!r}, <its config class>))"
            )
    if spec is None:
        raise KeyError(f"unknown baseline {name!r}; registered: {registered_baselines()}")
    return spec


def build_baseline(
    name: str,
    *,
    num_nodes: int,
    in_dim: int,
    out_dim: int,
    in_steps: int,
    out_steps: int,
    graph: GraphBundle,
    params: BaselineConfig | Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build baseline ``name`` for these sizes; ``params`` is its config (or a mapping of overrides
    of its defaults; None: the defaults)."""
    spec = baseline_spec(name)
    if params is None or isinstance(params, Mapping):
        params = spec.config(params)
    if not isinstance(params, spec.config_cls):
        raise TypeError(f"baseline {name!r} takes {spec.config_cls.__name__}, got {type(params).__name__}")
    if graph.num_nodes != num_nodes:
        raise ValueError(f"graph has {graph.num_nodes} nodes, the data {num_nodes}")
    missing = [g for g in spec.graphs if g not in graph.extras]
    if missing:
        raise ValueError(
            f"baseline {name!r} needs the graphs {missing} in adjacency.npz (it has {sorted(graph.extras) or 'none'})"
        )
    return spec.cls(
        num_nodes=num_nodes,
        in_dim=in_dim,
        out_dim=out_dim,
        in_steps=in_steps,
        out_steps=out_steps,
        graph=graph,
        params=params,
    )


def check_applies(name: str, kind: str) -> None:
    """Raise ValueError naming the baseline and the kind when baseline ``name`` does not apply to
    data of ``kind`` (a demand-only model given speed readings)."""
    kinds = baseline_spec(name).kinds
    if kinds and kind not in kinds:
        raise ValueError(
            f"baseline {name!r} applies to {' or '.join(kinds)} data only; this dataset's kind is {kind!r}"
        )


def graphs_needed(names: Sequence[str]) -> list[str]:
    """The derived graphs (``adjacency.npz`` keys beyond ``adj``) the baselines ``names`` need, sorted."""
    return sorted({graph for name in names for graph in baseline_spec(name).graphs})


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
