#!/usr/bin/env bash
# Create .venv and install the pinned stack. Idempotent: a second run only checks.
#   scripts/setup.sh          the pipeline's dependencies
#   scripts/setup.sh --test   also the system packages the tests need (OpenSSH server; needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--test" ]] && ! command -v /usr/sbin/sshd >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then
    echo "[setup] installing openssh-server for the SSH profiling tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
  else
    echo "[setup] warning: /usr/sbin/sshd missing and not root; SSH tests will be skipped" >&2
  fi
fi

[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
if [[ ! -f "$stamp" ]]; then
  echo "[setup] installing the pinned stack into .venv (first run: ~2 min)"
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  # the CPU wheel first, so the torch range in pyproject is already satisfied (no CUDA download)
  .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
  rm -f .venv/.installed-*; touch "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, prefect, mlflow, dvc.version as v; print(f"torch {torch.__version__}, prefect {prefect.__version__}, mlflow {mlflow.__version__}, dvc {v.__version__}")')"
