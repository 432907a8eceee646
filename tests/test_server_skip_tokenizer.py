"""The real server with --skip-tokenizer-init on a checkpoint without tokenizer.json: token-id
prompts in, token ids out (`choices[i].token_ids`, empty `text`), streaming or not; text
prompts, chat and stop strings are 400s naming their parameter."""

from __future__ import annotations

import json

import aiohttp
import pytest
import torch

from neo_async import LLM, SamplingParams
from tests.model_factory import VOCAB_SIZE, write_random_checkpoint
from tests.server_fixtures import ServerProcess, http, sse_events

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

C = "/v1/completions"
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    write_random_checkpoint(path, "qwen2_bias", seed=17)
    (path / "tokenizer.json").unlink()
    return path


@pytest.fixture(scope="module")
def prompts():
    gen = torch.Generator().manual_seed(9)
    return [torch.randint(3, VOCAB_SIZE, (n,), generator=gen).tolist() for n in (6, 15)]


@pytest.fixture(scope="module")
def expected(checkpoint, prompts):
    """Greedy token ids of each prompt, from the embedding API on the same checkpoint."""
    llm = LLM(str(checkpoint), skip_tokenizer_init=True, dtype="float32", offload="off", device_threads=1)
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True))
    return [o.token_ids for o in outs]


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint):
    log = tmp_path_factory.mktemp("server") / "server.log"
    proc = ServerProcess(log, "--model", str(checkpoint), "--skip-tokenizer-init", "--dtype", "float32", "--offload", "off")
    yield proc
    assert proc.stop() == 0, proc.log_text()


def _body(prompt, **extra):
    return {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True, **extra}


def test_token_id_prompts_answer_token_ids(server, prompts, expected):
    status, _, raw = http("POST", server.base_url + C, _body(prompts))
    assert status == 200, raw
    out = json.loads(raw)
    assert [c["token_ids"] for c in out["choices"]] == expected
    assert all(c["text"] == "" and c["finish_reason"] == "length" for c in out["choices"])
    assert out["usage"]["prompt_tokens"] == sum(len(p) for p in prompts)
    assert out["usage"]["completion_tokens"] == len(expected) * MAX_TOKENS

    status, _, raw = http("POST", server.base_url + C, _body(prompts[1]))
    assert status == 200, raw
    assert [c["token_ids"] for c in json.loads(raw)["choices"]] == [expected[1]]


async def test_streaming_sends_each_chunk_token_ids(server, prompts, expected):
    got: dict[int, list[int]] = {0: [], 1: []}
    finish = {}
    async with aiohttp.ClientSession() as session:
        async with session.post(server.base_url + C, json=_body(prompts, stream=True)) as response:
            assert response.status == 200
            events = [e async for e in sse_events(response)]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        [choice] = event["choices"]
        assert choice["text"] == ""
        got[choice["index"]].extend(choice["token_ids"])
        if choice["finish_reason"]:
            finish[choice["index"]] = choice["finish_reason"]
    assert [got[0], got[1]] == expected
    assert finish == {0: "length", 1: "length"}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (C, _body("Hello there"), "prompt"),
        (C, _body(["Hello", "there"]), "prompt"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}, "messages"),
        (C, _body([5, 6, 7], stop=["x"]), "stop"),
    ],
    ids=["string-prompt", "string-list-prompt", "chat", "stop-strings"],
)
def test_what_needs_a_tokenizer_is_a_400_naming_the_parameter(server, path, body, param):
    status, _, raw = http("POST", server.base_url + path, body)
    assert status == 400, raw
    error = json.loads(raw)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_value"
    assert error["param"] == param
    assert "tokenizer" in error["message"]
    status, _, _ = http("GET", server.base_url + "/health")
    assert status == 200


async def test_the_load_generator_times_token_id_streams(server, prompts):
    """Without a tokenizer the chunks carry token ids and empty text: the load generator still
    sees the first token and every chunk (TTFT and inter-token times), not an empty stream."""
    from loadgen import client
    from loadgen.client import ClientConfig
    from loadgen.prompts import Prompt
    from loadgen.records import RequestRecord

    model = json.loads(http("GET", server.base_url + "/v1/models")[2])["data"][0]["id"]
    config = ClientConfig(base_url=server.base_url, endpoint=C, model=model, ignore_eos=True)
    record = RequestRecord(request_id=0, prompt_len=len(prompts[1]), output_len=MAX_TOKENS, scheduled_s=0.0)
    async with client.new_session(config) as session:
        await client.send(session, config, Prompt(prompts[1], len(prompts[1])), record, 0.0)
    assert record.success, record.error
    assert record.ttft_s is not None and 0 < record.ttft_s <= record.e2el_s
    assert len(record.chunk_times_s) == MAX_TOKENS
