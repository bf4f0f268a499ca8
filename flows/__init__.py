"""Prefect flows, one per DVC stage, and the `squeezenas` command line."""
import os


def quiet_telemetry() -> None:
    """Nothing may try the network: switch off Prefect, MLflow and DVC telemetry."""
    for key, value in {
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }.items():
        os.environ.setdefault(key, value)


quiet_telemetry()
