"""Frozen configuration, grouped by subsystem, loaded from TOML and overridden by CLI flags.

Values measured at run time (pool sizes in blocks, profile tables) live in the engine's
runtime state, never here.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DTYPES = ("bfloat16", "float32")


@dataclass(frozen=True)
class ModelConfig:
    model: str | None = None  # GGUF file or HF directory; None = the embedded SmolLM2-135M
    dtype: str = "bfloat16"
    max_model_len: int | None = None  # None = the checkpoint's context length
    served_model_name: str | None = None
    # the device lane: torch's intra-op pool on the CPU device; None = every core this process
    # may use (pipeline on: every core but host_threads')
    device_threads: int | None = None
    # the host lane: rust_cpuattn's team; None = 1 on the CPU device (pipeline on: half the
    # cores), else every core
    host_threads: int | None = None
    # no tokenizer: prompts and outputs are token ids, text fields stay empty, stop strings are refused
    skip_tokenizer_init: bool = False
    # tensor-parallel ranks, one process each (gloo on the CPU, NCCL on GPUs), each with its share of the cores
    tensor_parallel_size: int = 1

    def validate(self) -> None:
        for name in ("device_threads", "host_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise ValueError("max_model_len must be >= 16")
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be >= 1")


OFFLOAD_MODES = ("off", "neo", "full")
PIPELINE_MODES = ("off", "on", "auto")
HOST_ADMISSIONS = ("rate", "room")
AUTO = "auto"
CPU_DEVICE_KV_TOKENS = 32768  # device_kv_tokens' default when the CPU plays the device


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    # off: device only (recompute preemption); neo: device and host pools, placement decided
    # every iteration; full: every request's KV and decode attention on the host
    offload: str = "neo"
    # tokens, or "auto" (sized from free device memory); None = "auto" on a GPU, 32768 on the CPU
    device_kv_tokens: int | str | None = None
    # tokens, "auto" (host_memory_fraction of available RAM, at most host_kv_auto_max_gib), or 0 (no host pool)
    host_kv_tokens: int | str = AUTO
    device_memory_fraction: float = 0.9  # share of free device memory for device_kv_tokens="auto"
    host_memory_fraction: float = 0.4  # share of available RAM for host_kv_tokens="auto"
    host_kv_auto_max_gib: float = 1.0  # bounds an "auto" host pool (it is touched at start-up)
    # reuse the K/V of cached full blocks of earlier prompts, in both pools (a host hit is read in place)
    enable_prefix_caching: bool = True

    def validate(self) -> None:
        if self.block_size < 1 or self.block_size % 8:
            raise ValueError("block_size must be a positive multiple of 8")
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {self.offload!r}")
        _check_tokens("device_kv_tokens", self.device_kv_tokens, minimum=self.block_size)
        _check_tokens("host_kv_tokens", self.host_kv_tokens, minimum=0)
        if self.offload == "full" and self.host_kv_tokens == 0:
            raise ValueError("offload='full' needs a host KV pool: host_kv_tokens must not be 0")
        if not 0.05 <= self.device_memory_fraction <= 1.0:
            raise ValueError("device_memory_fraction must be in [0.05, 1]")
        if not 0.0 < self.host_memory_fraction <= 0.9:
            raise ValueError("host_memory_fraction must be in (0, 0.9]")
        if self.host_kv_auto_max_gib <= 0:
            raise ValueError("host_kv_auto_max_gib must be > 0")


def _check_tokens(name: str, value: object, minimum: int) -> None:
    if value is None or value == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a number of tokens or {AUTO!r}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum} (got {value})" + (": one block at least" if minimum else ""))


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64  # running requests per iteration
    max_num_batched_tokens: int = 512  # tokens per iteration (prefill chunks + decodes)
    max_waiting: int = 1024  # queued requests beyond which new ones are refused
    # host requests swap back in while the device pool stays under this share of its blocks
    swap_in_watermark: float = 0.95
    # off: one sequential pass per layer; on: two sub-batches overlapped per layer (host attention
    # of one while the device runs the other) whenever a plan has pipeline_min_host_decodes host
    # decodes; auto: each iteration, whichever the cost tables predict faster
    pipeline: str = "auto"
    pipeline_min_host_decodes: int = 2
    # per-output-token latency target: no plan predicted slower is chosen when one that meets it exists
    tpot_slo_ms: float | None = None
    # a host decode left out of an iteration (its lane predicted to slow the step) runs within this many
    max_host_wait_iterations: int = 4
    # when a prompt the device cannot hold may start on the host: "rate", when the predicted output
    # rate of the running requests does not drop; "room", whenever the host pool has room (the
    # paper's artifact: for offline throughput, with a long wait bound so host decodes ride in
    # the device's slack)
    host_admission: str = "rate"
    # predictions corrected online by measured iterations (`sched/calibration.py`)
    calibrate_costs: bool = True
    # "auto": tables cached for this machine, model and thread split, else a quick profile at
    # start-up; a path: tables written by `neo-async profile`; "none": no cost model (fixed rules)
    cost_tables: str = "auto"

    def validate(self) -> None:
        if self.pipeline not in PIPELINE_MODES:
            raise ValueError(f"pipeline must be one of {PIPELINE_MODES}, got {self.pipeline!r}")
        if self.tpot_slo_ms is not None and self.tpot_slo_ms <= 0:
            raise ValueError(f"tpot_slo_ms must be > 0, got {self.tpot_slo_ms}")
        if self.max_host_wait_iterations < 0:
            raise ValueError(f"max_host_wait_iterations must be >= 0, got {self.max_host_wait_iterations}")
        if self.host_admission not in HOST_ADMISSIONS:
            raise ValueError(f"host_admission must be one of {HOST_ADMISSIONS}, got {self.host_admission!r}")
        if self.pipeline_min_host_decodes < 1:
            raise ValueError(f"pipeline_min_host_decodes must be >= 1, got {self.pipeline_min_host_decodes}")
        if not 0.0 < self.swap_in_watermark <= 1.0:
            raise ValueError("swap_in_watermark must be in (0, 1]")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs")
        if self.max_waiting < 1:
            raise ValueError("max_waiting must be >= 1")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    log_format: str = "console"  # console | json
    log_level: str = "info"
    max_n: int = 16  # largest `n` accepted per request
    shutdown_grace_s: float = 30.0

    def validate(self) -> None:
        if self.log_format not in ("console", "json"):
            raise ValueError("log_format must be console or json")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be in [0, 65535]")
        if self.max_n < 1:
            raise ValueError("max_n must be >= 1")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    def validate(self) -> "Config":
        for group in _groups(self):
            getattr(self, group).validate()
        return self

    @classmethod
    def from_toml(cls, path: str | Path) -> "Config":
        with open(path, "rb") as f:
            data = tomllib.load(f)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        groups = {}
        for name, f in cls.__dataclass_fields__.items():
            section = data.get(name, {})
            if not isinstance(section, dict):
                raise ValueError(f"config section [{name}] must be a table")
            group_cls = f.default_factory  # type: ignore[misc]
            known = {g.name for g in dataclasses.fields(group_cls)}
            unknown = set(section) - known
            if unknown:
                raise ValueError(f"unknown keys in [{name}]: {sorted(unknown)}")
            groups[name] = group_cls(**section)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown config sections: {sorted(unknown)}")
        return cls(**groups)

    def override(self, **flat: Any) -> "Config":
        """Replace fields by their bare names (`device_kv_tokens=...`); None values are skipped."""
        groups = {name: getattr(self, name) for name in _groups(self)}
        for key, value in flat.items():
            if value is None:
                continue
            for name, group in groups.items():
                if key in group.__dataclass_fields__:
                    groups[name] = dataclasses.replace(group, **{key: value})
                    break
            else:
                raise ValueError(f"unknown config field {key!r}")
        return Config(**groups)


def _groups(config: Config) -> list[str]:
    return [f.name for f in dataclasses.fields(config)]


def add_config_flags(parser: argparse.ArgumentParser, groups: tuple[str, ...] | None = None) -> None:
    """Add one `--field-name` flag per config field (default None = keep config's value)."""
    parser.add_argument("--config", type=Path, default=None, help="TOML config file")
    for gf in dataclasses.fields(Config):
        if groups is not None and gf.name not in groups:
            continue
        group = parser.add_argument_group(gf.name)
        docs = field_docs(gf.default_factory)  # type: ignore[arg-type]
        for f in dataclasses.fields(gf.default_factory):  # type: ignore[arg-type]
            flag = "--" + f.name.replace("_", "-")
            kind = _scalar_type(f.type)
            help_text = " ".join(filter(None, [docs.get(f.name, ""), f"(default: {f.default})"])).replace("%", "%%")
            if kind is bool:
                group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            else:
                group.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)


_FIELD_LINE = re.compile(r"(\w+)\s*:[^=]*=")


def field_docs(cls: type) -> dict[str, str]:
    """Each field's comments in the class's source (the comment lines just above it, then its
    trailing comment): the one text of a setting, shown by --help."""
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("#"):
            pending.append(text.lstrip("#").strip())
            continue
        match = _FIELD_LINE.match(text)
        if match and line.startswith("    ") and not line.startswith("     "):
            trailing = text.split("  # ", 1)[1].strip() if "  # " in text else ""
            docs[match.group(1)] = " ".join(pending + [trailing]).strip()
        pending = []
    return docs


def config_from_args(args: argparse.Namespace, groups: tuple[str, ...] | None = None) -> Config:
    config = Config.from_toml(args.config) if getattr(args, "config", None) else Config()
    flat = {}
    for gf in dataclasses.fields(Config):
        if groups is not None and gf.name not in groups:
            continue
        for f in dataclasses.fields(gf.default_factory):  # type: ignore[arg-type]
            flat[f.name] = getattr(args, f.name, None)
    return config.override(**flat).validate()


def _scalar_type(annotation: Any) -> Any:
    hint = eval(annotation, vars(typing)) if isinstance(annotation, str) else annotation  # noqa: S307
    if isinstance(hint, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if set(options) == {int, str}:
            return _int_or_auto
        hint = options[0]
    return hint


def _int_or_auto(text: str) -> int | str:
    """A CLI value that is a number of tokens or "auto"."""
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens or {AUTO!r}, got {text!r}") from None
