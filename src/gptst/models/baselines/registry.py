"""The baseline registry: one file per baseline registers its class under its params name.

Every baseline is built from ``(num_nodes, in_dim, out_dim, in_steps, out_steps, graph, params)``
and maps ``x [B, in_steps, N, in_dim]`` to ``[B, out_steps, N, out_dim]``. ``graph`` is a
:class:`gptst.graph.GraphBundle`; each baseline derives the normalisations it needs through
``gptst.graph`` functions. ``params`` is the baseline's own section, ``baselines.<name>``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from gptst.graph import GraphBundle
from gptst.params import BaselineParams, BaselinesParams


@dataclass(frozen=True)
class BaselineSpec:
    name: str
    cls: type[nn.Module]
    params_cls: type[BaselineParams]


_REGISTRY: dict[str, BaselineSpec] = {}


def register_baseline(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: register a baseline under ``name`` (a field of ``BaselinesParams``)."""
    if name not in BaselinesParams.model_fields:
        raise ValueError(f"no params section baselines.{name}: add one to gptst.params.BaselinesParams first")

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"baseline {name!r} is registered twice")
        params_cls = BaselinesParams.model_fields[name].annotation
        _REGISTRY[name] = BaselineSpec(name, cls, params_cls)
        return cls

    return decorate


def registered_baselines() -> list[str]:
    """Names of every registered baseline, sorted."""
    return sorted(_REGISTRY)


def baseline_spec(name: str) -> BaselineSpec:
    if name not in _REGISTRY:
        raise KeyError(f"unknown baseline {name!r}; registered: {registered_baselines()}")
    return _REGISTRY[name]


def build_baseline(
    name: str,
    *,
    num_nodes: int,
    in_dim: int,
    out_dim: int,
    in_steps: int,
    out_steps: int,
    graph: GraphBundle,
    params: BaselineParams | None = None,
) -> nn.Module:
    """Build baseline ``name`` for these sizes (``params`` default: the section's defaults)."""
    spec = baseline_spec(name)
    params = params if params is not None else spec.params_cls()
    if not isinstance(params, spec.params_cls):
        raise TypeError(f"baseline {name!r} takes {spec.params_cls.__name__}, got {type(params).__name__}")
    if graph.num_nodes != num_nodes:
        raise ValueError(f"graph has {graph.num_nodes} nodes, the data {num_nodes}")
    return spec.cls(
        num_nodes=num_nodes,
        in_dim=in_dim,
        out_dim=out_dim,
        in_steps=in_steps,
        out_steps=out_steps,
        graph=graph,
        params=params,
    )


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
