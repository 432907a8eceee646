"""End to end: the real server (embedded model) as a subprocess, replayed by the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from loadgen.cli import main
from loadgen.client import ClientConfig, fetch_models, wait_until_ready
from loadgen.records import read_jsonl
from loadgen.schema import check_result
from neo_async.bench.processes import free_port, stop_process

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures" / "loadgen"
READY_TIMEOUT_S = 300.0
NUM_REQUESTS = 10
OUTPUT_LEN = 8


def azure_trace() -> Path:
    """The real conversation trace when present, else the small fixture in the repo."""
    for directory in (os.environ.get("NEO_TRACES_DIR"), Path(__file__).resolve().parents[2] / "shared" / "traces"):
        if directory and (Path(directory) / "azure_llm_2023_conv.csv").is_file():
            return Path(directory) / "azure_llm_2023_conv.csv"
    return FIXTURES / "azure_small.csv"


async def served_models(base_url: str) -> list[str]:
    async with aiohttp.ClientSession() as session:
        return await fetch_models(session, ClientConfig(base_url=base_url))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import neo_async.server.serve  # noqa: F401 - the child runs it: a broken import fails here, at once
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    command = [
        sys.executable,
        "-m",
        "neo_async",
        "serve",
        "--port",
        str(port),
        "--device-threads",
        "1",
        "--device-kv-tokens",
        "4096",
        "--log-level",
        "warning",
    ]
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])
    base_url = f"http://127.0.0.1:{port}"
    try:
        is_ready = asyncio.run(wait_until_ready(base_url, READY_TIMEOUT_S))
        if not is_ready or process.poll() is not None:
            pytest.fail(f"server did not come up:\n{log_path.read_text()[-3000:]}")
        yield base_url
    finally:
        stop_process(process)


def test_azure_replay_accounts_for_every_request(server, tmp_path):
    argv = [
        "--base-url",
        server,
        "--dataset-name",
        "azure",
        "--dataset-path",
        str(azure_trace()),
        "--num-prompts",
        str(NUM_REQUESTS),
        "--use-trace-timestamps",
        "--trace-time-scale",
        "0.2",
        "--max-input-len",
        "128",
        "--max-output-len",
        str(OUTPUT_LEN),
        "--ignore-eos",
        "--goodput",
        "e2el:600000",
        "--save-result",
        "--result-dir",
        str(tmp_path),
        "--result-filename",
        "azure.json",
        "--disable-tqdm",
    ]
    assert main(argv) == 0
    result = json.loads((tmp_path / "azure.json").read_text())
    assert check_result(result) == []
    num_rows = min(NUM_REQUESTS, 6) if azure_trace().parent == FIXTURES else NUM_REQUESTS
    assert result["num_prompts"] == num_rows
    assert (result["completed"], result["failed"], result["num_unsent"]) == (num_rows, 0, 0), result["errors"]
    assert result["model_id"] == asyncio.run(served_models(server))[0]
    records = read_jsonl(tmp_path / "azure.jsonl")
    assert len(records) == num_rows
    for record in records:
        # text prompts built with the embedded tokenizer have exactly the length the server counts
        assert record.usage_prompt_tokens == record.prompt_len
        assert record.num_output_tokens == min(OUTPUT_LEN, record.output_len) == len(record.chunk_times_s)
        assert 0 < record.ttft_s <= record.e2el_s
    assert result["total_output_tokens"] == sum(r.num_output_tokens for r in records)
    assert result["num_good"] == num_rows


def test_chat_and_id_prompts(server, tmp_path):
    chat = [
        "--base-url",
        server,
        "--endpoint",
        "/v1/chat/completions",
        "--dataset-name",
        "synthetic",
        "--num-prompts",
        "3",
        "--input-len",
        "24",
        "--output-len",
        "4",
        "--ignore-eos",
        "--max-concurrency",
        "2",
        "--save-result",
        "--result-dir",
        str(tmp_path),
        "--result-filename",
        "chat.json",
        "--disable-tqdm",
    ]
    assert main(chat) == 0
    result = json.loads((tmp_path / "chat.json").read_text())
    assert check_result(result) == [] and result["completed"] == 3 and result["total_output_tokens"] == 12
    ids = [
        "--base-url",
        server,
        "--prompt-format",
        "ids",
        "--dataset-name",
        "synthetic",
        "--num-prompts",
        "3",
        "--input-len",
        "30",
        "--output-len",
        "3",
        "--ignore-eos",
        "--save-result",
        "--result-dir",
        str(tmp_path),
        "--result-filename",
        "ids.json",
        "--disable-tqdm",
    ]
    assert main(ids) == 0
    records = read_jsonl(tmp_path / "ids.jsonl")
    assert [r.usage_prompt_tokens for r in records] == [30, 30, 30]
    assert [r.num_output_tokens for r in records] == [3, 3, 3]
