"""Load a model (GGUF file or HF directory) into `LlamaWeights` and a `Tokenizer`.

Each phase's time is logged at debug level (`model_*` events, `seconds`) and kept in
`LoadedModel.phase_seconds`. Layers are packed while the weights are read or dequantised
(see `WeightsBuilder`): `pack_seconds` is packing's share of that phase;
`model_weights_prepared` is what is left after the last write.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
import torch

from neo_async.model.hf_dir import iter_hf_tensors, read_hf_config, spec_from_hf_config
from neo_async.model.linear import cpu_has_native_bf16
from neo_async.model.registry import model_display_name, resolve_model_path
from neo_async.model.spec import ModelSpec
from neo_async.model.tensor_parallel import Shard
from neo_async.model.tokenizer import Tokenizer, tokenizer_from_gguf_fields, tokenizer_from_hf_dir
from neo_async.model.weights import LlamaWeights, WeightsBuilder
from neo_async.platform.devices import host_available_bytes

log = structlog.get_logger("neo_async.model.loader")


@dataclass
class LoadedModel:
    spec: ModelSpec  # the rank's when loaded with a shard (see `ModelSpec.shard`)
    weights: LlamaWeights
    tokenizer: Tokenizer | None  # None when loaded with skip_tokenizer_init
    path: Path
    # by event name; `model_weights_packed`: packing's share of the writes' phase
    phase_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


class _PhaseClock:
    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, event: str, **fields: object) -> None:
        now = time.perf_counter()
        self.seconds[event] = now - self.last
        log.debug(event, seconds=round(now - self.last, 3), **fields)
        self.last = now


def load_model(
    model: str | Path | None,
    dtype: torch.dtype,
    device: torch.device,
    skip_tokenizer_init: bool = False,
    shard: Shard | None = None,
) -> LoadedModel:
    """With skip_tokenizer_init no tokenizer is built (nor its file required); EOS ids then come
    from the model's own config only. With a shard, only that tensor-parallel rank's share of
    the weights is kept (see `tensor_parallel`), and a size that does not split the model is
    refused (ValueError) before any weight is read."""
    path = resolve_model_path(model)
    name = model_display_name(model)
    clock = _PhaseClock()
    shard = shard or Shard()
    if path.is_dir():
        loaded = _load_hf_dir(path, name, dtype, device, clock, skip_tokenizer_init, shard)
    else:
        loaded = _load_gguf(path, name, dtype, device, clock, skip_tokenizer_init, shard)
    log.debug("model_loaded", path=str(path), seconds=round(time.perf_counter() - clock.started, 3))
    loaded.phase_seconds = clock.seconds
    return loaded


def _with_tokenizer_eos(spec: ModelSpec, tokenizer: Tokenizer | None) -> ModelSpec:
    if not spec.eos_token_ids and tokenizer is not None and tokenizer.eos_token_id is not None:
        return dataclasses.replace(spec, eos_token_ids=(tokenizer.eos_token_id,))
    return spec


def _load_hf_dir(
    path: Path,
    name: str,
    dtype: torch.dtype,
    device: torch.device,
    clock: _PhaseClock,
    skip_tokenizer_init: bool,
    shard: Shard,
) -> LoadedModel:
    spec = spec_from_hf_config(read_hf_config(path), name)
    shard.spec(spec)  # refused here, before anything is read
    tokenizer = None if skip_tokenizer_init else tokenizer_from_hf_dir(path)
    spec = _with_tokenizer_eos(spec, tokenizer)
    clock.lap("model_tokenizer_built")
    builder = LlamaWeights.builder(spec, dtype, device, _widen(shard.spec(spec), dtype, device), shard)
    for tensor_name, tensor in iter_hf_tensors(path):
        builder.add(tensor_name, tensor)
    clock.lap("model_weights_read")
    weights = builder.finish()
    _lap_prepared(clock, builder)
    return LoadedModel(shard.spec(spec), weights, tokenizer, path)


def _lap_prepared(clock: _PhaseClock, builder: WeightsBuilder) -> None:
    clock.seconds["model_weights_packed"] = builder.pack_seconds
    pack_seconds = round(builder.pack_seconds, 3)
    clock.lap("model_weights_prepared", pack_seconds=pack_seconds, num_scratch_sets=builder.num_scratch_sets)


# float32 copies of the projections may take at most this share of available memory
_WIDEN_MEMORY_SHARE = 0.25


def _widen(spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether bf16 projections compute in float32 (see `Linear`): on a CPU without native bf16
    products, when float32 copies of the projections fit a share of available memory."""
    if device.type != "cpu" or dtype != torch.bfloat16 or cpu_has_native_bf16():
        return False
    per_layer = spec.hidden_size * (spec.q_size + 2 * spec.kv_size + spec.q_size + 3 * spec.intermediate_size)
    num_bytes = 4 * (spec.num_layers * per_layer + spec.vocab_size * spec.hidden_size)
    widen = num_bytes <= _WIDEN_MEMORY_SHARE * host_available_bytes()
    log.info("bf16_products", native=False, computed_in="float32" if widen else "bfloat16 (emulated)", float32_bytes=num_bytes)
    return widen


def _load_gguf(
    path: Path,
    name: str,
    dtype: torch.dtype,
    device: torch.device,
    clock: _PhaseClock,
    skip_tokenizer_init: bool,
    shard: Shard,
) -> LoadedModel:
    from neo_async.model.gguf_file import load_gguf_weights, spec_from_gguf
    from neo_async.model.gguf_reader import GGUFFile

    with GGUFFile(path) as file:
        spec = spec_from_gguf(file.metadata, set(file.tensors), name)
        shard.spec(spec)  # refused here, before anything is read
        clock.lap("model_gguf_opened", num_tensors=len(file.tensors))
        tokenizer = None if skip_tokenizer_init else tokenizer_from_gguf_fields(file.metadata)
        spec = _with_tokenizer_eos(spec, tokenizer)
        clock.lap("model_tokenizer_built")
        widen = _widen(shard.spec(spec), dtype, device)
        builder: WeightsBuilder = LlamaWeights.builder(spec, dtype, device, widen, shard)
        file.advise_sequential()
        rope_freqs = load_gguf_weights(file, spec, builder)  # the whole model's spec: the file's rows
        num_bytes = sum(info.num_bytes for info in file.tensors.values())
        clock.lap("model_weights_dequantized", num_bytes=num_bytes)
    if rope_freqs is not None:
        spec = dataclasses.replace(spec, rope_freq_factors=rope_freqs)
    weights = builder.finish()
    _lap_prepared(clock, builder)
    return LoadedModel(shard.spec(spec), weights, tokenizer, path)
