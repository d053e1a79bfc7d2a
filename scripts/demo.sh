#!/usr/bin/env bash
# The main job on this offline machine: install, then `kronbit demo` — fine-tune the packaged
# MiniLM-L6 teacher on local SST-2, compress it with the TSPQ ternary recipe (W2A8) at a small
# budget, export it packed, and print score, size and latency against fp32 and int8. About ten
# minutes on two CPU cores; a second run reuses what runs/demo already holds. Extra arguments go
# to `kronbit demo` (e.g. --task mrpc, --recipe recipes/tspq/binary.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec kronbit demo --output-dir runs/demo "$@"
