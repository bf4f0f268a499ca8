"""Prefect flows, one per DVC stage, and the parent flow of the whole pipeline (the command line is in cli/)."""
from tasks.telemetry import quiet_telemetry

quiet_telemetry()
