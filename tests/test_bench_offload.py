"""`neo-async bench offload` on a tiny workload: every mode runs the same prompts, the rows
are consistent, and the capped device pool really pushes `neo` and `full` onto the host."""

import json

from neo_async.bench import offload as bench_offload


def test_tiny_workload_writes_consistent_rows(tmp_path):
    out = tmp_path / "offload.json"
    argv = ["--num-prompts", "4", "--input-len", "60", "--output-lens", "6", "--device-kv-tokens", "96",
            "--host-kv-tokens", "2048", "--dtype", "float32", "--repeats", "3", "--output", str(out)]
    assert bench_offload.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["off", "neo", "full"]
    for row in rows:  # the median of three runs
        assert len(row["tok_s_runs"]) == 3 and sorted(row["tok_s_runs"])[1] == row["tok_s"]
    off, neo, full = rows
    assert off["ratio_vs_off"] == 1.0 and neo["ratio_vs_off"] == neo["tok_s"] / off["tok_s"]
    assert off["host_kv_blocks"] == 0 and off["host_prefill_tokens"] == 0
    assert neo["host_prefill_tokens"] > 0 and neo["preemptions"] == 0
    workload = bench_offload.make_workload(4, 60, 6, 49152, 0)
    assert full["host_prefill_tokens"] == sum(len(p) for p, _ in workload)
    assert all(r["tok_s"] > 0 for r in rows)


def test_pipeline_and_lane_lists_run_every_way(tmp_path):
    # `full`: every decode on the host, so a step always has host decodes to pipeline (how many
    # `neo` places there follows the tables measured on the machine)
    out = tmp_path / "offload.json"
    argv = ["--modes", "full", "--pipeline", "off,on", "--host-lanes", "rust,python", "--num-prompts", "4",
            "--input-len", "60", "--output-lens", "6", "--device-kv-tokens", "96", "--host-kv-tokens", "2048",
            "--dtype", "float32", "--output", str(out)]
    assert bench_offload.main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["host_lane_handoff_us"]) == {"rust", "python"}
    assert all(us > 0 for us in result["host_lane_handoff_us"].values())
    rows = result["rows"]
    assert [(r["mode"], r["pipeline"], r["host_lane"]) for r in rows] == [
        ("full", "off", "rust"), ("full", "off", "python"), ("full", "on", "rust"), ("full", "on", "python")]
    for row in rows:
        assert row["pipelined_steps"].startswith("0/") == (row["pipeline"] == "off")
    # the same greedy workload: the same number of tokens every way
    assert len({round(r["tok_s"] * r["seconds"]) for r in rows}) == 1
