"""Prometheus metrics of one server, on its own registry.

Three sources, one table each, so a new metric is one line:
- `ENGINE_GAUGES` / `ENGINE_COUNTERS`: read from `engine.stats()` (an EngineStats) at scrape
  time; cumulative counters come straight from the engine's own totals.
- `STEP_HISTOGRAMS` / `STEP_COUNTERS`: fed by the engine's step listener, one StepStats per
  iteration.
- per-request latencies and token counts, observed by the HTTP layer (`RequestMetrics`).

Names follow vLLM (`vllm:*`) where the meaning is the same and are `neo:*` otherwise; every
series carries a `model_name` label. Host-offload metrics read fields that are zero when no
host pool is configured, so they are always exported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from neo_async.engine_stats import EngineStats, StepStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (name, help, value from an EngineStats snapshot)
ENGINE_GAUGES: list[tuple[str, str, Callable[[EngineStats], float]]] = [
    ("vllm:num_requests_running", "Requests in the running batch.", lambda s: s.num_running),
    ("vllm:num_requests_waiting", "Requests waiting to be scheduled.", lambda s: s.num_waiting),
    ("vllm:kv_cache_usage_perc", "Fraction of device KV blocks in use (0-1).", lambda s: s.device_kv_usage),
    ("neo:host_kv_usage_perc", "Fraction of host KV blocks in use (0-1).", lambda s: s.host_kv_usage),
    ("neo:num_requests_on_host", "Requests whose KV cache lives on the host.", lambda s: s.num_requests_on_host),
]
# (location label, used blocks, total blocks) of each KV pool
KV_POOLS: list[tuple[str, Callable[[EngineStats], int], Callable[[EngineStats], int]]] = [
    ("device", lambda s: s.num_device_blocks_used, lambda s: s.num_device_blocks_total),
    ("host", lambda s: s.num_host_blocks_used, lambda s: s.num_host_blocks_total),
]
# (name without _total, help, cumulative value from an EngineStats snapshot)
ENGINE_COUNTERS: list[tuple[str, str, Callable[[EngineStats], float]]] = [
    ("vllm:prompt_tokens", "Prompt tokens processed.", lambda s: s.num_prompt_tokens_total),
    ("vllm:generation_tokens", "Tokens generated.", lambda s: s.num_generation_tokens_total),
    ("vllm:num_preemptions", "Requests preempted (KV freed, recomputed later).", lambda s: s.num_preemptions_total),
    ("neo:preemptions", "Requests preempted (KV freed, recomputed later).", lambda s: s.num_preemptions_total),
    ("neo:iterations", "Engine iterations run.", lambda s: s.num_iterations_total),
    ("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", lambda s: s.num_prefix_query_tokens_total),
    ("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache (not computed).", lambda s: s.num_prefix_hits_total),
    ("neo:prefix_cache_demotions", "Cached device KV blocks copied to the host pool when evicted.", lambda s: s.num_demoted_blocks_total),
    ("neo:prefix_cache_copied_tokens", "Host-pool hit tokens copied to the device pool for a device-placed prompt (the rest of the host hits are read in place).", lambda s: s.num_prefix_copied_tokens_total),
]

ITERATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512)
TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

ERROR_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)

# (name, help, buckets, value from a StepStats; None = nothing to observe)
STEP_HISTOGRAMS: list[tuple[str, str, tuple[float, ...], Callable[[StepStats], float | None]]] = [
    ("neo:iteration_seconds", "Wall time of one engine iteration.", ITERATION_BUCKETS, lambda s: s.iteration_s),
    ("neo:batch_size", "Requests run per iteration.", BATCH_BUCKETS, lambda s: s.num_seqs),
    ("neo:batched_tokens", "Tokens run per iteration (prefill + decode).", TOKEN_BUCKETS, lambda s: s.num_batched_tokens),
    ("neo:host_batch_size", "Requests per iteration whose KV lives on the host.", BATCH_BUCKETS, lambda s: s.num_host_seqs),
    (
        "neo:iteration_prediction_error",
        "|predicted - measured| / measured iteration time, for iterations the cost model priced.",
        ERROR_BUCKETS,
        lambda s: s.prediction_error,
    ),
]
# (name without _total, help, labels, increments from a StepStats: label values -> amount)
STEP_COUNTERS: list[tuple[str, str, tuple[str, ...], Callable[[StepStats], list[tuple[tuple[str, ...], float]]]]] = [
    (
        "neo:swaps",
        "Swaps between device and host KV, by direction (as counted by the engine).",
        ("direction",),
        lambda s: [(("out",), s.num_swapped_out), (("in",), s.num_swapped_in)],
    ),
    (
        "neo:swap_bytes",
        "KV bytes copied between device and host pools, by direction.",
        ("direction",),
        lambda s: [(("out",), s.num_swap_out_bytes), (("in",), s.num_swap_in_bytes)],
    ),
    ("neo:host_prefill_tokens", "Prompt tokens whose KV was written to the host pool.", (), lambda s: [((), s.num_host_prefill_tokens)]),
    ("neo:pipelined_iterations", "Iterations run in pipelined (two sub-batch) mode.", (), lambda s: [((), float(s.is_pipelined))]),
    ("neo:deferred_host_decodes", "Host decodes the policy left out of an iteration.", (), lambda s: [((), s.num_deferred)]),
    ("neo:prefill_tokens", "Prompt tokens run (recomputation included).", (), lambda s: [((), s.num_prefill_tokens)]),
]

TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0)
ITL_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
REQUEST_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)


class _EngineCollector:
    """Reads one EngineStats snapshot per scrape."""

    def __init__(self, model_name: str, stats: Callable[[], EngineStats]) -> None:
        self._model_name = model_name
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        label = [self._model_name]
        for name, doc, value in ENGINE_GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=["model_name"])
            gauge.add_metric(label, float(value(s)))
            yield gauge
        used = GaugeMetricFamily("neo:kv_blocks_used", "KV blocks in use, by location.", labels=["model_name", "location"])
        total = GaugeMetricFamily("neo:kv_blocks_total", "KV blocks in the pool, by location.", labels=["model_name", "location"])
        for location, num_used, num_total in KV_POOLS:
            used.add_metric([self._model_name, location], float(num_used(s)))
            total.add_metric([self._model_name, location], float(num_total(s)))
        yield used
        yield total
        hits = CounterMetricFamily(
            "neo:prefix_cache_hits", "Prompt tokens found in the prefix cache, by the pool that held them (host hits: read in place, or copied in: neo:prefix_cache_copied_tokens).", labels=["model_name", "location"]
        )
        for location in ("device", "host"):
            hits.add_metric([self._model_name, location], float(s.num_prefix_hit_tokens_total.get(location, 0)))
        yield hits
        for name, doc, value in ENGINE_COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=["model_name"])
            counter.add_metric(label, float(value(s)))
            yield counter


@dataclass
class RequestTimes:
    """Timestamps (monotonic seconds) of one engine request, as seen by the server."""

    arrival: float
    first_token: float | None = None
    last_token: float | None = None


class ServerMetrics:
    """All metrics of one app. Thread-safe: the step listener may run off the event loop."""

    def __init__(self, model_name: str, stats: Callable[[], EngineStats]) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        reg = self.registry
        self.registry.register(_EngineCollector(model_name, stats))

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, ["model_name"], buckets=buckets, registry=reg)

        self._step_hists = [
            (hist(name, doc, buckets).labels(model_name), value) for name, doc, buckets, value in STEP_HISTOGRAMS
        ]
        self._step_counters = [
            (Counter(name, doc, ["model_name", *labels], registry=reg), value) for name, doc, labels, value in STEP_COUNTERS
        ]
        idle = StepStats(0.0, 0, 0, 0, 0, 0)
        for counter, increments in self._step_counters:  # export zeros before the first step
            for labels, _ in increments(idle):
                counter.labels(model_name, *labels)

        self.ttft = hist("vllm:time_to_first_token_seconds", "Time to the first output token.", TTFT_BUCKETS).labels(model_name)
        self.itl = hist("vllm:inter_token_latency_seconds", "Gap between successive output chunks.", ITL_BUCKETS).labels(model_name)
        self.e2e = hist("vllm:e2e_request_latency_seconds", "Request latency, arrival to finish.", E2E_BUCKETS).labels(model_name)
        self.prompt_tokens = hist("vllm:request_prompt_tokens", "Prompt tokens per request.", REQUEST_TOKEN_BUCKETS).labels(model_name)
        self.generation_tokens = hist(
            "vllm:request_generation_tokens", "Generated tokens per request.", REQUEST_TOKEN_BUCKETS
        ).labels(model_name)
        self.success = Counter(
            "vllm:request_success", "Finished requests, by finish reason.", ["model_name", "finished_reason"], registry=reg
        )
        for reason in ("stop", "length", "abort"):
            self.success.labels(model_name, reason)
        self.rejected = Counter(
            "neo:requests_rejected", "Generation requests answered with an error status (no output sent), by error code.", ["model_name", "code"], registry=reg
        )

    # ------------------------------------------------------------------ engine side
    def on_step(self, step: StepStats) -> None:
        for child, value in self._step_hists:
            observed = value(step)
            if observed is not None:
                child.observe(observed)
        for counter, increments in self._step_counters:
            for labels, amount in increments(step):
                if amount:
                    counter.labels(self.model_name, *labels).inc(amount)

    # -------------------------------------------------------------------- HTTP side
    def on_token(self, times: RequestTimes, now: float) -> None:
        """A chunk with at least one new token arrived for one engine request."""
        if times.first_token is None:
            times.first_token = now
            self.ttft.observe(now - times.arrival)
        else:
            assert times.last_token is not None
            self.itl.observe(now - times.last_token)
        times.last_token = now

    def on_finish(self, times: RequestTimes, now: float, reason: str, num_prompt_tokens: int, num_output_tokens: int) -> None:
        self.e2e.observe(now - times.arrival)
        self.prompt_tokens.observe(num_prompt_tokens)
        self.generation_tokens.observe(num_output_tokens)
        self.success.labels(self.model_name, reason).inc()

    def on_rejected(self, code: str | None) -> None:
        self.rejected.labels(self.model_name, code or "unknown").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
