#!/usr/bin/env bash
# The test command: install, then run every test (the few real-model ones are marked slow but
# short). GLUE data is read from $KRONBIT_DATA_ROOT (default: ../shared/data beside the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec python3 -m pytest -q "$@"
