"""Server metrics on their own registry, from EngineStats, StepStats and request timings."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from neo_async.engine_stats import EngineStats, StepStats
from neo_async.server.metrics import RequestTimes, ServerMetrics

STATS = EngineStats(
    num_running=3,
    num_waiting=2,
    num_device_blocks_total=100,
    num_device_blocks_used=25,
    num_host_blocks_total=400,
    num_host_blocks_used=100,
    num_requests_on_host=4,
    num_preemptions_total=7,
    num_prompt_tokens_total=1000,
    num_generation_tokens_total=500,
    num_iterations_total=60,
)


def samples(metrics: ServerMetrics) -> dict:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            assert s.labels.get("model_name") == "m", s
            out[(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "model_name")))] = s.value
    return out


def test_engine_snapshot_is_read_at_scrape_time():
    current = [STATS]
    m = ServerMetrics("m", lambda: current[0])
    s = samples(m)
    assert s[("vllm:num_requests_running", ())] == 3
    assert s[("vllm:num_requests_waiting", ())] == 2
    assert s[("vllm:kv_cache_usage_perc", ())] == pytest.approx(0.25)
    assert s[("neo:host_kv_usage_perc", ())] == pytest.approx(0.25)
    assert s[("neo:num_requests_on_host", ())] == 4
    assert s[("neo:kv_blocks_used", (("location", "device"),))] == 25
    assert s[("neo:kv_blocks_used", (("location", "host"),))] == 100
    assert s[("neo:kv_blocks_total", (("location", "host"),))] == 400
    assert s[("vllm:prompt_tokens_total", ())] == 1000
    assert s[("vllm:generation_tokens_total", ())] == 500
    assert s[("neo:preemptions_total", ())] == 7
    assert s[("neo:iterations_total", ())] == 60
    current[0] = EngineStats(0, 0, 100, 0, 0, 0, 0, 7, 1000, 500, 60)
    assert samples(m)[("vllm:num_requests_running", ())] == 0


def test_steps_feed_histograms_and_counters():
    m = ServerMetrics("m", lambda: STATS)
    before = samples(m)
    assert before[("neo:swaps_total", (("direction", "in"),))] == 0  # exported before any step
    m.on_step(StepStats(0.02, 8, 40, 32, 8, 1, num_host_seqs=3, num_swapped_out=2, num_swapped_in=1, is_pipelined=True))
    m.on_step(StepStats(0.01, 4, 4, 0, 4, 0))
    s = samples(m)
    assert s[("neo:iteration_seconds_count", ())] == 2
    assert s[("neo:iteration_seconds_sum", ())] == pytest.approx(0.03)
    assert s[("neo:batch_size_sum", ())] == 12
    assert s[("neo:batched_tokens_sum", ())] == 44
    assert s[("neo:host_batch_size_sum", ())] == 3
    assert s[("neo:swaps_total", (("direction", "out"),))] == 2
    assert s[("neo:swaps_total", (("direction", "in"),))] == 1
    assert s[("neo:pipelined_iterations_total", ())] == 1
    assert s[("neo:prefill_tokens_total", ())] == 32


def test_request_latencies():
    m = ServerMetrics("m", lambda: STATS)
    times = RequestTimes(arrival=10.0)
    m.on_token(times, 10.5)
    m.on_token(times, 10.6)
    m.on_token(times, 10.8)
    m.on_finish(times, 10.8, "length", num_prompt_tokens=5, num_output_tokens=3)
    s = samples(m)
    assert s[("vllm:time_to_first_token_seconds_count", ())] == 1
    assert s[("vllm:time_to_first_token_seconds_sum", ())] == pytest.approx(0.5)
    assert s[("vllm:inter_token_latency_seconds_count", ())] == 2
    assert s[("vllm:inter_token_latency_seconds_sum", ())] == pytest.approx(0.3)
    assert s[("vllm:e2e_request_latency_seconds_sum", ())] == pytest.approx(0.8)
    assert s[("vllm:request_generation_tokens_sum", ())] == 3
    assert s[("vllm:request_success_total", (("finished_reason", "length"),))] == 1
    assert s[("vllm:request_success_total", (("finished_reason", "abort"),))] == 0


def test_two_apps_have_separate_registries():
    a, b = ServerMetrics("m", lambda: STATS), ServerMetrics("m", lambda: STATS)
    a.on_rejected("engine_overloaded")
    assert samples(a)[("neo:requests_rejected_total", (("code", "engine_overloaded"),))] == 1
    assert ("neo:requests_rejected_total", (("code", "engine_overloaded"),)) not in samples(b)


def test_prefix_cache_queries_hits_and_hits_by_pool():
    stats = EngineStats(
        1, 0, 100, 10, 400, 20, 1, 0, 3000, 50, 9,
        num_prefix_query_tokens_total=3000,
        num_prefix_hit_tokens_total={"device": 512, "host": 1024},
        num_demoted_blocks_total=6,
        num_prefix_copied_tokens_total=256,
    )
    s = samples(ServerMetrics("m", lambda: stats))
    assert s[("vllm:prefix_cache_queries_total", ())] == 3000
    assert s[("vllm:prefix_cache_hits_total", ())] == 1536
    assert s[("neo:prefix_cache_hits_total", (("location", "device"),))] == 512
    assert s[("neo:prefix_cache_hits_total", (("location", "host"),))] == 1024
    assert s[("neo:prefix_cache_demotions_total", ())] == 6
    assert s[("neo:prefix_cache_copied_tokens_total", ())] == 256
