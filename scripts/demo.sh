#!/usr/bin/env bash
# The main job on this offline machine: install, then fine-tune the packaged MiniLM-L6 teacher on
# SST-2 from the local GLUE files and evaluate it. Pass a task name to change the task.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
TASK="${1:-sst2}"
DATA="${KRONBIT_DATA_ROOT:-../shared/data}/glue"
OUT="runs/teacher-$TASK"
kronbit finetune --model packaged:minilm --task "$TASK" --data-dir "$DATA" --output-dir "$OUT" \
  --epochs 1 --train-subset 8000 --max-seq-length 64 --bf16 --overwrite
kronbit eval --model "$OUT" --data-dir "$DATA"
