# The two commands of the README: `make run` (set up + whole pipeline) and `make test` (set up + tests).
SHELL := /bin/bash
.PHONY: setup setup-test run test test-fast bench

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh --test

run: setup
	source scripts/env.sh && .venv/bin/squeezenas run

test: setup-test
	source scripts/env.sh && .venv/bin/python -m pytest -q --durations=15

test-fast: setup
	source scripts/env.sh && .venv/bin/python -m pytest -q -m "not slow"
