"""Our engine's logits and greedy tokens against transformers, same random weights, float32."""

from __future__ import annotations

import pytest
import torch

from neo_async.config import Config
from neo_async.engine import Engine
from neo_async.sampling_params import SamplingParams
from tests.model_factory import ARCHS, VOCAB_SIZE, write_random_checkpoint
from tests.seeds import stable_seed

NUM_DECODE_STEPS = 32
MAX_REL_ERR = 1e-4


def _engine(path, **overrides) -> Engine:
    base = dict(model=str(path), dtype="float32", device_kv_tokens=2048, block_size=16)
    return Engine(Config().override(**{**base, **overrides}))


def _run_keeping_logits(engine: Engine, prompts: list[list[int]], max_tokens: int) -> dict[str, tuple[list[int], list[torch.Tensor]]]:
    """Drive the three-line step by hand so that every sampling row's logits are kept."""
    engine.worker.executor.keep_logits = True
    ids = []
    for i, prompt in enumerate(prompts):
        request = engine.make_request(prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True), f"r{i}")
        engine.add_request(request)
        ids.append(request)
    logits: dict[str, list[torch.Tensor]] = {r.request_id: [] for r in ids}
    while engine.has_unfinished:
        plan = engine.scheduler.schedule()
        out = engine.worker.executor.execute(plan)
        for rid, row in (out.logits or {}).items():
            logits[rid].append(row)
        for request in engine.scheduler.update(plan, out):
            delta = engine.outputs.on_token(request, None)
            if delta is not None and delta.is_finished:
                engine.scheduler.finish(request.request_id)
        engine.check()
    return {r.request_id: (r.output_token_ids, logits[r.request_id]) for r in ids}


def _assert_greedy(tokens: list[int], ref: torch.Tensor) -> None:
    """Each token is transformers' argmax, or ties with it to float32 noise (random weights can
    put two logits within 1e-6 of each other)."""
    best = ref.max(-1).values
    chosen = ref.gather(1, torch.tensor(tokens[: len(ref)]).view(-1, 1)).squeeze(1)
    near_tie = (best - chosen) <= 1e-6 * ref.abs().max()
    agree = torch.tensor(tokens[: len(ref)]) == ref.argmax(-1)
    assert bool((agree | near_tie).all()), f"greedy tokens differ: {tokens} vs {ref.argmax(-1).tolist()}"
    assert agree.float().mean() >= 0.9


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_logits_and_greedy_tokens_match_transformers(tmp_path, arch):
    hf = write_random_checkpoint(tmp_path, arch, seed=stable_seed(arch, modulo=1000))
    prompt = torch.randint(3, VOCAB_SIZE, (23,), generator=torch.Generator().manual_seed(7)).tolist()
    engine = _engine(tmp_path)
    tokens, rows = _run_keeping_logits(engine, [prompt], NUM_DECODE_STEPS + 1)["r0"]
    assert len(rows) == NUM_DECODE_STEPS + 1
    full = torch.tensor([prompt + tokens[:-1]])
    with torch.no_grad():
        ref = hf(full).logits[0, len(prompt) - 1 :].float()  # [33, vocab]: prefill + 32 decode steps
    ours = torch.stack(rows).cpu()  # [33, vocab]; compared where transformers ran
    rel = (ours - ref).abs().max() / ref.abs().max()
    assert rel <= MAX_REL_ERR, f"{arch}: max relative error {rel:.2e}"
    _assert_greedy(tokens, ref)
    engine.check()
    assert engine.device_pool.num_used == 0


def test_batched_and_chunked_prefill_match_one_at_a_time(tmp_path):
    write_random_checkpoint(tmp_path, "llama_gqa", seed=3)
    gen = torch.Generator().manual_seed(11)
    prompts = [torch.randint(3, VOCAB_SIZE, (n,), generator=gen).tolist() for n in (5, 40, 17, 64, 33)]
    alone = []
    for prompt in prompts:
        alone.append(_run_keeping_logits(_engine(tmp_path), [prompt], 12)["r0"][0])
    # a small token budget splits prompts into chunks across iterations, mixed with decodes
    batched = _run_keeping_logits(_engine(tmp_path, max_num_batched_tokens=24, max_num_seqs=8), prompts, 12)
    assert [batched[f"r{i}"][0] for i in range(len(prompts))] == alone


def test_preemption_by_recompute_gives_the_same_tokens(tmp_path):
    write_random_checkpoint(tmp_path, "qwen2_bias", seed=5)
    gen = torch.Generator().manual_seed(13)
    prompts = [torch.randint(3, VOCAB_SIZE, (n,), generator=gen).tolist() for n in (30, 20, 25, 28)]
    roomy = _run_keeping_logits(_engine(tmp_path), prompts, 40)
    tight_engine = _engine(tmp_path, offload="off", device_kv_tokens=160, max_num_batched_tokens=64)  # 10 blocks for 4 x ~70 tokens
    tight = _run_keeping_logits(tight_engine, prompts, 40)
    assert tight_engine.scheduler.num_preemptions_total > 0
    assert {k: v[0] for k, v in tight.items()} == {k: v[0] for k, v in roomy.items()}
    tight_engine.check()
    assert tight_engine.device_pool.num_used == 0
