"""Workload loaders on small fixtures (always) and on the real traces (when present)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loadgen.datasets import DatasetOptions, load_dataset
from loadgen.datasets.azure import parse_timestamp_ns, read_azure
from loadgen.datasets.burstgpt import read_burstgpt
from loadgen.datasets.lengths import read_lengths
from loadgen.datasets.mooncake import read_mooncake
from loadgen.datasets.sharegpt import read_sharegpt
from loadgen.datasets.synthetic import uniform_lengths
from loadgen.tokenizer import load_tokenizer
from loadgen.workload import RequestSpec

FIXTURES = Path(__file__).parent / "fixtures" / "loadgen"


def traces_dir() -> Path | None:
    """NEO_TRACES_DIR, else ../shared/traces beside the checkout."""
    candidates = [os.environ.get("NEO_TRACES_DIR"), Path(__file__).resolve().parents[2] / "shared" / "traces"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def trace(name: str) -> Path:
    directory = traces_dir()
    if directory is None or not (directory / name).is_file():
        pytest.skip(f"trace {name} not found (set NEO_TRACES_DIR)")
    return directory / name


def lens(specs: list[RequestSpec]) -> list[tuple[int, int]]:
    return [(s.prompt_len, s.output_len) for s in specs]


# --- Azure ---------------------------------------------------------------------------------


def test_azure_fixture_rows_and_times():
    specs = read_azure(FIXTURES / "azure_small.csv")
    assert lens(specs) == [(374, 44), (396, 109), (879, 55), (91, 16), (1, 1), (20, 3)]
    expected = [0.0, 4.314579, 4.541877, 4.710427, 5.31941, 14.81941]
    assert [s.timestamp_s for s in specs] == pytest.approx(expected, abs=1e-9)


def test_azure_timestamp_keeps_seven_digits_and_crosses_midnight():
    a = parse_timestamp_ns("2023-11-16 23:59:59.9999999")
    b = parse_timestamp_ns("2023-11-17 00:00:00.0000001")
    assert b - a == 200
    assert parse_timestamp_ns("1970-01-01 00:00:01") == 1_000_000_000


def test_azure_window_count_and_caps():
    options = DatasetOptions(trace_start_s=4.5, trace_duration_s=1.0, max_input_len=500, max_output_len=50)
    specs = load_dataset("azure", FIXTURES / "azure_small.csv", options)
    # rows at 4.54, 4.71 and 5.32 s fall in [4.5, 5.5)
    assert lens(specs) == [(500, 50), (91, 16), (1, 1)]
    assert [s.timestamp_s for s in specs] == pytest.approx([4.541877, 4.710427, 5.31941])
    first_two = load_dataset("azure", FIXTURES / "azure_small.csv", DatasetOptions(num_prompts=2))
    assert lens(first_two) == [(374, 44), (396, 109)]


def test_azure_rejects_other_csv(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_azure(path)


@pytest.mark.parametrize(
    "name, num_rows, total_prompt, total_output, last",
    [
        ("azure_llm_2023_code.csv", 8819, 18059974, 245896, (549, 173, 3435.948056)),
        ("azure_llm_2023_conv.csv", 19366, 22361870, 4088665, (197, 183, 3501.721937)),
    ],
)
def test_azure_real_traces(name, num_rows, total_prompt, total_output, last):
    specs = read_azure(trace(name))
    assert len(specs) == num_rows
    # no row of these traces has a zero length, so the sums are the file's own
    assert sum(s.prompt_len for s in specs) == total_prompt
    assert sum(s.output_len for s in specs) == total_output
    assert specs[0].timestamp_s == 0.0
    assert (specs[-1].prompt_len, specs[-1].output_len) == last[:2]
    assert specs[-1].timestamp_s == pytest.approx(last[2], abs=1e-6)
    times = [s.timestamp_s for s in specs]
    assert times == sorted(times)


def test_azure_real_trace_first_rows():
    specs = read_azure(trace("azure_llm_2023_code.csv"))
    assert lens(specs[:3]) == [(4808, 10), (3180, 8), (110, 27)]
    assert [s.timestamp_s for s in specs[:3]] == pytest.approx([0.0, 0.052, 0.098189], abs=1e-9)


def test_azure_real_trace_window():
    options = DatasetOptions(trace_start_s=60.0, trace_duration_s=10.0)
    specs = load_dataset("azure", trace("azure_llm_2023_conv.csv"), options)
    assert specs and all(60.0 <= s.timestamp_s < 70.0 for s in specs)
    every = read_azure(trace("azure_llm_2023_conv.csv"))
    assert len(specs) == sum(60.0 <= s.timestamp_s < 70.0 for s in every)


# --- length lists ----------------------------------------------------------------------------


def test_lengths_fixture():
    specs = read_lengths(FIXTURES / "lengths_small.json")
    assert lens(specs) == [(269, 42), (12, 1), (40, 7), (1, 3)]
    assert [s.timestamp_s for s in specs] == [None, None, 2.5, None]


def test_lengths_bad_row(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"prompt": 3}]')
    with pytest.raises(ValueError, match="row 0"):
        read_lengths(path)


def test_lengths_real_paper_file():
    specs = read_lengths(trace("osc_lengths_llama2.json"))
    assert len(specs) == 2000
    assert sum(s.prompt_len for s in specs) == 745046
    assert sum(s.output_len for s in specs) == 90618
    assert lens(specs[:2]) == [(269, 42), (270, 52)] and lens(specs[-1:]) == [(417, 54)]


def test_shuffle_is_seeded_and_a_permutation():
    path = FIXTURES / "azure_small.csv"
    a = load_dataset("azure", path, DatasetOptions(is_shuffled=True, seed=3))
    b = load_dataset("azure", path, DatasetOptions(is_shuffled=True, seed=3))
    assert a == b
    assert sorted(lens(a)) == sorted(lens(read_azure(path)))


# --- ShareGPT --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def count_tokens():
    tokenizer = load_tokenizer(FIXTURES / "tokenizer.json")
    return lambda text: len(tokenizer.encode(text))


def test_sharegpt_pairs():
    pairs = read_sharegpt(FIXTURES / "sharegpt_small.json")
    assert [p for p, _ in pairs] == [
        "what is the model cache",
        "hi",
        "tell me about the batch queue and latency",
        "give the request rate of the trace",
    ]


def test_sharegpt_filters_short_turns(count_tokens):
    # token counts with the fixture tokenizer: a (5, 8), b (1, 21), d (11, 2), e (7, 13)
    specs = load_dataset("sharegpt", FIXTURES / "sharegpt_small.json", DatasetOptions(), count_tokens)
    assert lens(specs) == [(5, 8), (7, 13)]
    assert specs[0].prompt_text == "what is the model cache"
    fixed = load_dataset("sharegpt", FIXTURES / "sharegpt_small.json", DatasetOptions(fixed_output_len=2), count_tokens)
    assert lens(fixed) == [(5, 2), (11, 2), (7, 2)]
    capped = load_dataset(
        "sharegpt", FIXTURES / "sharegpt_small.json", DatasetOptions(max_input_len=6, max_output_len=4), count_tokens
    )
    assert lens(capped) == [(5, 4)]


def test_sharegpt_needs_tokenizer():
    with pytest.raises(ValueError, match="tokenizer"):
        load_dataset("sharegpt", FIXTURES / "sharegpt_small.json", DatasetOptions())


# --- BurstGPT, Mooncake, synthetic ---------------------------------------------------------


def test_burstgpt_fixture():
    specs = read_burstgpt(FIXTURES / "burstgpt_small.csv")
    assert lens(specs) == [(472, 18), (417, 276), (302, 143), (1024, 12)]  # the 0-token row is a failure
    assert [s.timestamp_s for s in specs] == [0.0, 113.0, 119.5, 195.0]
    gpt4 = read_burstgpt(FIXTURES / "burstgpt_small.csv", model="GPT-4")
    assert lens(gpt4) == [(417, 276), (1024, 12)] and [s.timestamp_s for s in gpt4] == [0.0, 82.0]


def test_mooncake_fixture():
    specs = read_mooncake(FIXTURES / "mooncake_small.jsonl")
    assert lens(specs) == [(1030, 12), (600, 5), (100, 1)]
    assert [s.timestamp_s for s in specs] == [0.0, 0.25, 1.75]
    assert [s.hash_ids for s in specs] == [(0, 1, 2), (0, 3), (4,)]


def test_mooncake_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 3, "output_length": 1}\n{"timestamp": 1}\n')
    with pytest.raises(ValueError, match=":2:"):
        read_mooncake(path)


def test_synthetic_ranges_and_seed():
    options = DatasetOptions(num_prompts=2000, input_len=1000, output_len=100, range_ratio=0.1, seed=7)
    specs = load_dataset("synthetic", None, options)
    inputs = [s.prompt_len for s in specs]
    outputs = [s.output_len for s in specs]
    assert len(specs) == 2000
    assert min(inputs) >= 900 and max(inputs) <= 1100
    assert min(outputs) >= 90 and max(outputs) <= 110
    # uniform: both ends are reached with 2000 draws from 201 values, the mean sits near the centre
    assert min(inputs) == 900 and max(inputs) == 1100
    assert abs(sum(inputs) / len(inputs) - 1000) < 5
    assert specs == load_dataset("synthetic", None, options)
    fixed = load_dataset("synthetic", None, DatasetOptions(num_prompts=3, input_len=5, output_len=2))
    assert lens(fixed) == [(5, 2)] * 3


def test_uniform_lengths_never_below_one():
    import numpy as np

    values = uniform_lengths(1, 0.9, 100, np.random.default_rng(0))
    assert values.min() >= 1 and values.max() <= 2


def test_unknown_dataset_and_missing_path():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("nope", None, DatasetOptions())
    with pytest.raises(ValueError, match="--dataset-path"):
        load_dataset("azure", None, DatasetOptions())
    with pytest.raises(ValueError, match="timestamps"):
        load_dataset("lengths", FIXTURES / "lengths_small.json", DatasetOptions(trace_duration_s=1.0))


def test_prefix_repetition_groups_lengths_and_seed():
    options = DatasetOptions(num_prompts=24, seed=3, prefix_len=64, suffix_len=16, num_prefixes=4, output_len=8)
    specs = load_dataset("prefix_repetition", None, options)
    assert lens(specs) == [(80, 8)] * 24
    assert {s.prefix_len for s in specs} == {64}
    assert sorted(s.prefix_id for s in specs) == sorted(list(range(4)) * 6)  # each prefix in turn
    assert [s.prefix_id for s in specs] != [i % 4 for i in range(24)]  # then shuffled
    assert specs == load_dataset("prefix_repetition", None, options)
    with pytest.raises(ValueError, match="num_prefixes"):
        load_dataset("prefix_repetition", None, DatasetOptions(num_prefixes=0))
