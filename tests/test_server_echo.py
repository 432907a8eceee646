"""The real server (embedded model, float32) through the official `openai` client: echo with
prompt logprobs, batched token-id prompts, vLLM's tokenizer routes, logit_bias, and a 400
naming the parameter for every OpenAI field we do not implement."""

from __future__ import annotations

import json
import math

import openai
import pytest

from tests.server_fixtures import ServerProcess, http

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "SmolLM2-135M-Instruct"
PROMPT = "The capital of France is"
PROMPT_IDS = [504, 3575, 282, 4649, 314]  # PROMPT, by the embedded model's tokenizer
CHAT = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(tmp_path_factory.mktemp("server") / "server.log", "--dtype", "float32")
    yield proc
    assert proc.stop() == 0, proc.log_text()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _echo(client, prompt, max_tokens=1, logprobs=1, **kwargs):
    return client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, echo=True, logprobs=logprobs, **kwargs
    )


def test_echo_covers_the_prompt_then_the_output(client):
    out = _echo(client, PROMPT, max_tokens=3, logprobs=2)
    choice = out.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(PROMPT_IDS) + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(isinstance(x, float) and x <= 0 for x in lp.token_logprobs[1:])
    assert all(len(top) == 2 for top in lp.top_logprobs[1:])
    assert choice.text.startswith(PROMPT) and "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert out.usage.prompt_tokens == len(PROMPT_IDS)


def test_echoed_prompt_logprob_equals_the_sampled_tokens(client):
    """The logprob of greedy token t after PROMPT, as sampled, and as the echoed last prompt token
    of PROMPT + t: one prefill row against another, both from the server."""
    sampled = client.completions.create(model=MODEL, prompt=PROMPT_IDS, max_tokens=1, temperature=0, logprobs=3)
    token_lp = sampled.choices[0].logprobs.token_logprobs[0]
    top = sampled.choices[0].logprobs.top_logprobs[0]
    token_ids = _tokenize(client, sampled.choices[0].text)
    assert len(token_ids) == 1
    echoed = _echo(client, PROMPT_IDS + token_ids, logprobs=3).choices[0].logprobs
    assert math.isclose(echoed.token_logprobs[len(PROMPT_IDS)], token_lp, abs_tol=1e-3)
    assert echoed.top_logprobs[len(PROMPT_IDS)].keys() == top.keys()


def _tokenize(client, text):
    status, _, body = http("POST", str(client.base_url).removesuffix("/v1/") + "/tokenize", {"prompt": text, "add_special_tokens": False})
    assert status == 200, body
    return json.loads(body)["tokens"]


def test_batched_token_prompts_echo_each(client):
    prompts = [PROMPT_IDS, PROMPT_IDS[:3], [1, 504, 3575]]
    out = _echo(client, prompts, max_tokens=1, logprobs=1)
    assert sorted(c.index for c in out.choices) == [0, 1, 2]
    for choice in out.choices:
        lp = choice.logprobs
        assert len(lp.tokens) == len(prompts[choice.index]) + 1
        assert lp.token_logprobs[0] is None
    # the shared prefix scores the same in every prompt
    first, second = (next(c for c in out.choices if c.index == i).logprobs for i in (0, 1))
    assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(first.token_logprobs[1:3], second.token_logprobs[1:3]))


def test_echo_without_logprobs_and_streamed(client):
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True)
    assert plain.choices[0].text.startswith(PROMPT) and plain.choices[0].logprobs is None
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=1, stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert len(tokens) == len(PROMPT_IDS) + 4


def test_tokenizer_routes_round_trip(server):
    base = server.base_url
    status, _, body = http("POST", base + "/tokenize", {"prompt": PROMPT, "return_token_strs": True})
    tok = json.loads(body)
    assert status == 200 and tok["tokens"] == PROMPT_IDS and tok["count"] == 5 and tok["max_model_len"] > 0
    assert len(tok["token_strs"]) == 5
    status, _, body = http("POST", base + "/detokenize", {"tokens": PROMPT_IDS})
    assert status == 200 and json.loads(body) == {"prompt": PROMPT}
    status, _, body = http("POST", base + "/tokenize", {"messages": CHAT})
    chat = json.loads(body)
    status2, _, body2 = http("POST", base + "/detokenize", {"tokens": chat["tokens"]})
    text = json.loads(body2)["prompt"]
    assert status == 200 and status2 == 200 and "Name three colors." in text and text.rstrip().endswith("assistant")
    status, _, body = http("GET", base + "/tokenizer_info")
    info = json.loads(body)
    assert status == 200 and info["eos_token"] and "{%" in info["chat_template"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": "a", "messages": CHAT}, "messages"),
        ("/detokenize", {"tokens": [10**9]}, "tokens"),
        ("/detokenize", {"tokens": "abc"}, "tokens"),
    ],
)
def test_tokenizer_routes_refuse_bad_input(server, path, body, param):
    status, _, raw = http("POST", server.base_url + path, body)
    assert status == 400 and json.loads(raw)["error"]["param"] == param, raw


def test_logit_bias_steers_greedy_choice(client):
    plain = client.completions.create(model=MODEL, prompt=PROMPT_IDS, max_tokens=1, temperature=0)
    forced = client.completions.create(model=MODEL, prompt=PROMPT_IDS, max_tokens=1, temperature=0, logit_bias={"35": 100})
    assert forced.choices[0].text != plain.choices[0].text
    assert _tokenize(client, forced.choices[0].text) == [35]


@pytest.mark.parametrize(
    ("endpoint", "extra", "param"),
    [
        ("completions", {"echo": True, "logprobs": 21}, "logprobs"),
        ("completions", {"prompt": [[1, 2], [10**9]]}, "prompt"),
        ("completions", {"prompt": []}, "prompt"),
        ("completions", {"suffix": "tail"}, "suffix"),
        ("completions", {"best_of": 3}, "best_of"),
        ("completions", {"logit_bias": {"abc": 1}}, "logit_bias"),
        ("completions", {"logit_bias": {"5": 101}}, "logit_bias"),
        ("completions", {"prompt_logprobs": 1}, "prompt_logprobs"),
        ("completions", {"guided_json": {"type": "object"}}, "guided_json"),
        ("chat", {"echo": True}, "echo"),
        ("chat", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("chat", {"tool_choice": "auto"}, "tool_choice"),
        ("chat", {"response_format": {"type": "json_object"}}, "response_format"),
        ("chat", {"reasoning_effort": "high"}, "reasoning_effort"),
        ("chat", {"store": True}, "store"),
        ("chat", {"modalities": ["text", "audio"]}, "modalities"),
        ("chat", {"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ("chat", {"service_tier": "flex"}, "service_tier"),
    ],
)
def test_unsupported_or_bad_parameters_are_400_naming_them(server, endpoint, extra, param):
    if endpoint == "completions":
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1, **extra}
    else:
        body = {"model": MODEL, "messages": CHAT, "max_tokens": 1, **extra}
    status, _, raw = http("POST", f"{server.base_url}/v1/{endpoint.replace('chat', 'chat/completions')}", body)
    assert status == 400, raw
    error = json.loads(raw)["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error


def test_no_op_values_of_unsupported_parameters_are_accepted(server):
    body = {
        "model": MODEL, "messages": CHAT, "max_tokens": 1, "tool_choice": "none", "response_format": {"type": "text"},
        "store": False, "service_tier": "auto", "modalities": ["text"], "parallel_tool_calls": False, "user": "u",
    }
    status, _, raw = http("POST", server.base_url + "/v1/chat/completions", body)
    assert status == 200, raw
