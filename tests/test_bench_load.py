"""The load benchmark (bench/load.py) end to end on a tiny generated GGUF, and its start-up
timing's reading of the server's JSON log (bench/startup.py)."""

from __future__ import annotations

import json

from neo_async.bench import load, startup


def test_load_bench_on_a_tiny_synthetic_model(tmp_path, capsys):
    out = tmp_path / "load.json"
    load.main(["--synthetic", "tiny", "--dir", str(tmp_path), "--serve-starts", "0", "--repeats", "1",
               "--phases", "read,stream,load", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["phase"] for r in rows] == ["read", "stream", "load"]
    assert all(r["seconds"] > 0 for r in rows)
    assert all(rows[-1][key] >= 0 for key in ("dequant_s", "pack_s", "finish_s"))
    assert rows[-1]["pack_s"] <= rows[-1]["dequant_s"] + rows[-1]["finish_s"]
    assert not list(tmp_path.glob("*.gguf"))  # the generated file is deleted


def test_phase_columns_follow_the_start_up_order():
    rows = [{"repeat": "median", "ready": 2.0, "engine_built": 1.9, "server_listening": 0.3, "engine_imported": 1.2}]
    assert startup.phase_columns(rows) == ["repeat", "server_listening", "engine_imported", "engine_built", "ready"]
