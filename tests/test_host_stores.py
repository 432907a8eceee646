"""Prefill K/V stored into a host pool through a copy lane (`ThreadLane`: copies on a worker
thread, the CPU model of a GPU's copy stream): a layer's rows land in the pool by the next
layer's store, all of a step's by its last layer's, never before their copy is done; the
layer's attention meanwhile takes the chunk's own rows from its caller, so it never waits."""

from __future__ import annotations

import threading

import torch

from neo_async.runner.attention import KVCache
from neo_async.runner.host_stores import HostStores
from neo_async.runner.staging import ThreadLane

LAYERS, BLOCKS, KV_HEADS, BS, D = 3, 8, 2, 4, 16


class GatedLane(ThreadLane):
    """A ThreadLane whose copies wait until `gate` is set (a copy stream still busy)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def copy_to_host(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        self.submit(lambda: (self.gate.wait(), dst.copy_(src)))


class InferenceThreadLane(ThreadLane):
    """A ThreadLane for copies made inside a step (torch.inference_mode): its worker copies in
    inference mode too (an inference tensor may be written only there)."""

    def copy_to_host(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        self.submit(lambda: _copy_in_inference_mode(dst, src))


def _copy_in_inference_mode(dst: torch.Tensor, src: torch.Tensor) -> None:
    with torch.inference_mode():
        dst.copy_(src)


def _cache(dtype=torch.bfloat16) -> KVCache:
    return KVCache(LAYERS, BLOCKS, KV_HEADS, BS, D, dtype, torch.device("cpu"))


def _rows(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, KV_HEADS, D, generator=gen), torch.randn(n, KV_HEADS, D, generator=gen)


def test_a_layer_s_rows_land_by_the_next_store_and_all_by_the_last_layer():
    cache = _cache()
    lane = GatedLane()
    cache.host_stores = HostStores(lane, cache.k, cache.v)
    blocks, offsets = torch.tensor([3, 3, 5]), torch.tensor([2, 3, 0])
    rows = [_rows(3, layer) for layer in range(LAYERS)]
    cache.store(0, *rows[0], blocks, offsets)
    assert int(cache.k[0].count_nonzero()) == 0  # enqueued, not written

    second = threading.Thread(target=cache.store, args=(1, *rows[1], blocks, offsets))
    second.start()
    second.join(0.3)
    assert second.is_alive()  # layer 0's copy is not done: its scatter waits for it
    lane.gate.set()
    second.join(10)
    assert torch.equal(cache.k[0][blocks, :, offsets], rows[0][0].bfloat16())
    assert torch.equal(cache.v[0][blocks, :, offsets], rows[0][1].bfloat16())
    assert int(cache.k[1].count_nonzero()) == 0 and len(cache.host_stores.pending) == 1

    cache.store(LAYERS - 1, *rows[2], blocks, offsets)  # the step's last layer
    assert cache.host_stores.pending == []
    for layer in (1, 2):
        assert torch.equal(cache.k[layer][blocks, :, offsets], rows[layer][0].bfloat16())
        assert torch.equal(cache.v[layer][blocks, :, offsets], rows[layer][1].bfloat16())
    lane.close()


def test_cached_prefix_prefill_takes_its_own_rows_from_the_caller_and_never_waits():
    """A chunk at positions 5..9 over a 5-token prefix: the prefix from the pool, the chunk's
    rows (still on their way to the pool) from the caller; equal to the attention over the
    whole stored context, and to float64."""
    cache = _cache(torch.float32)
    gen = torch.Generator().manual_seed(4)
    blocks = torch.tensor([6, 1, 4])
    k_prefix, v_prefix = _rows(5, 9)
    positions = torch.arange(10)
    cache.store(0, k_prefix, v_prefix, blocks[positions[:5] // BS], positions[:5] % BS)  # an earlier step, at once
    lane = GatedLane()
    cache.host_stores = HostStores(lane, cache.k, cache.v)
    q = torch.randn(5, 2 * KV_HEADS, D, generator=gen)
    k_new, v_new = _rows(5, 10)
    cache.store(0, k_new, v_new, blocks[positions[5:] // BS], positions[5:] % BS)  # its copy held back
    out = cache.prefill(0, q, blocks, 5, 10, D**-0.5, k_new=k_new, v_new=v_new)  # returns: no wait

    k_all = torch.cat([k_prefix, k_new]).transpose(0, 1).double()
    v_all = torch.cat([v_prefix, v_new]).transpose(0, 1).double()
    kh, vh = k_all.repeat_interleave(2, 0), v_all.repeat_interleave(2, 0)  # [Hq, 10, D]
    scores = torch.einsum("thd,hnd->htn", q.double(), kh) * D**-0.5
    scores.masked_fill_(torch.arange(10).view(1, 1, -1) > torch.arange(5, 10).view(1, -1, 1), float("-inf"))
    expected = torch.einsum("htn,hnd->thd", torch.softmax(scores, -1), vh)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)
    lane.gate.set()
    whole = cache.prefill(0, q, blocks, 5, 10, D**-0.5)  # the whole context from the pool: settles first
    torch.testing.assert_close(whole, out, rtol=0, atol=1e-6)
    lane.close()


def test_engines_storing_host_prefills_through_a_copy_lane_give_the_same_tokens():
    """Host prefills chunked over several steps (each later chunk attends to a cached prefix
    in the host pool), swaps and host decodes, with every host-pool store deferred through
    an asynchronous lane as on a GPU: the same float32 greedy tokens as stores made at once."""
    from neo_async.config import Config
    from neo_async.engine import Engine
    from neo_async.sampling_params import SamplingParams

    gen = torch.Generator().manual_seed(77)
    prompts = [torch.randint(100, 40000, (n,), generator=gen).tolist() for n in (70, 20, 90, 45)]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    base = dict(dtype="float32", block_size=16, max_num_batched_tokens=32, max_num_seqs=8, cost_tables="none")
    results = []
    for deferred in (False, True):
        for offload, device_tokens in (("full", 32), ("neo", 128)):
            engine = Engine(Config().override(**base, offload=offload, device_kv_tokens=device_tokens,
                                              host_kv_tokens=4096))
            lane = InferenceThreadLane()
            if deferred:
                cache = engine.worker.host_cache
                cache.host_stores = HostStores(lane, cache.k, cache.v)
            requests = [engine.make_request(p, params, f"r{i}") for i, p in enumerate(prompts)]
            for request in requests:
                engine.add_request(request)
            while engine.has_unfinished:
                engine.step()
                engine.check()
                assert not deferred or engine.worker.host_cache.host_stores.pending == []  # settled by each step's end
            assert engine.stats().num_host_prefill_tokens_total > 0
            results.append([r.output_token_ids for r in requests])
            lane.close()
    assert results[:2] == results[2:]
