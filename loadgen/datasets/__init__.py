"""Workload loaders, one module per format; each returns the selected `RequestSpec`s."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from loadgen.datasets import azure, burstgpt, lengths, mooncake, prefix_repetition, sharegpt, synthetic
from loadgen.datasets.select import DatasetOptions
from loadgen.workload import RequestSpec

LOADERS = {
    "azure": azure.load,
    "lengths": lengths.load,
    "sharegpt": sharegpt.load,
    "burstgpt": burstgpt.load,
    "mooncake": mooncake.load,
    "synthetic": synthetic.load,
    "prefix_repetition": prefix_repetition.load,
}
DATASET_NAMES = tuple(LOADERS)
NEEDS_TOKENIZER = frozenset({"sharegpt"})

__all__ = ["DATASET_NAMES", "NEEDS_TOKENIZER", "DatasetOptions", "load_dataset"]


def load_dataset(
    name: str,
    path: str | Path | None,
    options: DatasetOptions,
    count_tokens: Callable[[str], int] | None = None,
) -> list[RequestSpec]:
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASET_NAMES)}")
    if name not in ("synthetic", "prefix_repetition") and path is None:
        raise ValueError(f"dataset {name!r} needs --dataset-path")
    options.validate()
    return LOADERS[name](path, options, count_tokens)
