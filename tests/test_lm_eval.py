"""lm-evaluation-harness against the real server: its `local-completions` backend (echo +
logprobs over batched token-id prompts, the server's tokenizer through /tokenize) scores a small
multiple-choice task exactly as its `hf` backend does on the same weights in transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lm_eval  # noqa: F401 - the harness under test (a test extra)
import pytest

from neo_async.model.registry import default_model_path
from tests.server_fixtures import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

QUESTIONS = Path(__file__).parent / "fixtures" / "lm_eval_task" / "questions.json"
MAX_LOGLIKELIHOOD_DIFF = 1e-3  # nats, float32 on both sides

TASK = """task: neo_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {questions}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


def _lm_eval(model: str, model_args: str, task_dir: Path, out_dir: Path) -> dict[int, dict]:
    """Runs the lm_eval CLI; returns its logged samples by doc id."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args, "--batch_size", "4",
        "--tasks", "neo_mc", "--include_path", str(task_dir), "--output_path", str(out_dir), "--log_samples",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (samples,) = out_dir.rglob("samples_neo_mc_*.jsonl")
    return {d["doc_id"]: d for d in map(json.loads, samples.read_text().splitlines())}


def _loglikelihoods(sample: dict) -> list[float]:
    return [float(resp[0][0]) for resp in sample["resps"]]


def test_lm_eval_scores_like_transformers(tmp_path):
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "neo_mc.yaml").write_text(TASK.format(questions=QUESTIONS))
    server = ServerProcess(tmp_path / "server.log", "--dtype", "float32")
    try:
        ours = _lm_eval(
            "local-completions",
            f"base_url={server.base_url}/v1/completions,model=SmolLM2-135M-Instruct,tokenizer_backend=remote,num_concurrent=2",
            task_dir,
            tmp_path / "ours",
        )
    finally:
        assert server.stop() == 0, server.log_text()
    gguf = default_model_path()
    reference = _lm_eval("hf", f"pretrained={gguf.parent},gguf_file={gguf.name},dtype=float32", task_dir, tmp_path / "hf")
    assert ours.keys() == reference.keys() and len(ours) == 24
    for doc_id, sample in ours.items():
        ref = _loglikelihoods(reference[doc_id])
        got = _loglikelihoods(sample)
        assert len(got) == len(ref) == 4
        assert max(abs(a - b) for a, b in zip(got, ref)) <= MAX_LOGLIKELIHOOD_DIFF, (doc_id, got, ref)
        assert sample["acc"] == reference[doc_id]["acc"]
    accuracy = sum(s["acc"] for s in ours.values()) / len(ours)
    assert accuracy > 0.5  # the real model answers most of these; chance is 0.25
