import argparse

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
