"""`neo-async bench prefix` end to end on the embedded model: a server per case, the load
generator's prefix_repetition workload, and the prefix-cache counters read from /metrics."""

import json

import pytest

from neo_async.bench.prefix import main


@pytest.mark.slow
def test_the_cache_shows_hits_only_when_it_is_on(tmp_path):
    code = main([
        "--modes", "off", "--request-rate", "2", "--num-prompts", "6", "--num-prefixes", "1", "--prefix-len", "64",
        "--suffix-len", "8", "--output-len", "2", "--dtype", "float32", "--serve-args", "--cost-tables none",
        "--out-dir", str(tmp_path),
    ])
    assert code == 0
    rows = {row["cache"]: row for row in json.loads((tmp_path / "summary.json").read_text())["rows"]}
    assert rows["off"]["hit_device"] == 0 and rows["on"]["hit_device"] > 0
    assert rows["off"]["failed"] == rows["on"]["failed"] == 0
    assert rows["on"]["hit_host"] == 0  # offload off: no host pool
