"""GPT-ST pipeline library: data, graphs, validation, models, training and tracking.

Importing the package switches off the telemetry of the tools it drives (setdefault: a
user's explicit setting wins), so nothing phones home at run time even outside the Makefile.
"""

import os as _os

for _key, _value in {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}.items():
    _os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
