"""The command line against a scripted server in a thread: files, sweeps, plots, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadgen.cli import main
from loadgen.fake_server import FakeServer, Reply, ThreadedServer
from loadgen.records import read_jsonl
from loadgen.schema import check_result

FIXTURES = Path(__file__).parent / "fixtures" / "loadgen"
TOKENIZER = str(FIXTURES / "tokenizer.json")


@pytest.fixture
def served():
    fake = FakeServer(lambda body: Reply(status=500) if body["max_tokens"] == 3 else Reply(ttft_s=0.02, itl_s=0.01))
    with ThreadedServer(fake) as server:
        yield fake, server.base_url


def only(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_trace_replay_writes_a_valid_result(served, tmp_path, capsys):
    fake, url = served
    argv = [
        "--base-url",
        url,
        "--tokenizer",
        TOKENIZER,
        "--dataset-name",
        "azure",
        "--dataset-path",
        str(FIXTURES / "azure_small.csv"),
        "--use-trace-timestamps",
        "--trace-time-scale",
        "0.02",
        "--max-input-len",
        "64",
        "--max-output-len",
        "4",
        "--ignore-eos",
        "--goodput",
        "ttft:1000",
        "--save-result",
        "--result-dir",
        str(tmp_path),
        "--label",
        "neo",
        "--disable-tqdm",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Serving Benchmark Result" in out and "Request goodput" in out
    result = json.loads(only(tmp_path, "neo-trace-fake-model-*.json").read_text())
    assert check_result(result) == []
    # six rows; the fifth row (0 tokens in the trace) asks for 1 token, the sixth for 3: a scripted 500
    assert (result["num_prompts"], result["completed"], result["failed"]) == (6, 5, 1)
    assert result["request_rate"] == "trace" and result["label"] == "neo" and result["ignore_eos"] is True
    assert result["total_input_tokens"] == 64 * 3 + 64 + 1  # prompts 374, 396, 879 -> 64; 91 -> 64; 0 -> 1
    assert result["total_output_tokens"] == 4 * 4 + 1
    records = read_jsonl(only(tmp_path, "*.jsonl"))
    assert [r.request_id for r in records] == list(range(6))
    assert [round(r.scheduled_s, 6) for r in records] == [0.0, 0.086292, 0.090838, 0.094209, 0.106388, 0.296388]
    assert all(body["ignore_eos"] for body in fake.bodies)
    assert [len(b["prompt"].split()) for b in fake.bodies if b["max_tokens"] == 4][:1] == [64]


def test_sweep_draws_the_curve(served, tmp_path, capsys):
    fake, url = served
    argv = [
        "--base-url",
        url,
        "--prompt-format",
        "ids",
        "--vocab-size",
        "500",
        "--dataset-name",
        "lengths",
        "--dataset-path",
        str(FIXTURES / "lengths_small.json"),
        "--fixed-output-len",
        "2",
        "--request-rates",
        "20,40",
        "--result-dir",
        str(tmp_path),
        "--result-filename",
        "neo.json",
        "--save-result",
        "--disable-tqdm",
    ]
    assert main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "neo-20qps.json",
        "neo-20qps.jsonl",
        "neo-40qps.json",
        "neo-40qps.jsonl",
        "neo-sweep.json",
        "neo-sweep.png",
    ]
    document = json.loads((tmp_path / "neo-sweep.json").read_text())
    assert [run["request_rate"] for run in document["runs"]] == [20.0, 40.0]
    assert all(run["completed"] == 4 and check_result(run) == [] for run in document["runs"])
    assert len(fake.bodies) == 8 and all(isinstance(b["prompt"], list) for b in fake.bodies)
    assert [len(b["prompt"]) for b in fake.bodies[:4]] == [269, 12, 40, 1]
    out = capsys.readouterr().out
    assert "sweep: openai" in out

    compare_png = tmp_path / "cmp.png"
    assert (
        main(
            [
                "--compare",
                str(tmp_path / "neo-sweep.json"),
                str(tmp_path / "neo-20qps.json"),
                "--plot-path",
                str(compare_png),
            ]
        )
        == 0
    )
    assert compare_png.read_bytes()[:4] == b"\x89PNG"


def test_concurrency_and_chat(served, tmp_path):
    fake, url = served
    argv = [
        "--base-url",
        url,
        "--endpoint",
        "/v1/chat/completions",
        "--tokenizer",
        TOKENIZER,
        "--dataset-name",
        "synthetic",
        "--num-prompts",
        "6",
        "--input-len",
        "20",
        "--output-len",
        "5",
        "--max-concurrency",
        "2",
        "--save-result",
        "--result-dir",
        str(tmp_path),
        "--disable-tqdm",
        "--metadata",
        "system=fake",
        "--save-detailed",
    ]
    assert main(argv) == 0
    result = json.loads(only(tmp_path, "openai-chat-infqps-concurrency2-*.json").read_text())
    assert result["completed"] == 6 and result["system"] == "fake" and result["max_concurrency"] == 2
    assert fake.max_in_flight == 2 and all("messages" in b for b in fake.bodies)
    assert result["output_lens"] == [5] * 6 and len(result["itls"]) == 6


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--endpoint", "/v1/chat/completions", "--prompt-format", "ids"], "completions only"),
        (["--dataset-name", "azure"], "--dataset-path"),
        (["--request-rates", "1,x"], "comma-separated"),
        (["--goodput", "ttft"], "bad SLO"),
        (["--use-trace-timestamps", "--request-rates", "1,2"], "cannot be combined"),
    ],
)
def test_usage_errors(argv, message, capsys):
    assert main(["--base-url", "http://127.0.0.1:9", "--prompt-format", "ids", "--vocab-size", "500", *argv]) == 2
    assert message in capsys.readouterr().err


def test_unreachable_server_is_reported(unused_tcp_port, capsys):
    argv = [
        "--base-url",
        f"http://127.0.0.1:{unused_tcp_port}",
        "--prompt-format",
        "ids",
        "--vocab-size",
        "500",
        "--num-prompts",
        "2",
    ]
    assert main(argv) == 2
    assert "pass --model" in capsys.readouterr().err
    assert main([*argv, "--model", "m", "--disable-tqdm"]) == 1  # every request failed, each with its error
    out = capsys.readouterr().out
    assert "Failed requests:                         2" in out and "     2  ClientConnectorError" in out


def test_neo_async_bench_serve_dispatches(served, tmp_path):
    from neo_async.cli import main as neo_main

    _, url = served
    argv = [
        "bench",
        "serve",
        "--base-url",
        url,
        "--prompt-format",
        "ids",
        "--vocab-size",
        "500",
        "--num-prompts",
        "2",
        "--input-len",
        "5",
        "--output-len",
        "2",
        "--disable-tqdm",
        "--save-result",
        "--result-dir",
        str(tmp_path),
        "--result-filename",
        "r.json",
    ]
    assert neo_main(argv) == 0
    assert json.loads((tmp_path / "r.json").read_text())["completed"] == 2


def test_logging_configuration_is_restored(capsys):
    import structlog

    before = structlog.get_config()
    assert main(["--base-url", "http://127.0.0.1:9", "--dataset-name", "azure"]) == 2
    assert structlog.get_config() == before
