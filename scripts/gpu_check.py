"""The GPU check, one short run on a GPU machine that has no network and no Rust: the packed
wheels (scripts/gpu_pack.sh) installed, imports checked, the CUDA tests by file, the decode
kernels against the hardware's bandwidth, random-weight models generated there, off-vs-neo
greedy equivalence on two model shapes, and an off-vs-neo throughput run on a Llama-3-8B-shaped
model in bf16.

Every step runs in a child process under its own time budget (printed before it starts); the
budgets add up to at most 8 minutes, so the run does too. Each step writes its log to OUT/<step>.log,
prints one JSON line, and rewrites OUT/summary.json, so a stopped run keeps what it finished.

--cpu-only (the dry mode, also taken when no GPU is found) goes through every step that needs no
GPU: the import check, the collection of every CUDA test, the model generation, and the
equivalence and throughput runs on the CPU device at toy sizes.

    usage: scripts/gpu_check.sh [--cpu-only] [--out DIR]     (stdlib only; python3 >= 3.11)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE = Path("/tmp/neo_gpu_site")  # where the packed wheels are installed (PYTHONPATH)
CUDA_TEST_FILES = ["tests/test_triton_decode.py", "tests/test_triton_prefill.py", "tests/test_device_attention.py"]
INTERPRETER_TESTS = ["tests/test_triton_decode.py", "tests/test_triton_prefill.py", "tests/test_staging.py"]
REQUIRED = [
    "torch", "numpy", "pytest", "aiohttp", "tokenizers", "safetensors", "jinja2", "prometheus_client",
    "msgspec", "structlog", "gguf", "rust_cpuattn", "neo_async",
]
OPTIONAL = ["triton", "flashinfer"]  # triton is required on a GPU

# (name, hidden, intermediate, layers, heads, kv heads, vocab, ggml type): the GPU's models and the
# dry mode's toy twins. The 8B shape has Llama-3-8B's layers; equivalence runs 4 of them in float32.
MODELS = {
    "gpu": [
        ("smollm2-135m", 576, 1536, 30, 9, 3, 49152, "Q8_0"),
        ("llama3-8b-4layers", 4096, 14336, 4, 32, 8, 128256, "Q8_0"),
        ("llama3-8b", 4096, 14336, 32, 32, 8, 128256, "Q4_0"),
    ],
    "cpu": [
        ("smollm2-135m", 96, 192, 3, 3, 1, 1024, "Q8_0"),
        ("llama3-8b-4layers", 128, 256, 4, 4, 1, 1024, "Q8_0"),
        ("llama3-8b", 128, 256, 4, 4, 1, 1024, "Q4_0"),
    ],
}
EQUIVALENCE = {  # prompts that fit the tiny device pool and outputs that make some swap out
    "gpu": ["--num-prompts", "16", "--input-len", "60", "--output-len", "96", "--device-kv-tokens", "512"],
    "cpu": ["--num-prompts", "8", "--input-len", "40", "--output-len", "64", "--device-kv-tokens", "160"],
}
LANES = {  # the thread lane against the inline one, on the small model
    "gpu": ["--num-prompts", "32", "--input-len", "500", "--output-len", "64", "--device-kv-tokens", "2048",
            "--host-kv-tokens", "65536"],
    "cpu": ["--num-prompts", "6", "--input-len", "60", "--output-len", "12", "--device-kv-tokens", "160",
            "--host-kv-tokens", "4096"],
}
THROUGHPUT = {
    "gpu": ["--num-prompts", "64", "--input-len", "1000", "--output-len", "128", "--device-kv-tokens", "12288",
            "--host-kv-tokens", "81920", "--max-num-batched-tokens", "4096", "--pipeline", "on"],
    "cpu": ["--num-prompts", "8", "--input-len", "100", "--output-len", "16", "--device-kv-tokens", "320",
            "--host-kv-tokens", "4096", "--pipeline", "on"],
}


class Check:
    def __init__(self, out: Path, is_gpu: bool) -> None:
        self.out = out
        self.is_gpu = is_gpu
        self.summary: dict = {"gpu": None, "mode": "gpu" if is_gpu else "cpu-only", "steps": {}}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1", TOKENIZERS_PARALLELISM="false")
        if is_gpu:
            self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), os.environ.get("PYTHONPATH", "")) if p)
        else:
            self.env["CUDA_VISIBLE_DEVICES"] = ""

    def step(self, name: str, budget_s: int, cmd: list[str], env: dict | None = None, parse_json: bool = False) -> dict:
        """Runs cmd under budget_s; its output goes to OUT/<name>.log (stdout's last line parsed as
        JSON when asked); one JSON line printed, summary.json rewritten."""
        print(json.dumps({"step": name, "budget_s": budget_s, "started": time.strftime("%H:%M:%S")}), flush=True)
        log = self.out / f"{name}.log"
        started = time.monotonic()
        with log.open("w") as f:
            try:
                done = subprocess.run(cmd, cwd=ROOT, env=env or self.env, stdout=subprocess.PIPE, stderr=f, text=True, timeout=budget_s)
                rc, stdout = done.returncode, done.stdout
            except subprocess.TimeoutExpired as exc:
                rc, stdout = 124, exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            f.write(stdout)
        record: dict = {"step": name, "rc": rc, "seconds": round(time.monotonic() - started, 1), "budget_s": budget_s}
        if parse_json:
            try:
                record["result"] = json.loads(stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                record["result"] = None
        else:
            record["tail"] = stdout.strip().splitlines()[-1:] if stdout.strip() else []
        self.summary["steps"][name] = record
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1))
        print(json.dumps(record), flush=True)
        return record

    def skip(self, name: str, why: str) -> None:
        record = {"step": name, "skipped": why}
        self.summary["steps"][name] = record
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1))
        print(json.dumps(record), flush=True)


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


IMPORTS = """
import importlib, json, sys
required, optional = sys.argv[1].split(","), sys.argv[2].split(",")
missing, versions = [], {}
for name in required + optional:
    try:
        module = importlib.import_module(name)
        versions[name] = getattr(module, "__version__", "ok")
    except Exception as exc:
        versions[name] = None
        if name in required:
            missing.append(f"{name}: {exc!r}")
import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
print(json.dumps({"missing": missing, "versions": versions, "python": sys.version.split()[0], "gpu": gpu}))
sys.exit(1 if missing else 0)
"""

MAKE_MODELS = """
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from gguf import GGMLQuantizationType as T
from neo_async.bench.synthetic_gguf import LlamaShape, write_synthetic_gguf

def make(spec):
    name, *dims, kind = spec.split(":")
    path = Path(sys.argv[1]) / f"{name}.gguf"
    write_synthetic_gguf(path, LlamaShape(*map(int, dims)), getattr(T, kind))
    return name, path.stat().st_size

if __name__ == "__main__":
    with ProcessPoolExecutor(len(sys.argv) - 2) as pool:
        for name, size in pool.map(make, sys.argv[2:]):
            print(name, size, flush=True)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-only", action="store_true", help="the dry mode: every step that needs no GPU, at toy sizes")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "gpu_check_out"))
    parser.add_argument("--pack", type=Path, default=ROOT / "gpu_pack", help="the wheels of scripts/gpu_pack.sh")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    has_gpu = not args.cpu_only and _has_gpu()
    check = Check(args.out, has_gpu)
    size = "gpu" if has_gpu else "cpu"
    budget_s = sum(v for k, v in BUDGETS.items() if k != ("interpreter_tests" if has_gpu else "kernels"))
    print(json.dumps({"gpu_check": check.summary["mode"], "out": str(args.out), "budget_s": budget_s}), flush=True)

    wheels = sorted(str(p) for p in args.pack.glob("*.whl"))
    if has_gpu and wheels:
        check.step("install", BUDGETS["install"], _python(
            "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile", "--upgrade", "--target", str(SITE), *wheels))
    else:
        check.skip("install", "no GPU: the packages come from this environment" if not has_gpu else f"no wheels in {args.pack}")
    imports = check.step("imports", BUDGETS["imports"], _python(
        "-c", IMPORTS, ",".join(REQUIRED + (["triton"] if has_gpu else [])), ",".join(OPTIONAL)), parse_json=True)
    check.summary["gpu"] = (imports.get("result") or {}).get("gpu")
    if imports["rc"] != 0:
        return _finish(check, "required imports are missing")

    pytest = _python("-m", "pytest", "-q", "-p", "no:cacheprovider")
    if has_gpu:
        check.step("cuda_tests", BUDGETS["cuda_tests"], [*pytest, "-m", "cuda", *CUDA_TEST_FILES])
    else:
        check.step("cuda_tests", BUDGETS["cuda_tests"], [*pytest, "--collect-only", *CUDA_TEST_FILES])
        interp_env = dict(check.env, TRITON_INTERPRET="1")
        check.step("interpreter_tests", BUDGETS["interpreter_tests"],
                   [*pytest, "-m", "not cuda and not slow", "-k", "heads1 or test_staging", *INTERPRETER_TESTS], env=interp_env)
    if has_gpu:
        check.step("kernels", BUDGETS["kernels"], _python("-m", "neo_async.bench.gpu_lane"), parse_json=True)
    else:
        check.skip("kernels", "needs a GPU")

    models = args.out / "models" if not has_gpu else Path("/tmp/neo_gpu_models")
    models.mkdir(parents=True, exist_ok=True)
    specs = [":".join(map(str, m)) for m in MODELS[size]]
    made = check.step("models", BUDGETS["models"], _python("-c", MAKE_MODELS, str(models), *specs))
    if made["rc"] != 0:
        return _finish(check, "model generation failed")
    run = _python("-m", "neo_async.bench.gpu_run")
    for name in ("smollm2-135m", "llama3-8b-4layers"):
        check.step(f"equivalence_{name}", BUDGETS[f"equivalence_{name}"],
                   [*run, "equivalence", "--model", str(models / f"{name}.gguf"), "--dtype", "float32", *EQUIVALENCE[size]],
                   parse_json=True)
    check.step("lanes_smollm2-135m", BUDGETS["lanes_smollm2-135m"],
               [*run, "lanes", "--model", str(models / "smollm2-135m.gguf"), "--dtype", "bfloat16", *LANES[size]], parse_json=True)
    check.step("throughput_llama3-8b", BUDGETS["throughput_llama3-8b"],
               [*run, "throughput", "--model", str(models / "llama3-8b.gguf"), "--dtype", "bfloat16", *THROUGHPUT[size]],
               parse_json=True)
    return _finish(check, None)


# Seconds per step; their sum is the whole run's bound (8 minutes).
BUDGETS = {
    "install": 20, "imports": 20, "cuda_tests": 65, "interpreter_tests": 0, "kernels": 40, "models": 80,
    "equivalence_smollm2-135m": 40, "equivalence_llama3-8b-4layers": 45, "lanes_smollm2-135m": 30, "throughput_llama3-8b": 140,
}
# The dry mode runs the interpreter tests in the kernels' place (no GPU bandwidth to measure).
BUDGETS["interpreter_tests"] = BUDGETS["kernels"]
assert sum(v for k, v in BUDGETS.items() if k != "interpreter_tests") <= 8 * 60


def _has_gpu() -> bool:
    probe = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"
    try:
        return subprocess.run([sys.executable, "-c", probe], timeout=60, capture_output=True).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _finish(check: Check, error: str | None) -> int:
    steps = check.summary["steps"].values()
    failed = [s["step"] for s in steps if s.get("rc") not in (None, 0)]
    bad = [s["step"] for s in steps if isinstance(s.get("result"), dict) and s["result"].get("ok") is False]
    check.summary |= {"failed": failed + [b for b in bad if b not in failed], "error": error}
    (check.out / "summary.json").write_text(json.dumps(check.summary, indent=1))
    print(json.dumps({"gpu_check_summary": check.summary["mode"], "gpu": check.summary["gpu"], "failed": check.summary["failed"],
                      "error": error}), flush=True)
    return 1 if error or check.summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
