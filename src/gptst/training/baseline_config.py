"""Each baseline's resolved config: its module's defaults overlaid with ``baselines.<name>`` of
params.yaml and the preset, validated against the baseline registry.

:mod:`gptst.params` only checks that ``baselines:`` is a mapping of names to mappings: it imports
no model, so the data stages' import closures stay free of them. This module sits above the models
(in training): it imports the registry, which imports one baseline's module when asked for it.
Every consumer goes through here: the finetune stage, the ``finetune_params`` stage (the resolved
file the DVC finetune items track), ``gptst params``, ``gptst baselines`` and the flows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from gptst.errors import InputError
from gptst.layout import DERIVED_GRAPHS_KEY
from gptst.models.baselines.registry import (
    BaselineConfig,
    baseline_spec,
    check_applies,
    graphs_needed,
    registered_baselines,
)
from gptst.params import Params

# Written by the finetune_params stage; the DVC finetune items track keys of it (dvc.yaml).
RESOLVED_SECTIONS = ("finetune.common", "baselines")


def baseline_config(params: Params, name: str) -> BaselineConfig:
    """The config of baseline ``name``: defaults of its config class, overlaid with
    ``params.baselines[name]``. :class:`InputError` naming ``baselines.<name>.<key>`` (and the file
    that set it) for an unknown baseline, an unknown key, a wrong type or a value out of range."""
    return _config(params, name, params.baselines.get(name, {}), params.source_of)


def _config(params: Params, name: str, values: dict[str, Any], source_of: Callable[[str], str]) -> BaselineConfig:
    try:
        spec = baseline_spec(name)
    except KeyError:
        field = f"baselines.{name}" if name in params.baselines else "finetune.baselines"
        raise InputError(
            source_of(field), field, f"unknown baseline {name!r}; registered: {registered_baselines()}"
        ) from None
    try:
        return spec.config(values)
    except ValidationError as err:
        problems = err.errors()
        keys = [".".join(map(str, e["loc"])) for e in problems]
        field = f"baselines.{name}.{keys[0]}" if keys[0] else f"baselines.{name}"
        described = [_describe(e, spec.config_cls.__name__) for e in problems]
        more = "".join(f"; also baselines.{name}.{k}: {d}" for k, d in zip(keys[1:], described[1:], strict=True))
        raise InputError(source_of(field), field, described[0] + more) from None


def validate_baselines(params: Params, names: Iterable[str] | None = None) -> dict[str, BaselineConfig]:
    """The configs of ``names`` (default: every baseline of ``finetune.baselines`` and every section
    of ``baselines:``, so a typo in a section nobody lists yet is caught too), in order."""
    if names is None:
        unknown = [n for n in params.finetune.baselines if n not in registered_baselines()]
        if unknown:
            raise InputError(
                params.source_of("finetune.baselines"),
                "finetune.baselines",
                f"names unknown baselines {unknown}; registered: {registered_baselines()}",
            )
        names = list(dict.fromkeys([*params.finetune.baselines, *params.baselines]))
        # params.yaml's own sections too: a value the preset masks is used by another preset
        for name, values in params.file_baselines.items():
            _config(params, name, values, lambda field: str(params.file))
    return {name: baseline_config(params, name) for name in names}


def resolved_finetune_params(params: Params) -> dict[str, Any]:
    """What every finetune item trains with beyond params.yaml's shared sections, resolved (preset
    overlaid, defaults filled in) and validated: ``finetune.common`` and ``baselines.<name>`` of
    each listed baseline. The finetune_params stage writes it; each DVC item tracks its own keys."""
    configs = validate_baselines(params, params.finetune.baselines)
    validate_baselines(params)
    for name in params.finetune.baselines:
        try:
            check_applies(name, params.dataset.kind)
        except ValueError as err:
            raise InputError(params.source_of("finetune.baselines"), "finetune.baselines", str(err)) from None
    return {
        "finetune": {"common": params.finetune.common.model_dump(mode="json")},
        "baselines": {name: config.model_dump(mode="json") for name, config in configs.items()},
        # what the adjacency stage builds: it reads this file, not the baseline modules
        DERIVED_GRAPHS_KEY: graphs_needed(params.finetune.baselines),
    }


def _describe(error: Mapping[str, Any], config_name: str) -> str:
    if error["type"] == "extra_forbidden":
        return f"unknown key (not a field of {config_name})"
    msg = error["msg"].removeprefix("Value error, ")
    if "input" in error and error["type"] != "value_error":
        return f"{msg} (got {error['input']!r})"
    return msg
