#!/usr/bin/env bash
# Demo training script, called like the user's repos: ./train.sh -n MODEL [--epochs N] [--lr X] ...
# The interpreter is the first python3 on PATH unless DEMO_PYTHON names one.
set -euo pipefail
cd "$(dirname "$0")"
exec "${DEMO_PYTHON:-python3}" train.py "$@"
