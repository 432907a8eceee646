"""Result files, the validation of a summary, sweep documents and the load-latency plot."""

from __future__ import annotations

import json
import math
from datetime import datetime

import pytest

from loadgen import report, sweep
from loadgen.metrics import summarize
from loadgen.records import RequestRecord, read_jsonl
from loadgen.schema import check_result

PERCENTILES = (50.0, 90.0, 99.0)


def record(i, success=True):
    return RequestRecord(
        request_id=i,
        prompt_len=10,
        output_len=3,
        scheduled_s=0.0,
        is_sent=True,
        success=success,
        error="" if success else "HTTP 500: x",
        ttft_s=0.1 if success else None,
        e2el_s=0.3 if success else None,
        chunk_times_s=[0.1, 0.2, 0.3] if success else [],
        num_output_tokens=3 if success else 0,
        generated_text=" a b c" if success else "",
    )


def result_of(records, rate=2.0, **extra):
    settings = {
        "date": "20260101-000000",
        "label": "neo",
        "model_id": "m",
        "endpoint": "/v1/completions",
        "dataset_name": "synthetic",
        "request_rate": report.json_rate(rate),
    }
    return {**settings, **summarize(records, 1.5, PERCENTILES), **extra}


def test_valid_result_and_what_breaks_it():
    good = result_of([record(0), record(1), record(2, success=False)])
    assert check_result(good) == []
    assert check_result({**good, "completed": 3})[0].startswith("completed 3 + failed 1")
    broken = dict(good)
    del broken["p99_itl_ms"]
    assert check_result(broken) == ["p99_itl_ms missing or not a number >= 0"]
    assert check_result({**good, "duration": "long"})[0].startswith("shape:")
    assert "error counts" in check_result({**good, "errors": {}})[0]
    assert check_result({**good, "goodput_slos_ms": {"ttft": 1.0}}) == ["SLOs given but no goodput"]


def test_save_writes_summary_and_records(tmp_path):
    records = [record(0), record(1, success=False)]
    result = result_of(records)
    summary_path, records_path = report.save(result, records, tmp_path / "out", "run.json")
    assert json.loads(summary_path.read_text()) == result
    assert records_path.name == "run.jsonl" and read_jsonl(records_path) == records


def test_default_names():
    now = datetime(2026, 1, 2, 3, 4, 5)
    assert report.default_stem("neo", 2.0, None, "/models/smol.gguf", now) == "neo-2qps-smol.gguf-20260102-030405"
    assert report.default_stem("neo", math.inf, 8, "m", now) == "neo-infqps-concurrency8-m-20260102-030405"
    assert report.default_stem("neo", "trace", None, "m", now) == "neo-trace-m-20260102-030405"
    assert report.default_stem("neo", "sweep", 4, "m", now) == "neo-sweep-concurrency4-m-20260102-030405"
    assert report.json_rate(math.inf) == "inf" and report.json_rate(0.5) == 0.5


def test_detailed_arrays_follow_vllm():
    arrays = report.detailed_arrays([record(0), record(1, success=False)])
    assert arrays["input_lens"] == [10] and arrays["output_lens"] == [3] and arrays["ttfts"] == [0.1]
    assert arrays["itls"] == [pytest.approx([0.1, 0.1])] and arrays["errors"] == ["HTTP 500: x"]


def test_table_lists_every_metric():
    table = report.format_table(result_of([record(0)]), PERCENTILES)
    for line in ("Successful requests:", "Mean TTFT (ms):", "P99 TPOT (ms):", "P90 ITL (ms):", "Median E2EL (ms):"):
        assert line in table
    assert "P50" not in table  # the median row stands for it


def sweep_doc(label, latencies):
    results = [result_of([record(0)], rate=rate) for rate in latencies]
    for result, e2el in zip(results, latencies.values(), strict=True):
        result["median_e2el_ms"] = e2el
    return sweep.sweep_document(label, "m", results)


def test_sweep_document_orders_runs_and_drops_arrays(tmp_path):
    results = [{**result_of([record(0)], rate=r), "ttfts": [0.1]} for r in (4.0, 0.5, 2.0)]
    document = sweep.sweep_document("neo", "m", results)
    assert [run["request_rate"] for run in document["runs"]] == [0.5, 2.0, 4.0]
    assert all("ttfts" not in run for run in document["runs"])
    path = sweep.save_sweep(document, tmp_path / "s.json")
    assert sweep.load_sweep(path) == document
    single = tmp_path / "one.json"
    single.write_text(json.dumps(result_of([record(0)], rate=1.0)))
    assert [r["request_rate"] for r in sweep.load_sweep(single)["runs"]] == [1.0]
    table = sweep.format_sweep_table(document)
    assert table.splitlines()[2].split()[:3] == ["0.5", "1", "0"]


def test_rate_of_trace_runs_is_the_achieved_throughput():
    assert sweep.rate_value({"request_rate": "trace", "request_throughput": 1.25}) == 1.25
    assert sweep.rate_value({"request_rate": "inf"}) == math.inf


def test_plot_compare(tmp_path):
    from loadgen.plot import finite_points, plot_load_latency

    a = sweep_doc("neo", {0.5: 100.0, 1.0: 150.0, math.inf: 9.0})
    b = sweep_doc("device-only", {0.5: 120.0, 1.0: 400.0})
    assert finite_points(a, "median_e2el_ms") == ([0.5, 1.0], [100.0, 150.0])  # inf has no x
    path = plot_load_latency([a, b], tmp_path / "plots" / "cmp.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
