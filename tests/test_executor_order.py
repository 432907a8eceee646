"""The order of a sequential step's work per layer: the host decodes' inputs are staged before
the device attention is enqueued (on a GPU their copies then wait for `pre` only, so host
attention overlaps the device's), and the step's tokens are those of a device-only run."""

from __future__ import annotations

import torch

from neo_async.config import Config
from neo_async.engine import Engine
from neo_async.sampling_params import SamplingParams
from tests.model_factory import VOCAB_SIZE, write_random_checkpoint


def test_host_inputs_are_staged_before_device_attention(tmp_path):
    write_random_checkpoint(tmp_path, "llama_gqa", seed=21)
    config = Config().override(
        model=str(tmp_path), dtype="float32", block_size=16, offload="neo", device_kv_tokens=64, host_kv_tokens=2048,
        pipeline="off", cost_tables="none",
    )
    engine = Engine(config)
    ops = engine.worker.executor.ops
    calls: list[tuple[str, int]] = []
    host_job, device_attention = ops.host_job, ops.device_attention

    def record_host_job(layer, *args, **kwargs):
        calls.append(("host", layer))
        return host_job(layer, *args, **kwargs)

    def record_device_attention(layer, *args, **kwargs):
        calls.append(("device", layer))
        return device_attention(layer, *args, **kwargs)

    ops.host_job, ops.device_attention = record_host_job, record_device_attention
    gen = torch.Generator().manual_seed(3)
    for i in range(4):  # 30 tokens each: the 4-block device pool takes one, the host the rest
        prompt = torch.randint(3, VOCAB_SIZE, (30,), generator=gen).tolist()
        engine.add_request(engine.make_request(prompt, SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True), f"r{i}"))
    while engine.has_unfinished:
        calls.clear()
        engine.step()
        engine.check()
        for layer in {layer for kind, layer in calls if kind == "host"}:
            assert calls.index(("host", layer)) < calls.index(("device", layer)), calls
    assert engine.recorder.num_host_prefill_tokens_total > 0 and engine.recorder.num_pipelined_iterations_total == 0
