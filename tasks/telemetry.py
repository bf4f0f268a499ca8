"""The telemetry switches, once: nothing the pipeline runs may try the network (Prefect, MLflow and DVC telemetry,
the Hugging Face hub). scripts/env.sh exports the same (a shell script cannot import them; a test compares)."""
from __future__ import annotations

import os

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "HF_HUB_OFFLINE": "1",
}


def quiet_telemetry() -> None:
    """Switch the telemetry off in this process and the ones it starts, where the environment has not decided."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
