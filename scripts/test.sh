#!/usr/bin/env bash
# Runs every test: the Rust core crate, then pytest (which also drives the Python binding,
# the engine on the embedded model, the server and the load generator).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --workspace --exclude rust_cpuattn_python
python3 -m pytest "$@"
