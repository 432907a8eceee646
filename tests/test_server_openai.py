"""The real server with the embedded model, driven by the official `openai` client."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.server_fixtures import ServerProcess, http, metric, metrics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "SmolLM2-135M-Instruct"
PROMPT = "The capital of France is"
PROMPT_IDS = [504, 3575, 282, 4649, 314]  # PROMPT, by the embedded model's tokenizer
CHAT = [{"role": "user", "content": "Name three colors."}]
NO_EOS = {"ignore_eos": True}  # vLLM's extra field: generate exactly max_tokens


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(tmp_path_factory.mktemp("server") / "server.log")
    yield proc
    assert proc.stop() == 0, proc.log_text()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
async def async_client(server):
    async with openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def greedy(client, prompt=PROMPT, max_tokens=16, **kwargs):
    return client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, extra_body=NO_EOS, **kwargs)


def test_models_and_health(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    status, _, body = http("GET", server.base_url + "/health")
    assert status == 200 and b"ok" in body


def test_completion_has_text_and_usage(client):
    out = greedy(client, max_tokens=8)
    assert out.object == "text_completion" and out.model == MODEL
    [choice] = out.choices
    assert choice.index == 0 and choice.text and choice.finish_reason == "length"
    assert out.usage.prompt_tokens == len(PROMPT_IDS)
    assert out.usage.completion_tokens == 8
    assert out.usage.total_tokens == len(PROMPT_IDS) + 8


@pytest.mark.parametrize("max_tokens", [1, 5])
def test_max_tokens_is_exact(client, max_tokens):
    out = greedy(client, max_tokens=max_tokens, logprobs=0)
    assert out.usage.completion_tokens == max_tokens
    assert out.choices[0].finish_reason == "length"
    assert len(out.choices[0].logprobs.tokens) == max_tokens


def test_streaming_completion_matches_non_streaming(client):
    reference = greedy(client, max_tokens=12).choices[0].text
    chunks = list(greedy(client, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == reference
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_without_usage_sends_no_usage_chunk(client):
    chunks = list(greedy(client, max_tokens=4, stream=True))
    assert chunks and all(c.choices and c.usage is None for c in chunks)


def test_token_id_prompt_equals_text_prompt(client):
    by_text = greedy(client, max_tokens=10)
    by_ids = greedy(client, prompt=PROMPT_IDS, max_tokens=10)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(PROMPT_IDS)


def test_stop_string_cuts_the_text(client):
    full = greedy(client, max_tokens=24).choices[0].text
    # a 3-character piece whose first occurrence is past the start: the cut must land there
    index = next(i for i in range(len(full) // 2, 0, -1) if full[i : i + 3].strip() and full.find(full[i : i + 3]) == i)
    stop = full[index : index + 3]
    out = greedy(client, max_tokens=24, stop=[stop])
    assert out.choices[0].text == full[:index]
    assert out.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in greedy(client, max_tokens=24, stop=stop, stream=True))
    assert streamed == full[:index]


def test_seed_reproduces_a_sampled_completion(client):
    def sample(seed):
        return client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=16, temperature=1.0, seed=seed, extra_body=NO_EOS
        ).choices[0].text

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


def test_n_choices_completion(client):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, n=3, temperature=1.0, seed=7, extra_body=NO_EOS)
    assert sorted(c.index for c in out.choices) == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in out.choices)
    assert out.usage.completion_tokens == 18 and out.usage.prompt_tokens == len(PROMPT_IDS)
    assert len({c.text for c in out.choices}) > 1  # seed + j per sample


def test_batch_of_prompts_times_n(client):
    other = greedy(client, prompt="Once upon a time", max_tokens=1).usage.prompt_tokens
    out = greedy(client, prompt=[PROMPT, "Once upon a time"], max_tokens=4, n=2)
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]  # prompt index * n + sample
    assert all(c.text and c.finish_reason == "length" for c in out.choices)
    assert out.usage.prompt_tokens == len(PROMPT_IDS) + other  # each prompt counted once
    assert out.usage.completion_tokens == 16


def test_chat_completion(client):
    out = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, temperature=0)
    assert out.object == "chat.completion"
    [choice] = out.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 5 and 1 <= out.usage.completion_tokens <= 24
    if choice.finish_reason == "length":
        assert out.usage.completion_tokens == 24


def test_chat_streaming_matches_non_streaming(client):
    reference = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=16, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == reference.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == reference.usage.prompt_tokens


def test_chat_max_completion_tokens_and_stop(client):
    out = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_completion_tokens=3, temperature=0, extra_body=NO_EOS
    )
    assert out.usage.completion_tokens == 3 and out.choices[0].finish_reason == "length"


def test_chat_n_streaming(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=5, n=2, temperature=1.0, seed=3, stream=True, extra_body=NO_EOS
    )
    finishes = {}
    texts = {0: "", 1: ""}
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert finishes == {0: "length", 1: "length"}
    assert texts[0] and texts[1]


def test_completion_logprobs(client):
    out = greedy(client, max_tokens=5, logprobs=3)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert all(x <= 0 for x in lp.token_logprobs)
    assert all(len(top) <= 3 for top in lp.top_logprobs)
    # greedy: the chosen token is the most likely one
    for token, chosen, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert max(top.values()) == pytest.approx(chosen, abs=1e-4) and token in top
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0


def test_chat_logprobs(client):
    out = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 2
        assert bytes(item.bytes).decode("utf-8", errors="replace") == item.token


async def test_32_concurrent_streams_get_every_token(async_client):
    async def one(i):
        stream = await async_client.completions.create(
            model=MODEL, prompt=f"{i} + {i} =", max_tokens=8, temperature=1.0, seed=i, logprobs=0,
            stream=True, stream_options={"include_usage": True}, extra_body=NO_EOS,
        )  # fmt: skip
        num_tokens, finish, usage = 0, None, None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                num_tokens += len(c.logprobs.tokens) if c.logprobs else 0
                finish = c.finish_reason or finish
        return num_tokens, finish, usage.completion_tokens

    results = await asyncio.gather(*(one(i) for i in range(32)))
    assert results == [(8, "length", 8)] * 32


def test_metrics_after_traffic(client, server):
    greedy(client, max_tokens=3)
    samples = metrics(server.base_url)
    names = {name for name, _ in samples}
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:inter_token_latency_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
        "neo:iteration_seconds_count",
        "neo:batch_size_count",
        "neo:preemptions_total",
        "neo:host_kv_usage_perc",
        "neo:num_requests_on_host",
        "neo:pipelined_iterations_total",
    ):
        assert name in names, name
    assert samples[("vllm:generation_tokens_total", ())] >= 3
    assert samples[("vllm:time_to_first_token_seconds_count", ())] >= 1
    assert samples[("neo:iteration_seconds_count", ())] >= 3
    assert samples[("vllm:request_success_total", (("finished_reason", "length"),))] >= 1
    assert samples[("neo:kv_blocks_total", (("location", "device"),))] > 0
    assert metric(server.base_url, "vllm:num_requests_running") == 0
