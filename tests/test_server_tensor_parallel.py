"""A real server with 2 tensor-parallel ranks (token ids in and out: `--skip-tokenizer-init`):
the official `openai` client streams greedy completions whose token ids are one rank's (an
in-process engine on the same weights); a rank
killed under the server turns /health unhealthy within seconds and later requests fail fast
instead of hanging."""

from __future__ import annotations

import time

import openai
import psutil
import pytest

from neo_async.config import Config
from neo_async.engine import Engine
from neo_async.sampling_params import SamplingParams
from tests.model_factory import write_random_checkpoint
from tests.server_fixtures import ServerProcess, http, wait_until

PROMPTS = [[5, 9, 33, 7, 81, 12, 40], [100, 3, 8, 200, 17]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_gqa")
    write_random_checkpoint(path, "llama_gqa", seed=13)
    return path


def _rank_processes(server: ServerProcess) -> list[psutil.Process]:
    children = psutil.Process(server.proc.pid).children()
    return [c for c in children if any("spawn_main" in part for part in c.cmdline())]


@pytest.mark.slow
def test_two_ranks_serve_the_tokens_of_one_and_a_dead_rank_is_reported(checkpoint, tmp_path):
    args = ["--model", str(checkpoint), "--dtype", "float32", "--tensor-parallel-size", "2", "--offload", "neo",
            "--device-kv-tokens", "64", "--host-kv-tokens", "2048", "--cost-tables", "none", "--host-threads", "1", "--skip-tokenizer-init"]
    server = ServerProcess(tmp_path / "server.log", *args)
    try:
        assert len(_rank_processes(server)) == 1
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)
        model = client.models.list().data[0].id
        served = []
        for prompt in PROMPTS:
            stream = client.completions.create(model=model, prompt=prompt, max_tokens=10,
                                               temperature=0.0, stream=True, extra_body={"ignore_eos": True})
            tokens = []
            for chunk in stream:
                tokens += [t for c in chunk.choices for t in (c.model_extra or {}).get("token_ids") or []]
            served.append(tokens)
        config = Config().override(model=str(checkpoint), dtype="float32", cost_tables="none", offload="off",
                                   skip_tokenizer_init=True)
        expected = [r.output_token_ids for r in _generate(Engine(config), SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))]
        assert served == expected and all(len(t) == 10 for t in served)

        _rank_processes(server)[0].kill()
        killed = time.monotonic()
        assert wait_until(lambda: http("GET", server.base_url + "/health")[0] == 503, timeout_s=10)
        assert time.monotonic() - killed < 10
        status, _, body = http("POST", server.base_url + "/v1/completions",
                               {"model": model, "prompt": PROMPTS[0], "max_tokens": 4}, timeout_s=30)
        assert status >= 500, body
    finally:
        server.stop()


def _generate(engine: Engine, params: SamplingParams):
    requests = [engine.make_request(p, params, f"r{i}") for i, p in enumerate(PROMPTS)]
    for r in requests:
        engine.add_request(r)
    while engine.has_unfinished:
        engine.step()
    return requests
