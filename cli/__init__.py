"""The `squeezenas` command line: one subcommand per DVC stage plus tools (describe, miou, lineage), `squeezenas
run` (the whole pipeline under one Prefect server) and the fork server that starts its stages warm."""
