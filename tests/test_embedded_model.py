"""The embedded default model (SmolLM2-135M-Instruct, GGUF Q4_1) against transformers."""

from __future__ import annotations

import pytest
import torch

from neo_async import LLM, SamplingParams
from neo_async.model.registry import default_model_path
from neo_async.model.tokenizer import load_tokenizer

QUESTION = "What is the capital of France? Answer in one sentence."
TEXTS = [
    "Hello world",
    "  leading spaces and\ttabs\nnew lines\n\n",
    "Numbers 1234567 and 3.14159, unicode: héllo, 数字, emoji 🙂",
    "<|im_start|>user\nHi<|im_end|>\n",
    "def f(x):\n    return x**2  # comment",
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    import transformers

    path = default_model_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_tokenizer_matches_transformers(hf_tokenizer):
    ours = load_tokenizer()
    for text in TEXTS:
        assert ours.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False), text
        ids = ours.encode(text)
        assert ours.decode(ids, skip_special_tokens=False) == hf_tokenizer.decode(ids)
    messages = [{"role": "user", "content": QUESTION}]
    assert ours.apply_chat_template(messages) == hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.slow
def test_prompt_logits_match_transformers_on_the_gguf_weights():
    import transformers

    path = default_model_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    llm = LLM(dtype="float32", device_kv_tokens=1024)
    engine = llm.engine
    prompt = llm.tokenizer.encode(llm.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}]))
    engine.worker.executor.keep_logits = True
    engine.add_request(engine.make_request(prompt, SamplingParams(temperature=0.0, max_tokens=1), "p"))
    plan = engine.scheduler.schedule()
    ours = engine.worker.executor.execute(plan).logits["p"].cpu()  # [vocab]; compared where transformers ran
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0, -1].float()
    assert (ours - ref).abs().max() / ref.abs().max() < 1e-4


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_greedy_answer_names_paris(dtype):
    llm = LLM(dtype=dtype, device_kv_tokens=1024)
    out = llm.chat([{"role": "user", "content": QUESTION}], SamplingParams(temperature=0.0, max_tokens=32))[0]
    assert "Paris" in out.text
    assert out.finish_reason.value == "stop"
    llm.engine.check()
    assert llm.engine.device_pool.num_used == 0
