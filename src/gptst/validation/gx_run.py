"""Great Expectations 1.x plumbing: an in-memory context, one suite per view, one checkpoint.

GX is imported lazily (6-7 s), so importing :mod:`gptst.validation` stays cheap for stages
that never validate.

Why the views travel as Parquet files: a checkpoint passes the same ``batch_parameters`` to
every validation definition, and a pandas *dataframe* asset takes its frame only from there,
so one checkpoint cannot validate several in-memory frames. Each view is therefore written to
a private temporary directory (never under ``out_dir`` nor a ``gx/`` project folder) and read
by a Parquet asset of the in-memory pandas data source; the directory is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from gptst.validation.frames import INDEX_COLUMNS

CHECKPOINT_NAME = "gptst-validate"
DATASOURCE_NAME = "gptst"


def import_gx() -> Any:
    """Import ``great_expectations`` with analytics off.

    GX 1.x reads ``GX_ANALYTICS_ENABLED`` when the config leaves analytics unset; the context
    config below also sets it, so either alone keeps usage events from being sent.
    """
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx

    return gx


def new_context() -> Any:
    """An ephemeral GX context: in-memory stores, no Data Docs site, analytics and progress bars off.

    Data Docs are deliberately not configured: their HTML pulls CSS and JS from CDNs, so they
    are unreadable offline. ``summary.md`` is the offline report instead.
    """
    gx = import_gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        # init_temp_docs_sites=False: no Data Docs site, so nothing is ever rendered to disk.
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


@dataclass
class Check:
    """One expectation, described independently of GX so the views stay importable without it."""

    kind: str  # GX expectation class name, e.g. "ExpectColumnValuesToBeBetween"
    kwargs: dict[str, Any]
    description: str


@dataclass
class View:
    """A tidy frame validated by its own suite; ``blocking`` suites decide ``report.success``."""

    name: str
    frame: pd.DataFrame
    checks: list[Check] = field(default_factory=list)
    blocking: bool = True


def run_checkpoint(context: Any, views: Sequence[View], max_examples: int) -> dict[str, Any]:
    """Validate every view with one checkpoint and return its result as a JSON-ready dict.

    The context is left as it was found: everything added here is deleted again, so one context
    can serve many runs (the tests share one).
    """
    gx = import_gx()
    import great_expectations.expectations as gxe
    from great_expectations.expectations.metadata_types import FailureSeverity

    result_format = {
        "result_format": "SUMMARY",
        "unexpected_index_column_names": list(INDEX_COLUMNS),
        "partial_unexpected_count": max_examples,
        "return_unexpected_index_query": False,
    }
    added: list[tuple[Any, str]] = []
    with tempfile.TemporaryDirectory(prefix="gptst-gx-") as tmp:
        try:
            source = context.data_sources.add_pandas(DATASOURCE_NAME)
            added.append((context.data_sources, DATASOURCE_NAME))
            definitions = []
            for view in views:
                path = Path(tmp) / f"{view.name}.parquet"
                view.frame.to_parquet(path, index=False)
                batch = source.add_parquet_asset(view.name, path=path).add_batch_definition(view.name)
                severity = FailureSeverity.CRITICAL if view.blocking else FailureSeverity.WARNING
                expectations = [
                    getattr(gxe, c.kind)(
                        **c.kwargs,
                        description=c.description,
                        meta={"view": view.name, "blocking": view.blocking},
                        severity=severity,
                        catch_exceptions=True,
                    )
                    for c in view.checks
                ]
                # The constructor takes the whole list at once: add_expectation() on a stored
                # suite writes it to the store once per expectation.
                suite = context.suites.add(gx.ExpectationSuite(name=view.name, expectations=expectations))
                added.append((context.suites, view.name))
                definition = context.validation_definitions.add(
                    gx.ValidationDefinition(name=view.name, data=batch, suite=suite)
                )
                added.append((context.validation_definitions, view.name))
                definitions.append(definition)
            checkpoint = context.checkpoints.add(
                gx.Checkpoint(
                    name=CHECKPOINT_NAME,
                    validation_definitions=definitions,
                    actions=[],
                    result_format=result_format,
                )
            )
            added.append((context.checkpoints, CHECKPOINT_NAME))
            result = checkpoint.run()
            return checkpoint_result_dict(result)
        finally:
            # Delete in reverse: a checkpoint refers to definitions, which refer to suites.
            for store, name in reversed(added):
                with contextlib.suppress(Exception):  # cleanup must not mask the real error
                    store.delete(name)


def checkpoint_result_dict(result: Any) -> dict[str, Any]:
    """The checkpoint result as plain JSON: GX's own serialisation of each suite result.

    ``describe_dict()`` drops suite names and metadata, so it only supplies the statistics.
    """
    described = result.describe_dict()
    return {
        "checkpoint": result.name,
        "success": bool(result.success),
        "run_id": {"run_name": result.run_id.run_name, "run_time": result.run_id.run_time.isoformat()},
        "statistics": described["statistics"],
        "validation_results": [r.to_json_dict() for r in result.run_results.values()],
    }
