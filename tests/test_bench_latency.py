"""`neo-async bench latency`'s sustained rate: decided by the chosen p99 latency, with queueing
counted when the metric is per-token latency."""

from neo_async.bench.latency import METRICS, sustained_rate

# A saturated device-only server: TPOT stays flat while requests queue, so their per-token
# latency (end to end over output tokens) grows.
RUNS = {"runs": [
    {"request_rate": 1.0, "p99_tpot_ms": 50.0, "p99_e2el_per_token_ms": 60.0},
    {"request_rate": 2.0, "p99_tpot_ms": 60.0, "p99_e2el_per_token_ms": 90.0},
    {"request_rate": 4.0, "p99_tpot_ms": 65.0, "p99_e2el_per_token_ms": 400.0},
    {"request_rate": "inf", "p99_tpot_ms": 70.0, "p99_e2el_per_token_ms": None},
]}


def test_per_token_latency_sees_the_queue_tpot_does_not():
    assert sustained_rate(RUNS, METRICS["e2e_per_token"], 180.0) == 2.0
    assert sustained_rate(RUNS, METRICS["tpot"], 180.0) == float("inf")


def test_no_rate_within_the_limit_is_zero():
    assert sustained_rate(RUNS, METRICS["e2e_per_token"], 10.0) == 0.0
