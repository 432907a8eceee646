"""A cost model from first principles: roofline times of one layer's work on a GPU (tensor
parallel over `tp` of them) and of host decode attention on the host's CPU cores.

Each time is max(flops / reachable flops, bytes / reachable bandwidth) plus fixed costs; what is
reachable is the hardware's peak times a global efficiency factor (neo_async/sim/hardware_profiles/
calibration.toml). Host attention is priced from our kernel's measured efficiency: bytes over
(the host's read bandwidth for the kernel's threads x kernel_bandwidth_efficiency), or its
measured flops per thread when grouped-query attention makes it compute-bound.

Tensor parallelism: every GPU holds 1/tp of each layer's weights and KV heads and runs its share
at once; each layer adds two all-reduces of the activations (after attention and after the MLP).
Each rank runs host attention for its own KV heads on its own host_threads / tp cores, as the
engine's ranks do; the ranks share the host's memory channels, so a rank reads its 1/tp of the
bytes at the lower of what its cores reach and 1/tp of what all ranks' cores reach. Each rank
copies its own q/k/v/o rows and swap blocks over its own PCIe link.
"""

from __future__ import annotations

from dataclasses import dataclass

from neo_async.model.spec import ModelSpec
from neo_async.sim.hardware import Calibration, Gpu, Host
from neo_async.sim.models import layer_params

GIGA = 1e9
TERA = 1e12


@dataclass
class RooflineCosts:
    """Implements `neo_async.sched.costs.CostModel` (seconds, one layer unless stated)."""

    model: ModelSpec
    gpu: Gpu
    host: Host
    calibration: Calibration
    tp: int = 1
    host_threads: int | None = None  # kernel threads of all ranks; None = every vCPU but calibration.reserved_vcpus
    block_size: int = 16
    dtype_bytes: int = 2

    def __post_init__(self) -> None:
        if self.tp < 1 or self.model.num_kv_heads % self.tp:
            raise ValueError(f"tensor parallelism {self.tp} must divide {self.model.num_kv_heads} KV heads")
        if self.host_threads is None:
            self.host_threads = max(1, self.host.vcpus - self.calibration.reserved_vcpus)
        if not self.tp <= self.host_threads <= self.host.vcpus:
            raise ValueError(f"host_threads must be in [{self.tp}, {self.host.vcpus}] (at least one per rank), got {self.host_threads}")
        self.rank_threads = self.host_threads // self.tp  # one rank's kernel team
        self.num_layers = self.model.num_layers
        m, c, d = self.model, self.calibration, self.dtype_bytes
        # reachable rates: per GPU (flops/s, bytes/s) and for one rank's host lane
        self.matmul_flops = self.gpu.tflops * TERA * c.matmul_efficiency
        self.attention_flops = self.gpu.tflops * TERA * c.attention_efficiency
        if self.gpu.sustained_tflops:  # a power-capped board: no tensor work beats its measured GEMM rate
            self.matmul_flops = min(self.matmul_flops, self.gpu.sustained_tflops * TERA)
            self.attention_flops = min(self.attention_flops, self.gpu.sustained_tflops * TERA)
        self.device_bytes_per_s = self.gpu.memory_gbs * GIGA * c.memory_efficiency
        self.pcie_bytes_per_s = self.gpu.pcie_gbs * GIGA * c.pcie_efficiency
        rank_gbs = min(  # one rank's read bandwidth: its cores, or its share of every rank's
            self.host.read_gbs(self.rank_threads, c.stream_efficiency),
            self.host.read_gbs(self.rank_threads * self.tp, c.stream_efficiency) / self.tp,
        )
        self.host_bytes_per_s = rank_gbs * GIGA * c.kernel_bandwidth_efficiency
        self.host_flops = self.rank_threads * c.kernel_gflops_per_thread * GIGA
        # work per unit, per GPU unless stated
        self._params = layer_params(m) / self.tp  # weights of one layer
        self._activation_bytes = (6 * m.hidden_size + 3 * m.intermediate_size) * d / self.tp  # per token
        self._kv_bytes = 2 * m.kv_size * d / self.tp  # K and V of one token, one layer
        self._q_bytes = 2 * m.q_size * d / self.tp  # q read and o written by one decode row
        self._host_kv_bytes = 2 * m.kv_size * d / self.tp  # one rank's KV heads
        self._host_flops_per_kv = 4.0 * m.q_size / self.tp  # scores and weighted sum over its query heads
        self._staged_bytes = (2 * m.q_size + 2 * m.kv_size) * d / self.tp  # q, k, v in; o out
        self._head = m.vocab_size * m.hidden_size / self.tp  # LM head weights

    # ---- CostModel -----------------------------------------------------------------------

    def linear(self, num_tokens: int, pipelined: bool) -> float:
        flops = 2.0 * num_tokens * self._params
        nbytes = self._params * self.dtype_bytes + num_tokens * self._activation_bytes
        t = max(flops / self.matmul_flops, nbytes / self.device_bytes_per_s) + self.calibration.layer_overhead_s
        return t + 2 * self._allreduce(num_tokens * self.model.hidden_size * self.dtype_bytes)

    def prefill_attention(self, chunk_tokens: int, context_tokens: int) -> float:
        # causal: the chunk's i-th token attends to context - chunk + i + 1 positions
        pairs = chunk_tokens * (context_tokens - (chunk_tokens - 1) / 2.0)
        flops = 4.0 * pairs * self.model.q_size / self.tp
        nbytes = context_tokens * self._kv_bytes + chunk_tokens * self._q_bytes
        return max(flops / self.attention_flops, nbytes / self.device_bytes_per_s)

    def device_decode_attention(self, num_requests: int, kv_tokens: int, pipelined: bool) -> float:
        return (kv_tokens * self._kv_bytes + num_requests * self._q_bytes) / self.device_bytes_per_s

    def host_decode_attention(self, num_requests: int, kv_tokens: int, pipelined: bool) -> float:
        c = self.calibration
        kernel = max(
            kv_tokens * self._host_kv_bytes / self.host_bytes_per_s,
            kv_tokens * self._host_flops_per_kv / self.host_flops,
        )
        copies = 2 * c.copy_latency_s + num_requests * self._staged_bytes / self.pcie_bytes_per_s
        return kernel + copies + c.call_overhead_s

    def swap(self, num_blocks: int) -> float:
        nbytes = num_blocks * self.block_size * self._kv_bytes
        return self.calibration.copy_latency_s + nbytes / self.pcie_bytes_per_s

    def iteration(self, num_tokens: int, num_sampled: int) -> float:
        head_bytes = self._head * self.dtype_bytes
        logits = max(2.0 * num_sampled * self._head / self.matmul_flops, head_bytes / self.device_bytes_per_s)
        return logits + self.calibration.iteration_overhead_s

    # ---- helpers -------------------------------------------------------------------------

    def _allreduce(self, nbytes: float) -> float:
        """Ring all-reduce of nbytes over tp GPUs (0 with one GPU)."""
        if self.tp == 1:
            return 0.0
        c = self.calibration
        if self.gpu.nvlink_gbs <= 0:
            link = self.pcie_bytes_per_s
        else:
            link = self.gpu.nvlink_gbs * GIGA * c.nvlink_efficiency
        return c.allreduce_latency_s + 2.0 * (self.tp - 1) / self.tp * nbytes / link
