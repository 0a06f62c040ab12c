"""Prefect flows over the DVC pipeline: ``dvc.yaml`` stays the one definition of the stages.

- :mod:`flows.pipeline`: the stages in DAG order as tasks (local), or the finetunes dispatched to
  workers (scale-out);
- :mod:`flows.finetune`: one finetune item in its own workspace (what a worker runs);
- :mod:`flows.retrain`: scheduled retraining (new raw data, then the pipeline);
- :mod:`flows.deploy`: ``make deploy`` (work pool and the deployments of ``prefect.yaml``);
- :mod:`flows.dvc_ops`: running ``dvc`` with its output in the run's logs, the stage graph,
  ``params.yaml`` edits.

The library (``src/gptst``) knows nothing of Prefect or DVC; these modules only drive ``dvc``.
"""

import gptst as _gptst  # noqa: F401  (first: its telemetry switches must precede Prefect's settings)
