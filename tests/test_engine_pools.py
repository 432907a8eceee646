"""Pool sizing by the engine: numbers of tokens, `auto` for either pool, and no host pool when
offload is off."""

import pytest

from neo_async.config import Config
from neo_async.engine import Engine
from tests.model_factory import write_random_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("pools")
    write_random_checkpoint(path, "llama_gqa", seed=3)
    return path


def _engine(path, **overrides) -> Engine:
    return Engine(Config().override(model=str(path), dtype="float32", block_size=16, **overrides))


def test_token_counts_become_blocks(checkpoint):
    engine = _engine(checkpoint, device_kv_tokens=256, host_kv_tokens=1024)
    assert (engine.device_pool.num_blocks, engine.host_pool.num_blocks) == (16, 64)
    assert engine.worker.host_cache is not None and engine.worker.host_cache.k.shape[1] == 64


def test_auto_sizes_both_pools_from_memory_within_the_context_cap(checkpoint):
    engine = _engine(checkpoint, device_kv_tokens="auto", host_kv_tokens="auto")
    # this model's KV is tiny, so memory allows more than 256 full 512-token contexts: the cap binds
    cap = 256 * 512 // 16
    assert engine.device_pool.num_blocks == cap and engine.host_pool.num_blocks == cap


def test_offload_off_has_no_host_pool(checkpoint):
    engine = _engine(checkpoint, offload="off", device_kv_tokens=256)
    assert engine.host_pool.num_blocks == 0 and engine.worker.host_cache is None
    assert engine.stats().num_host_blocks_total == 0
