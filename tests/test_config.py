import argparse
import dataclasses

import pytest

from neo_async.config import Config, add_config_flags, config_from_args


def test_toml_then_flags_override(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[cache]\nblock_size = 32\ndevice_kv_tokens = 4096\n[scheduler]\nmax_num_seqs = 4\n')
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    args = parser.parse_args(["--config", str(path), "--max-num-seqs", "9", "--dtype", "float32"])
    config = config_from_args(args)
    assert config.cache.block_size == 32 and config.cache.device_kv_tokens == 4096
    assert config.scheduler.max_num_seqs == 9 and config.model.dtype == "float32"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[cache]\nblock_size = 12\n", "multiple of 8"),
        ("[cache]\nnope = 1\n", "unknown keys"),
        ("[nope]\n", "unknown config sections"),
        ('[model]\ndtype = "float64"\n', "dtype"),
        ('[cache]\noffload = "sometimes"\n', "offload must be one of"),
        ('[cache]\nhost_kv_tokens = "lots"\n', "host_kv_tokens must be a number of tokens or 'auto'"),
        ("[cache]\nhost_kv_tokens = -1\n", "host_kv_tokens must be >= 0"),
        ("[cache]\ndevice_kv_tokens = 8\n", "device_kv_tokens must be >= 16"),
        ('[cache]\noffload = "full"\nhost_kv_tokens = 0\n', "offload='full' needs a host KV pool"),
        ("[scheduler]\nswap_in_watermark = 1.5\n", "swap_in_watermark"),
        ('[scheduler]\npipeline = "maybe"\n', "pipeline must be one of"),
        ("[scheduler]\npipeline_min_host_decodes = 0\n", "pipeline_min_host_decodes must be >= 1"),
        ("[model]\nhost_threads = 0\n", "host_threads must be >= 1"),
    ],
)
def test_bad_config_is_a_clear_value_error(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        Config.from_toml(path).validate()


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted(Path(__file__).parent.parent.glob("configs/*.toml")):
        Config.from_toml(path).validate()


def test_kv_token_counts_accept_auto_in_toml_and_on_the_cli(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[cache]\ndevice_kv_tokens = "auto"\nhost_kv_tokens = 4096\noffload = "full"\n')
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    config = config_from_args(parser.parse_args(["--config", str(path), "--host-kv-tokens", "auto"]))
    assert (config.cache.device_kv_tokens, config.cache.host_kv_tokens, config.cache.offload) == ("auto", "auto", "full")
    config = config_from_args(parser.parse_args(["--device-kv-tokens", "2048", "--offload", "off"]))
    assert (config.cache.device_kv_tokens, config.cache.offload) == (2048, "off")
    with pytest.raises(SystemExit):
        parser.parse_args(["--device-kv-tokens", "many"])


def test_api_overrides_are_validated_naming_the_field():
    with pytest.raises(ValueError, match="offload must be one of"):
        Config().override(offload="fast").validate()
    with pytest.raises(ValueError, match="host_kv_tokens must be a number of tokens or 'auto'"):
        Config().override(host_kv_tokens=1.5).validate()


def test_pipeline_flags():
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    config = config_from_args(parser.parse_args(["--pipeline", "on", "--pipeline-min-host-decodes", "3"]))
    assert config.scheduler.pipeline == "on" and config.scheduler.pipeline_min_host_decodes == 3
    assert Config().scheduler.pipeline == "auto"
    config = config_from_args(parser.parse_args(["--tpot-slo-ms", "80", "--max-host-wait-iterations", "2", "--cost-tables", "none"]))
    assert (config.scheduler.tpot_slo_ms, config.scheduler.max_host_wait_iterations, config.scheduler.cost_tables) == (80.0, 2, "none")
    assert config_from_args(parser.parse_args(["--host-admission", "room"])).scheduler.host_admission == "room"
    for bad in ({"tpot_slo_ms": 0.0}, {"max_host_wait_iterations": -1}, {"pipeline": "maybe"}, {"host_admission": "any"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Config().override(**bad).validate()


def test_flags_show_each_fields_comment_as_help():
    from neo_async.config import SchedulerConfig, field_docs

    docs = field_docs(SchedulerConfig)
    assert docs["max_num_seqs"] == "running requests per iteration"
    assert docs["tpot_slo_ms"].startswith("per-output-token latency target")
    assert set(docs) <= {f.name for f in dataclasses.fields(SchedulerConfig)}  # no method lines
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    text = parser.format_help()
    assert "running requests per iteration (default: 64)" in " ".join(text.split())
    assert "predictions corrected online" in " ".join(text.split())


def test_prefix_caching_flags():
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    assert config_from_args(parser.parse_args(["--enable-prefix-caching"])).cache.enable_prefix_caching is True
    assert config_from_args(parser.parse_args(["--no-enable-prefix-caching"])).cache.enable_prefix_caching is False
    assert config_from_args(parser.parse_args([])).cache.enable_prefix_caching is Config().cache.enable_prefix_caching
