# Sourced by the Makefile and .ci/run: nothing may try the network (no telemetry anywhere).
export DO_NOT_TRACK=1
export DVC_NO_ANALYTICS=1
export MLFLOW_DISABLE_TELEMETRY=true
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY=false
export HF_HUB_OFFLINE=1
