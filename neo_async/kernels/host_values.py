"""Host copies of small index tensors made for a GPU (block tables, lengths), so that code
needing their values on the host (FlashInfer's plan) reads them without a device sync.

A tensor made by `to_device` from host values remembers them for as long as it lives;
`host_values` of any other tensor copies it back (a synchronisation: the fallback).
"""

from __future__ import annotations

import weakref

import torch

_HOST: dict[int, torch.Tensor] = {}  # id(device tensor) -> its values on the host, while it lives


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`values` (a host tensor) on `device`; off the host, the result remembers `values`."""
    if device.type == "cpu":
        return values
    if device.type == "cuda":  # NOTE: from pinned memory, so the copy never waits for the device's queue
        on_device = values.pin_memory().to(device, non_blocking=True)
    else:
        on_device = values.to(device)
    key = id(on_device)
    _HOST[key] = values
    weakref.finalize(on_device, _HOST.pop, key, None)
    return on_device


def host_values(tensor: torch.Tensor) -> torch.Tensor:
    """tensor's values on the host: remembered when `to_device` made it, else copied back."""
    if tensor.device.type == "cpu":
        return tensor
    remembered = _HOST.get(id(tensor))
    return remembered if remembered is not None else tensor.cpu()
