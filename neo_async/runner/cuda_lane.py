"""Everything CUDA-specific in the runner: the attention backend on a CUDA pool, prefill of
fresh prompts, and the copy lane (stream, events, pinned buffers) behind `staging.Lane`.

NOTE: nothing here runs in CI (no GPU there). It stays small on purpose: the kernels are
tested in Triton's interpreter, the staging logic with `staging.ThreadLane`, and this file
only binds them to torch.cuda. `scripts/gpu_check.sh` runs it on a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import structlog
import torch

from neo_async.runner.staging import Staging

log = structlog.get_logger(__name__)

BACKEND_ENV = "NEO_ASYNC_CUDA_ATTENTION"  # torch | triton | flashinfer (default: the best that works)


class CudaEvent:
    def __init__(self, stream: torch.cuda.Stream) -> None:
        self.stream = stream
        self.event = torch.cuda.Event()

    def record(self) -> None:
        self.event.record(self.stream)

    def wait_host(self) -> None:
        self.event.synchronize()

    def wait_device(self) -> None:
        torch.cuda.current_stream(self.stream.device).wait_event(self.event)


class CudaLane:
    """Latency-critical copies (host decode inputs and outputs) on a stream of their own,
    between the compute stream and pinned host buffers."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def event(self) -> CudaEvent:
        return CudaEvent(self.stream)

    def host_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def copy_to_host(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # src is computed
        with torch.cuda.stream(self.stream):
            dst.copy_(src, non_blocking=True)
        src.record_stream(self.stream)  # the allocator may not reuse src before the copy

    def copy_to_device(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        with torch.cuda.stream(self.stream):
            dst.copy_(src, non_blocking=True)


def host_staging(device: torch.device, kv_dtype: torch.dtype) -> Staging:
    return Staging(CudaLane(device), kv_dtype)


DecodeFn = Callable[..., None]
PrefillFn = Callable[..., None]


def attention_kernels(device: torch.device) -> tuple[DecodeFn, PrefillFn] | None:
    """(paged decode, paged prefill) for pools on `device`, or None for the torch reference.

    FlashInfer's decode when it imports and was not ruled out, else Triton's; FlashInfer's
    first call is checked against Triton's (`kernels/checked.py`), which takes over for good
    if it fails or differs. Prefill over cached blocks always Triton's. Logged once per pool,
    so a fallback is never silent.
    """
    if device.type != "cuda":
        return None
    choice = os.environ.get(BACKEND_ENV, "")
    if choice == "torch":
        return None
    try:
        from neo_async.kernels.decode import paged_decode
        from neo_async.kernels.prefill import paged_prefill
    except ImportError as exc:
        log.warning("cuda_attention_fallback", backend="torch", reason=f"triton unavailable: {exc}")
        return None
    decode: DecodeFn = paged_decode
    backend = "triton"
    if choice in ("", "flashinfer"):
        from neo_async.kernels import flashinfer_decode
        from neo_async.kernels.checked import CheckedDecode

        reason = flashinfer_decode.unavailable_reason(device)
        if reason is None:
            try:
                flashinfer = flashinfer_decode.FlashInferDecode(device)
            except Exception as exc:  # a build that imports but does not set up on this GPU
                reason = f"{type(exc).__name__}: {exc}"
                log.warning("cuda_attention_fallback", backend="triton", reason=reason)
                choice = "triton"
            else:  # checked against Triton on its first call, Triton for good if it fails
                decode, backend = CheckedDecode(flashinfer, paged_decode, "flashinfer", "triton"), "flashinfer"
        if reason is not None and choice == "flashinfer":
            log.warning("cuda_attention_fallback", backend="triton", reason=reason)
    log.info("cuda_attention", decode=backend, prefill="triton", fresh_prefill="sdpa")
    return decode, paged_prefill


def fresh_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of a prompt with no cached prefix through scaled_dot_product_attention
    (flash or memory-efficient backends: no [T, T] scores). q [T, Hq, D]; k, v [Hkv, T, D].
    Returns [T, Hq, D] float32."""
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0), k.unsqueeze(0).to(q.dtype), v.unsqueeze(0).to(q.dtype),
        is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[0],
    )  # [1, Hq, T, D]
    return out[0].transpose(0, 1).float()


_BULK_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def bulk_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream of bulk copies (swaps) on `device`: apart from the latency-critical lane."""
    if device not in _BULK_STREAMS:
        _BULK_STREAMS[device] = torch.cuda.Stream(device)
    return _BULK_STREAMS[device]


def enqueue_layers(device: torch.device, copy_layer: Callable[[int], None], num_layers: int) -> list[torch.cuda.Event]:
    """Every layer's copies issued now on the bulk stream, after the work the compute stream
    has so far; one event per layer, recorded after that layer's copies."""
    stream = bulk_stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    events = []
    with torch.cuda.stream(stream):
        for layer in range(num_layers):
            copy_layer(layer)
            event = torch.cuda.Event()
            event.record(stream)
            events.append(event)
    return events


def wait_layer(event: torch.cuda.Event) -> None:
    """A layer's copies done, for the host (which reads or reuses host blocks next) and for
    the compute stream (which reads or reuses device blocks next)."""
    event.synchronize()
    torch.cuda.current_stream().wait_event(event)
