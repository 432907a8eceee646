#!/usr/bin/env bash
# The GPU check: on a GPU machine with no network (wheels from scripts/gpu_pack.sh in
# gpu_pack/), installs them, runs the CUDA tests and the interpreter tests, measures the
# device and host decode kernels against the hardware's bandwidth, generates random-weight
# models of SmolLM2-135M and Llama-3-8B shape and runs a short `bench offload` on them with
# the device pool capped; prints one JSON summary as its last line. Without a GPU (or with
# --cpu-only) it says so and runs what runs on a CPU: the Triton interpreter and lane tests.
# Exit status: non-zero only when a test failed. At most ~8 minutes on one GPU.
#   usage: scripts/gpu_check.sh [--cpu-only] [--quick]
#   env:   GPU_PACK (default gpu_pack), GPU_CHECK_DIR (scratch, default a temporary dir)
set -uo pipefail
cd "$(dirname "$0")/.."
CPU_ONLY=0
QUICK=0
for arg in "$@"; do
    case $arg in
        --cpu-only) CPU_ONLY=1 ;;
        --quick) QUICK=1 ;;
        *) echo "usage: $0 [--cpu-only] [--quick]" >&2; exit 2 ;;
    esac
done
PY=python3
PACK=${GPU_PACK:-gpu_pack}
WORK=${GPU_CHECK_DIR:-$(mktemp -d)}
mkdir -p "$WORK"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PYTHONUNBUFFERED=1
LANE_TESTS=(tests/test_triton_decode.py tests/test_triton_prefill.py tests/test_device_attention.py tests/test_staging.py)

if (( CPU_ONLY )) || ! $PY -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "gpu_check: no GPU here; running the CPU-runnable parts (Triton interpreter and lane tests)"
    select=(-m "not cuda")
    # --quick: one GQA case of each kernel and the staging tests (CI runs the rest in its own suite)
    (( QUICK )) && select=(-m "not cuda and not slow" -k "heads1 or test_staging")
    TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES="" $PY -m pytest -q -p no:cacheprovider "${select[@]}" "${LANE_TESTS[@]}"
    rc=$?
    echo "{\"gpu\": null, \"interpreter_tests_rc\": $rc}"
    exit $rc
fi

step() { echo; echo "=== gpu_check: $* ($(date +%T))"; }

step "install the packed wheels"
if ls "$PACK"/*.whl >/dev/null 2>&1; then
    $PY -m pip install --quiet --no-index --no-deps "$PACK"/*.whl || echo "gpu_check: wheel install failed" >&2
else
    echo "gpu_check: no wheels in $PACK (run scripts/gpu_pack.sh where a registry is reachable)" >&2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "memlock limit: $(ulimit -l)"

step "CUDA tests"
timeout 240 $PY -m pytest -q -p no:cacheprovider -m cuda tests/ 2>&1 | tee "$WORK/cuda_tests.log"
cuda_rc=${PIPESTATUS[0]}

step "interpreter tests (child process with TRITON_INTERPRET=1)"
TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES="" timeout 180 $PY -m pytest -q -p no:cacheprovider -m "not cuda and not slow" \
    "${LANE_TESTS[@]}" 2>&1 | tail -3
interp_rc=${PIPESTATUS[0]}

step "decode kernels against the hardware's bandwidth"
timeout 120 $PY -m neo_async.bench.gpu_lane > "$WORK/kernels.json" || echo "gpu_check: kernel bench failed" >&2

step "random-weight models"
timeout 180 $PY - "$WORK" "$QUICK" <<'EOF' || echo "gpu_check: model generation failed" >&2
import sys
from pathlib import Path
from gguf import GGMLQuantizationType as T
from neo_async.bench.synthetic_gguf import LlamaShape, write_synthetic_gguf
work, quick = Path(sys.argv[1]), sys.argv[2] == "1"
write_synthetic_gguf(work / "smollm2-135m.gguf", LlamaShape(576, 1536, 30, 9, 3, 49152), T.Q8_0)
if not quick:
    write_synthetic_gguf(work / "llama3-8b.gguf", LlamaShape(4096, 14336, 32, 32, 8, 128256), T.Q4_0)
EOF
ls -la "$WORK"/*.gguf 2>/dev/null

bench() {  # name, model, extra args
    local name=$1 model=$2
    shift 2
    [[ -f $model ]] || return 0
    step "bench offload: $name"
    timeout "${BENCH_TIMEOUT:-150}" $PY -m neo_async.cli bench offload --model "$model" --modes off,neo --pipeline off,on \
        --output-lens 64 --output "$WORK/bench_$name.json" "$@" 2>&1 | tail -12
}
bench smollm2-135m "$WORK/smollm2-135m.gguf" --num-prompts 64 --input-len 1000 --device-kv-tokens 16384 --max-num-batched-tokens 2048
BENCH_TIMEOUT=200 bench llama3-8b "$WORK/llama3-8b.gguf" --num-prompts 32 --input-len 1000 --device-kv-tokens 8192 --max-num-batched-tokens 2048

step "summary"
$PY - "$WORK" "$cuda_rc" "$interp_rc" <<'EOF'
import json, sys
from pathlib import Path
work, cuda_rc, interp_rc = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
summary = {"cuda_tests_rc": cuda_rc, "interpreter_tests_rc": interp_rc}
try:
    summary |= json.loads((work / "kernels.json").read_text())
except (OSError, ValueError) as exc:
    summary["kernels_error"] = str(exc)
for path in sorted(work.glob("bench_*.json")):
    rows = json.loads(path.read_text())["rows"]
    tok_s = {f"{r['mode']}/{r['pipeline']}": round(r["tok_s"], 1) for r in rows}
    entry = {"tok_s": tok_s, "pipelined_steps": {f"{r['mode']}/{r['pipeline']}": r["pipelined_steps"] for r in rows}}
    if "neo/on" in tok_s and "neo/off" in tok_s:
        entry["pipelined_over_sequential"] = round(tok_s["neo/on"] / tok_s["neo/off"], 3)
    if "neo/on" in tok_s and "off/off" in tok_s:
        entry["neo_over_off"] = round(tok_s["neo/on"] / tok_s["off/off"], 3)
    summary[path.stem.removeprefix("bench_")] = entry
print(json.dumps(summary))
EOF
exit $(( cuda_rc != 0 || interp_rc != 0 ))
