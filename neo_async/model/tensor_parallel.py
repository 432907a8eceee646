"""Tensor parallelism (Megatron-style) for the Llama-family decoder: which rows and columns of
each weight a rank keeps, the one collective the forward needs, and joining the ranks.

With N ranks, in every layer:
- q/k/v (with their biases) and gate/up are column-parallel: rank r keeps the output rows of
  its query heads [r Hq/N, (r+1) Hq/N), of the KV heads those heads read, and of its slice
  [r I/N, (r+1) I/N) of the intermediate. Nothing is exchanged: each rank's attention runs
  over its own heads against its own KV cache (its share of the KV heads).
- o and down are row-parallel: rank r keeps the input columns of its heads and of its
  intermediate slice, so its product is one partial sum of the full output; `Shard.all_reduce_`
  adds the N partials (two all-reduces per layer, in `LlamaModel.post`). Neither has a bias in
  these models (a bias would have to be added once, after the sum).
- KV heads are divided when N divides num_kv_heads; when N exceeds them (a multiple of them),
  each rank keeps the one KV head its query heads read, so each KV head lives on
  N / num_kv_heads ranks, as vLLM does. `ModelSpec.shard` refuses other sizes.
- The embedding, the norms and the LM head are replicated. NOTE: the vocabularies of these
  models are small beside their layers (Llama-3-70B: embedding and head are ~3 % of the
  weights; SmolLM2-135M's tied embedding is large only because the model is tiny), so a full
  copy costs little memory, and every rank can embed its tokens and compute logits without a
  gather. Vocab-parallel embedding and head (an all-reduce after the lookup, an all-gather or a
  distributed argmax after the head) are a later optimisation.

Hidden states are replicated: after each all-reduce every rank holds the same [T, hidden]
values (the collectives give every rank the same sum), so the residual stream, the logits and
greedy tokens agree on every rank.

What an engine does with this (one process per rank; the engine's process keeps the scheduler):
1. Start N processes (torch.multiprocessing, context "spawn", never fork: torch and the
   extension's thread pools do not survive a fork), each given its rank, N, an `init_method`
   (`free_init_method()` in the parent, or a FileStore path) and its device
   (`cuda:<rank>` on GPUs). Set each process's thread budget (torch and the host kernel) to its
   share of the cores BEFORE loading: packing and dequantisation use every core they are given.
2. In each: `shard = init_process_group(rank, N, init_method, device)`;
   `loaded = load_model(model, dtype, device, shard=shard)`: `loaded.spec` is the rank's spec
   (size the device and host KV caches from it: num_kv_heads is per rank);
   `model = LlamaModel(loaded.spec, loaded.weights, max_len, shard)`.
3. Every rank runs every plan, in lockstep and in the same order: each `post()` is a collective,
   so every rank must call pre/attention/post for the same layers with the same token counts
   (the same sub-batch split and order in pipelined steps, host attention included). A rank
   that skips or reorders a call hangs its peers until the timeout.
4. Only one rank's sampled tokens are needed (rank 0's): the others may skip `logits()`.
   Sampling with temperature > 0 on several ranks would need the same generator state.
5. Failures: collectives time out after `timeout_s` (gloo: the operation raises; NCCL: the
   watchdog aborts the communicator). The engine must also watch its workers' process
   sentinels, so that a rank that dies is noticed in seconds, not after the timeout.
   `destroy_process_group()` at shutdown.
6. Cost tables measured on a rank of N are per rank: key them with `spec.tp_size`.
"""

from __future__ import annotations

import dataclasses
import datetime
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from neo_async.model.spec import ModelSpec

# canonical (HF) layer part -> (dimension it is split along, what is split)
_SPLITS = {
    "self_attn.q_proj.weight": (0, "q"),
    "self_attn.q_proj.bias": (0, "q"),
    "self_attn.k_proj.weight": (0, "kv"),
    "self_attn.k_proj.bias": (0, "kv"),
    "self_attn.v_proj.weight": (0, "kv"),
    "self_attn.v_proj.bias": (0, "kv"),
    "self_attn.o_proj.weight": (1, "q"),
    "mlp.gate_proj.weight": (0, "intermediate"),
    "mlp.up_proj.weight": (0, "intermediate"),
    "mlp.down_proj.weight": (1, "intermediate"),
}


@dataclass(frozen=True)
class Shard:
    """One tensor-parallel rank: rank `rank` of `size`, its collectives over `group` (None: the
    default process group). `Shard()` is the whole model, with no collectives."""

    rank: int = 0
    size: int = 1
    group: Any = dataclasses.field(default=None, compare=False, repr=False)  # a torch ProcessGroup

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"tensor-parallel rank {self.rank} of size {self.size} is out of range")

    @property
    def is_sharded(self) -> bool:
        return self.size > 1

    def spec(self, full: ModelSpec) -> ModelSpec:
        """The rank's spec of the whole model's `full` (see `ModelSpec.shard`)."""
        return full.shard(self.rank, self.size)

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        """Sums t (in place) over the ranks; returns t. A no-op for the whole model. 16-bit
        host tensors are summed in float32 (gloo's 16-bit sums measured ~4x slower than float32
        at decode sizes; the wider sum also rounds once, not per rank)."""
        if self.size == 1:
            return t
        if t.device.type == "cpu" and t.dtype in (torch.bfloat16, torch.float16):
            wide = t.float()
            dist.all_reduce(wide, op=dist.ReduceOp.SUM, group=self.group)
            return t.copy_(wide)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t


def split_range(full: ModelSpec, shard: Shard, what: str) -> tuple[int, int]:
    """(start, stop) of the rank's rows of `what` ("q", "kv" or "intermediate") in the whole
    model's projection: q and kv in rows of head_dim per head."""
    n, r, d = shard.size, shard.rank, full.head_dim
    if what == "q":
        per_rank = full.num_heads // n * d
        return r * per_rank, (r + 1) * per_rank
    if what == "kv":
        if n <= full.num_kv_heads:
            per_rank = full.num_kv_heads // n
            return r * per_rank * d, (r + 1) * per_rank * d
        head = r // (n // full.num_kv_heads)  # the KV head this rank's query heads read
        return head * d, (head + 1) * d
    if what == "intermediate":
        per_rank = full.intermediate_size // n
        return r * per_rank, (r + 1) * per_rank
    raise ValueError(f"unknown split {what!r}")


def is_split(part: str) -> bool:
    """Whether the layer part (canonical name after `model.layers.N.`) differs between ranks."""
    return part in _SPLITS


def shard_part(full: ModelSpec, shard: Shard, part: str, tensor: torch.Tensor) -> torch.Tensor:
    """The rank's view of the whole model's layer part `tensor` (canonical name `part`, after
    `model.layers.N.`): rows of q/k/v/gate/up, columns of o/down; other parts whole."""
    if shard.size == 1 or part not in _SPLITS:
        return tensor
    dim, what = _SPLITS[part]
    start, stop = split_range(full, shard, what)
    return tensor.narrow(dim, start, stop - start)


def free_init_method(host: str = "127.0.0.1") -> str:
    """A `tcp://host:port` init method on a port free now (a race with other processes is
    possible but rare; a FileStore path avoids it on one machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return f"tcp://{host}:{s.getsockname()[1]}"


def init_process_group(
    rank: int, size: int, init_method: str, device: torch.device, backend: str | None = None, timeout_s: float = 60.0
) -> Shard:
    """Joins this process to the `size` ranks as `rank` and returns its `Shard` (the default
    group). backend: "nccl" for a CUDA device, "gloo" otherwise, unless given. timeout_s bounds
    joining and every collective. For size 1 nothing is joined: `Shard()`."""
    if size == 1:
        return Shard()
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if backend == "nccl":
            kwargs["device_id"] = device  # the communicator set up now, bound to this device
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=size,
        timeout=datetime.timedelta(seconds=timeout_s), **kwargs,
    )  # fmt: skip
    return Shard(rank, size, dist.group.WORLD)


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
