"""Prefect flows, one per DVC stage, and the parent flow of the whole pipeline (the command line is in cli/)."""
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
