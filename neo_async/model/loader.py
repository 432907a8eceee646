"""Load a model (GGUF file or HF directory) into `LlamaWeights` and a `Tokenizer`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neo_async.model.hf_dir import iter_hf_tensors, read_hf_config, spec_from_hf_config
from neo_async.model.registry import model_display_name, resolve_model_path
from neo_async.model.spec import ModelSpec
from neo_async.model.tokenizer import Tokenizer, tokenizer_from_gguf_fields, tokenizer_from_hf_dir
from neo_async.model.weights import LlamaWeights


@dataclass
class LoadedModel:
    spec: ModelSpec
    weights: LlamaWeights
    tokenizer: Tokenizer | None  # None when loaded with skip_tokenizer_init
    path: Path


def load_model(
    model: str | Path | None, dtype: torch.dtype, device: torch.device, skip_tokenizer_init: bool = False
) -> LoadedModel:
    """With skip_tokenizer_init no tokenizer is built (nor its file required); EOS ids then come
    from the model's own config only."""
    path = resolve_model_path(model)
    name = model_display_name(model)
    if path.is_dir():
        spec = spec_from_hf_config(read_hf_config(path), name)
        tokenizer = None if skip_tokenizer_init else tokenizer_from_hf_dir(path)
        tensors = ((n, t) for n, t in iter_hf_tensors(path))
    else:
        from gguf import GGUFReader

        from neo_async.model.gguf_file import iter_gguf_tensors, read_gguf_metadata, spec_from_gguf

        reader = GGUFReader(str(path))
        meta = read_gguf_metadata(path, reader)
        spec = spec_from_gguf(meta, {t.name for t in reader.tensors}, name)
        tokenizer = None if skip_tokenizer_init else tokenizer_from_gguf_fields(meta)
        tensors = ((n, torch.from_numpy(a)) for n, a in iter_gguf_tensors(reader, spec))
    if not spec.eos_token_ids and tokenizer is not None and tokenizer.eos_token_id is not None:
        spec = dataclasses.replace(spec, eos_token_ids=(tokenizer.eos_token_id,))
    builder = LlamaWeights.builder(spec, dtype, device)
    for name_, tensor in tensors:
        if name_ == "rope_freqs":
            spec = dataclasses.replace(spec, rope_freq_factors=tuple(float(x) for x in np.asarray(tensor)))
            continue
        builder.add(name_, tensor)
    return LoadedModel(spec, builder.finish(), tokenizer, path)
