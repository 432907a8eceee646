"""Where a request's KV cache goes: admission, swap-out and swap-in rules (pure logic).

- off: everything on the device; a prompt is admitted when its whole KV fits next to one
  block of growth for each running request (admitting on the first chunk alone let a long
  prompt in that the next decode block then preempted, over and over: recompute thrash).
- full: everything on the host.
- neo: a prompt goes to the device when its whole KV fits there, next to one block of growth
  for each running device request; else to the host when it fits there (and once one prompt
  of an admission round goes to the host, the later ones do too, so that the device's free
  blocks are not taken by younger prompts); a prompt that fits neither waits. A request is
  never placed in a pool that cannot hold its longest possible sequence. Swap-out needs room
  in the host pool; swap-in moves a request back while the device pool, with it and one more
  block of growth, stays under `swap_in_watermark` of its blocks.

With prefix caching, a pool's cached blocks of the prompt count as held already. In neo, a
prompt the device has room for whose cached prefix is longer in the host pool is placed by the
scheduler (`Scheduler._place_host_hit`): the policy's cost comparison with a cost model, else the
fixed rule (the host, which reads its hit in place, when it fits there).
"""

from __future__ import annotations

from neo_async.config import OFFLOAD_MODES
from neo_async.kv.block_pool import BlockPool
from neo_async.sched.plan import KVLocation
from neo_async.sched.request import Request


class Placement:
    def __init__(self, offload: str, device_pool: BlockPool, host_pool: BlockPool, swap_in_watermark: float) -> None:
        if offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {offload!r}")
        if offload == "full" and host_pool.num_blocks == 0:
            raise ValueError("offload='full' needs a host KV pool: set host_kv_tokens > 0 (or 'auto')")
        self.offload = offload if host_pool.num_blocks > 0 else "off"
        self.device_pool = device_pool
        self.host_pool = host_pool
        self.swap_in_watermark = swap_in_watermark

    @property
    def uses_device(self) -> bool:
        return self.offload != "full"

    @property
    def uses_host(self) -> bool:
        return self.offload != "off"

    def _capacity(self, pool: BlockPool) -> int:
        return pool.num_blocks * pool.block_size

    def capacity_tokens(self) -> int:
        """The longest sequence any pool in use can hold."""
        return max(
            self._capacity(self.device_pool) if self.uses_device else 0,
            self._capacity(self.host_pool) if self.uses_host else 0,
        )

    def describe_capacity(self) -> str:
        parts = []
        if self.uses_device:
            parts.append(f"device pool {self._capacity(self.device_pool)} tokens")
        if self.uses_host:
            parts.append(f"host pool {self._capacity(self.host_pool)} tokens")
        return ", ".join(parts)

    def place(self, request: Request, is_host_round: bool, hits: dict[KVLocation, list[int]] | None = None) -> KVLocation | None:
        """Where a waiting request starts; None = wait. `hits`: the cached blocks it would reuse
        in each pool, which it needs no new block for."""
        hits = hits or {}
        device_hit, host_hit = hits.get(KVLocation.DEVICE, []), hits.get(KVLocation.HOST, [])
        if self.offload == "off":
            fits = self._fits_whole(self.device_pool, request, self._num_owners(self.device_pool), device_hit)
            return KVLocation.DEVICE if fits else None
        if self.offload == "full":
            return KVLocation.HOST if self._fits_whole(self.host_pool, request, 0, host_hit) else None
        if not is_host_round and self._fits_whole(self.device_pool, request, self._num_owners(self.device_pool), device_hit):
            return KVLocation.DEVICE
        if self._fits_whole(self.host_pool, request, self._num_owners(self.host_pool), host_hit):
            return KVLocation.HOST
        return None

    def fits_host(self, request: Request, host_hit: list[int]) -> bool:
        """Whether the whole prompt fits the host pool next to one block of growth per host request."""
        return self.uses_host and self._fits_whole(self.host_pool, request, self._num_owners(self.host_pool), host_hit)

    def _fits_whole(self, pool: BlockPool, request: Request, reserve: int, hit: list[int]) -> bool:
        if request.max_total_tokens > self._capacity(pool):
            return False
        return pool.num_blocks_to_hold(request.num_tokens, hit) + reserve <= pool.num_free

    @staticmethod
    def _num_owners(pool: BlockPool) -> int:
        return len(pool.owners())

    def can_swap_out(self, request: Request, num_tokens: int | None) -> bool:
        """Whether the host pool can take the request's device blocks (and `num_tokens` in all,
        when it is to run on the host this iteration)."""
        if self.offload != "neo" or request.max_total_tokens > self._capacity(self.host_pool):
            return False
        num_blocks = len(self.device_pool.block_ids(request.request_id))
        if num_tokens is not None:
            num_blocks = max(num_blocks, self.host_pool.blocks_for_tokens(num_tokens))
        return num_blocks <= self.host_pool.num_free

    def can_swap_in(self, request: Request, num_blocks: int) -> bool:
        if self.offload != "neo" or request.max_total_tokens > self._capacity(self.device_pool):
            return False
        used = self.device_pool.num_used + num_blocks + 1
        return used <= self.swap_in_watermark * self.device_pool.num_blocks
