"""A cost model with simple closed forms, for scheduler tests that need predictable costs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SyntheticCosts:
    """Per-layer seconds: linear a + b*T (times pipelined_slowdown in a pipelined step), decode
    attention per request + per KV token on each side, swaps per block, a fixed iteration cost."""

    num_layers: int = 4
    linear_base: float = 1e-4
    linear_per_token: float = 1e-5
    pipelined_slowdown: float = 1.0
    prefill_per_token_ctx: float = 1e-9
    device_per_request: float = 1e-6
    device_per_kv: float = 1e-8
    host_per_request: float = 2e-6
    host_per_kv: float = 1e-7
    swap_per_block: float = 1e-6
    iteration_s: float = 1e-3

    def linear(self, num_tokens: int, pipelined: bool) -> float:
        t = self.linear_base + self.linear_per_token * num_tokens
        return t * self.pipelined_slowdown if pipelined else t

    def prefill_attention(self, chunk_tokens: int, context_tokens: int) -> float:
        return self.prefill_per_token_ctx * chunk_tokens * context_tokens

    def device_decode_attention(self, num_requests: int, kv_tokens: int, pipelined: bool) -> float:
        return self.device_per_request * num_requests + self.device_per_kv * kv_tokens

    def host_decode_attention(self, num_requests: int, kv_tokens: int, pipelined: bool) -> float:
        return self.host_per_request * num_requests + self.host_per_kv * kv_tokens

    def swap(self, num_blocks: int) -> float:
        return self.swap_per_block * num_blocks

    def iteration(self, num_tokens: int, num_sampled: int) -> float:
        return self.iteration_s
