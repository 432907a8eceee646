"""Metric arithmetic on hand-built records, against hand-computed values."""

from __future__ import annotations

import pytest

from loadgen.metrics import error_counts, itls_s, percentile_key, summarize, tpot_s
from loadgen.records import RequestRecord, read_jsonl, resolve_num_output_tokens, write_jsonl
from loadgen.slo import meets_slos, parse_slos


def done(request_id, ttft, chunks, e2el, num_tokens, prompt_len=10):
    return RequestRecord(
        request_id=request_id,
        prompt_len=prompt_len,
        output_len=num_tokens,
        scheduled_s=0.0,
        is_sent=True,
        success=True,
        sent_s=0.0,
        ttft_s=ttft,
        e2el_s=e2el,
        chunk_times_s=chunks,
        num_output_tokens=num_tokens,
    )


def failed(request_id, error="HTTP 500: boom"):
    return RequestRecord(request_id=request_id, prompt_len=7, output_len=4, scheduled_s=0.0, is_sent=True, error=error)


def unsent(request_id):
    return RequestRecord(request_id=request_id, prompt_len=7, output_len=4, scheduled_s=9.0, error="not sent")


@pytest.fixture
def records():
    return [
        # A: 4 tokens; TTFT 0.2, chunks at .2 .3 .4 .5 -> ITL .1 x3, TPOT (0.5-0.2)/3 = 0.1
        done(0, 0.2, [0.2, 0.3, 0.4, 0.5], 0.5, 4, prompt_len=100),
        # B: 3 tokens; TTFT 0.4, chunks .4 .6 1.0 -> ITL .2 .4, TPOT (1.0-0.4)/2 = 0.3
        done(1, 0.4, [0.4, 0.6, 1.0], 1.0, 3, prompt_len=50),
        # C: 1 token; TTFT = E2E = 0.1, no TPOT, no ITL
        done(2, 0.1, [0.1], 0.1, 1, prompt_len=20),
        failed(3),
        unsent(4),
    ]


def test_per_request_metrics(records):
    assert tpot_s(records[0]) == pytest.approx(0.1)
    assert tpot_s(records[1]) == pytest.approx(0.3)
    assert tpot_s(records[2]) is None
    assert itls_s(records[1]) == pytest.approx([0.2, 0.4])


def test_summary_counts_and_throughput(records):
    s = summarize(records, duration_s=2.0)
    assert (s["num_prompts"], s["num_sent"], s["num_unsent"], s["completed"], s["failed"]) == (5, 4, 1, 3, 1)
    assert s["total_input_tokens"] == 170  # completed only: 100 + 50 + 20
    assert s["total_output_tokens"] == 8
    assert s["request_throughput"] == pytest.approx(1.5)
    assert s["output_throughput"] == pytest.approx(4.0)
    assert s["total_token_throughput"] == pytest.approx(89.0)
    assert s["errors"] == {"HTTP 500: boom": 1, "not sent": 1}


def test_summary_latency_statistics(records):
    s = summarize(records, duration_s=2.0)
    # TTFT samples 200, 400, 100 ms
    assert s["mean_ttft_ms"] == pytest.approx(700 / 3)
    assert s["median_ttft_ms"] == pytest.approx(200)
    assert s["p90_ttft_ms"] == pytest.approx(360)  # sorted 100 200 400, rank 1.8 -> 200 + 0.8 * 200
    assert s["p99_ttft_ms"] == pytest.approx(396)
    # TPOT samples 100, 300 ms
    assert s["mean_tpot_ms"] == pytest.approx(200)
    assert s["p99_tpot_ms"] == pytest.approx(298)
    # ITL pooled: 100 100 100 200 400 ms
    assert s["mean_itl_ms"] == pytest.approx(180)
    assert s["median_itl_ms"] == pytest.approx(100)
    assert s["p90_itl_ms"] == pytest.approx(320)  # rank 3.6 -> 200 + 0.6 * 200
    # E2E samples 500, 1000, 100 ms; per token 125, 333.3, 100
    assert s["mean_e2el_ms"] == pytest.approx(1600 / 3)
    assert s["median_e2el_ms"] == pytest.approx(500)
    assert s["mean_e2el_per_token_ms"] == pytest.approx((125 + 1000 / 3 + 100) / 3)
    assert s["std_tpot_ms"] == pytest.approx(100)


def test_extra_percentiles_and_keys(records):
    s = summarize(records, 1.0, percentiles=(50.0, 99.9))
    assert percentile_key(99.9) == "p99.9" and percentile_key(90.0) == "p90"
    assert "p99.9_ttft_ms" in s and "p50_ttft_ms" in s and "p90_ttft_ms" not in s
    assert s["p50_ttft_ms"] == s["median_ttft_ms"]


def test_goodput(records):
    # TTFT <= 250 ms: A (200) and C (100); TPOT <= 150: A (100), C (single token = 0)
    s = summarize(records, 2.0, slos={"ttft": 250.0, "tpot": 150.0})
    assert s["num_good"] == 2 and s["goodput"] == pytest.approx(1.0) == s["request_goodput"]
    s = summarize(records, 2.0, slos={"e2el": 1000.0})
    assert s["num_good"] == 3  # a limit is inclusive
    s = summarize(records, 2.0, slos={"e2el": 99.0})
    assert s["num_good"] == 0 and s["goodput"] == 0.0
    assert "goodput" not in summarize(records, 2.0)


def test_nothing_completed_gives_zeros():
    s = summarize([failed(0), failed(1, "ConnectionRefusedError")], 1.0)
    assert s["completed"] == 0 and s["failed"] == 2
    assert s["mean_ttft_ms"] == 0.0 and s["p99_e2el_ms"] == 0.0
    assert s["errors"] == {"HTTP 500: boom": 1, "ConnectionRefusedError": 1}


def test_error_counts_fold_the_tail():
    records = [failed(i, f"error {i % 25}") for i in range(50)]
    counts = error_counts(records)
    assert len(counts) == 21 and counts["(other errors)"] == 10 and sum(counts.values()) == 50


def test_slo_parsing():
    assert parse_slos(["ttft:500", "tpot:50.5", "e2el:2000"]) == {"ttft": 500.0, "tpot": 50.5, "e2el": 2000.0}
    assert parse_slos(None) == {}
    for bad in (["ttft"], ["itl:5"], ["ttft:x"], ["ttft:-1"]):
        with pytest.raises(ValueError, match="bad SLO"):
            parse_slos(bad)
    assert meets_slos({"ttft": 10.0}, {"ttft": 10.0}) and not meets_slos({"ttft": 10.0}, {"ttft": None})


def test_output_token_count_sources():
    record = done(0, 0.1, [0.1, 0.2, 0.3], 0.3, 0)
    record.generated_text = " a b c d"
    assert resolve_num_output_tokens(record, None) == 3  # one per text chunk
    assert resolve_num_output_tokens(record, lambda text: len(text.split())) == 4
    record.usage_completion_tokens = 5
    assert resolve_num_output_tokens(record, lambda text: 0) == 5


def test_records_round_trip_jsonl(tmp_path, records):
    path = tmp_path / "r.jsonl"
    write_jsonl(records, path)
    assert read_jsonl(path) == records
    assert len(path.read_text().splitlines()) == 5
