#!/usr/bin/env bash
# Packs, on a machine with Rust and a package registry, what scripts/gpu_check.sh installs on a
# GPU machine that has neither: the project's wheel (rust_cpuattn is abi3, so it loads on any
# CPython >= 3.11) and wheels of the dependencies that machine lacks, for CPython 3.12 on
# x86-64 Linux. Output: gpu_pack/ (git-ignored), checked to stay under 60 MiB.
#   usage: scripts/gpu_pack.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-gpu_pack}
LIMIT_MIB=60
rm -rf "$DIR"
mkdir -p "$DIR"
# The packages a GPU machine's image lacks (it has torch, triton, numpy, aiohttp, tokenizers,
# safetensors, prometheus-client, pyyaml, tqdm, jinja2, pytest, hypothesis).
MISSING=(msgspec structlog gguf pytest-asyncio)

maturin build --release --strip --out "$DIR"
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$DIR" \
    --implementation cp --python-version 3.12 --abi cp312 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    "${MISSING[@]}"
ls -l "$DIR"
size_mib=$(( $(du -sb "$DIR" | cut -f1) >> 20 ))
if (( size_mib >= LIMIT_MIB )); then
    echo "gpu_pack: $DIR is ${size_mib} MiB, over ${LIMIT_MIB} MiB" >&2
    exit 1
fi
echo "gpu_pack: $DIR holds $(ls "$DIR" | wc -l) wheels, ${size_mib} MiB"
