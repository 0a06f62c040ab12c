"""``make deploy``: the work pool and the deployments of ``prefect.yaml``, with values from params.

``prefect.yaml`` cannot read ``params.yaml``, so this passes the values it needs through the
environment, which ``prefect deploy`` substitutes for ``{{ $NAME }}``: ``GPTST_DATASET``
(``dataset.name``: the deployment ``retrain-<dataset>``), ``GPTST_WORK_POOL``
(``orchestration.work_pool``), ``GPTST_RETRAIN_CRON`` (``orchestration.retrain_cron``, or ``--cron``)
and ``GPTST_FORECAST_CRON`` (``orchestration.forecast_cron``, or ``--forecast-cron``) and
``GPTST_TIMEZONE`` (``orchestration.timezone``). The pool is a ``process`` pool whose
concurrency limit is ``orchestration.gpus`` (one flow run per GPU).

    python -m flows.deploy [--cron "*/5 * * * *"]     # the Prefect API: PREFECT_API_URL
    python -m flows.deploy --work-pool                # prints the pool's name (make worker)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from gptst.params import OrchestrationParams, load_params
from gptst.stage import run_stage


def ensure_work_pool(name: str, concurrency_limit: int) -> str:
    """Create the ``process`` work pool, or set the concurrency limit of the existing one.
    Returns what was done."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=ProcessWorker.type,
                    concurrency_limit=concurrency_limit,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
            return f"created work pool {name!r} (process, concurrency limit {concurrency_limit})"
        if pool.type != ProcessWorker.type:
            raise SystemExit(f"work pool {name!r} exists with type {pool.type!r}; the flows need a 'process' pool")
        client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=concurrency_limit))
        return f"work pool {name!r}: concurrency limit {concurrency_limit}"


def deploy_env(params_file: str | Path, cron: str | None = None, forecast_cron: str | None = None) -> dict[str, str]:
    """The environment ``prefect deploy`` reads ``prefect.yaml``'s placeholders from."""
    params = load_params(params_file)
    orchestration = params.orchestration
    overrides = {k: v for k, v in (("retrain_cron", cron), ("forecast_cron", forecast_cron)) if v is not None}
    if overrides:  # validated like the params values
        orchestration = OrchestrationParams.model_validate({**orchestration.model_dump(), **overrides})
    return {
        "GPTST_DATASET": params.dataset.name,
        "GPTST_WORK_POOL": orchestration.work_pool,
        "GPTST_RETRAIN_CRON": orchestration.retrain_cron,
        "GPTST_FORECAST_CRON": orchestration.forecast_cron,
        "GPTST_TIMEZONE": orchestration.timezone,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prefect-file", default="prefect.yaml")
    parser.add_argument("--cron", help="retraining schedule instead of orchestration.retrain_cron")
    parser.add_argument("--forecast-cron", help="forecast schedule instead of orchestration.forecast_cron")
    parser.add_argument("--work-pool", action="store_true", help="print the work pool's name and exit")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.work_pool:
            print(load_params(args.params).orchestration.work_pool)
            return 0
        values = deploy_env(args.params, args.cron, args.forecast_cron)
        params = load_params(args.params)
        print(ensure_work_pool(values["GPTST_WORK_POOL"], params.orchestration.gpus))
        print(f"retrain-{values['GPTST_DATASET']}: cron {values['GPTST_RETRAIN_CRON']!r} ({values['GPTST_TIMEZONE']})")
        print(
            f"forecast-{values['GPTST_DATASET']}: cron {values['GPTST_FORECAST_CRON']!r} ({values['GPTST_TIMEZONE']})"
        )
        cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", args.prefect_file]
        return subprocess.run(cmd, check=False, env={**os.environ, **values}).returncode

    return run_stage(body)


if __name__ == "__main__":
    raise SystemExit(main())
