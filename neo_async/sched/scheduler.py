"""Continuous batching over two KV pools, device and host (pure logic: no torch, no clock).

Each iteration hands out {request: num_tokens} under a token budget; every running request's
KV lives in exactly one pool, and its decode attention runs where its KV is.
0. (neo) swap in: host requests, oldest first, move back to the device while the device pool
   stays under the swap-in watermark (hysteresis against the swap-out below);
1. running requests, oldest first: a decode gets 1 token, an unfinished prefill the rest of
   its prompt (as much as the budget allows). When the device pool cannot hold a request's next
   tokens, the newest device request not yet scheduled is swapped out to the host (its blocks
   copied, not recomputed); only when that is impossible (host full, or no host pool) is the
   newest request of the pool preempted by recompute. Older requests always make progress;
2. waiting requests, first come first served, chunked to the remaining budget, placed where
   their KV fits (see `placement.py`); the queue never skips its head, and preempted requests
   rejoin at its head.

Prefix caching (when the pools have it on): a request admitted reuses the longest chain of
cached full blocks of its tokens in the pool it is placed in (a host-placed request reads host
blocks where they lie: no copy), and its prefill starts after them (one token at least is
computed); full blocks are cached as their K/V get computed. A cached device block evicted for
room is demoted to a free host block (copied with the swap-outs) when the host pool has one. In
neo, a prompt the device has room for with a longer hit in the host pool is placed by the
policy's prices (recompute on the device, copy the host's blocks in with the swap-ins, or the
host), by a fixed rule without a cost model (the host, when it fits).

Offload modes: "off" (device only, recompute preemption: the baseline), "neo" (both pools,
placement decided every iteration), "full" (every request on the host; the device runs the
linear layers and prefill attention only).

With a cost model, the policy (`policy.py`) shapes each plan: pipelined (two sub-batches the
executor overlaps per layer) or sequential, host decodes deferred within a bound, prefill tokens
within a latency target, admission to the host by predicted rate. Without one, pipeline "on"
splits by KV tokens (`pipeline.py`).
"""

from __future__ import annotations

from collections import deque

from neo_async.config import SchedulerConfig
from neo_async.kv.block_pool import BlockPool
from neo_async.sched.costs import CostModel
from neo_async.sched.pipeline import split_sub_batches
from neo_async.sched.policy import Policy
from neo_async.sched.predict import Load
from neo_async.sched.placement import Placement
from neo_async.sched.plan import ExecuteOutput, KVLocation, Plan, ScheduledChunk, coalesce
from neo_async.sched.request import Request, RequestStatus

DEVICE, HOST = KVLocation.DEVICE, KVLocation.HOST
DEMOTING = "\0demoting"  # holds the host blocks demoted this iteration until the plan is built


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        device_pool: BlockPool,
        host_pool: BlockPool | None = None,
        offload: str = "off",
        costs: CostModel | None = None,
    ) -> None:
        self.config = config
        self.policy = Policy(costs, config) if costs is not None else None
        # host decodes left out of consecutive iterations so far, by request id (the policy's bound)
        self.host_waits: dict[str, int] = {}
        self.host_pool = host_pool if host_pool is not None else BlockPool(0, device_pool.block_size, "host")
        self.pools = {DEVICE: device_pool, HOST: self.host_pool}
        self.device_pool = device_pool
        self.placement = Placement(offload, device_pool, self.host_pool, config.swap_in_watermark)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions_total = 0
        self.num_swapped_out_total = 0
        self.num_swapped_in_total = 0
        self.num_prefix_query_tokens_total = 0  # prompt tokens looked up in the prefix cache
        self.num_prefix_hit_tokens_total = {DEVICE: 0, HOST: 0}  # of those, found cached, by pool
        self.num_demoted_blocks_total = 0
        # of the host hits, tokens copied to the device for a device-placed request (not read in place)
        self.num_prefix_copied_tokens_total = 0
        # cached device blocks evicted this iteration before a copy-in, kept for `_demote`
        self._evicted: list = []
        # (request id, src block, dst block) of this iteration's swaps, until the plan is built
        self._out_pairs: list[tuple[str, int, int]] = []
        self._in_pairs: list[tuple[str, int, int]] = []

    @property
    def num_unfinished(self) -> int:
        return len(self.requests)

    @property
    def num_running_on_host(self) -> int:
        return sum(r.location is HOST for r in self.running)

    def capacity_error(self, max_total_tokens: int) -> str | None:
        """Why a request of up to `max_total_tokens` tokens can never run, or None if it can."""
        capacity = self.placement.capacity_tokens()
        if max_total_tokens <= capacity:
            return None
        return (
            f"request needs up to {max_total_tokens} tokens of KV cache, more than any KV pool holds "
            f"({self.placement.describe_capacity()}); lower max_tokens or the prompt"
        )

    def add(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        error = self.capacity_error(request.max_total_tokens)
        if error is not None:
            raise ValueError(error)
        request.status = RequestStatus.WAITING
        request.location = None
        self.requests[request.request_id] = request
        self.waiting.append(request)

    # ---- the iteration --------------------------------------------------------------------

    def schedule(self) -> Plan:
        plan = Plan()
        self._out_pairs, self._in_pairs, self._evicted = [], [], []
        self._swap_in(plan)
        self.device_pool.take_evictions()  # a swap-in's destination: never demoted (copy order)
        budget = self.config.max_num_batched_tokens
        prefill_budget = self._prefill_budget(budget)
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_uncomputed_tokens, budget)
            if num_new > 1:
                num_new = max(1, min(num_new, prefill_budget))
                prefill_budget -= num_new
            if not self._reserve(request, num_new, index, plan):
                continue  # the request preempted itself; the next one moved into its index
            plan.chunks.append(self._chunk(request, num_new))
            budget -= num_new
            index += 1
        self._admit(plan, min(budget, max(0, prefill_budget)))
        self._demote(plan)
        plan.swap_out = coalesce([s for _, s, _ in self._out_pairs], [d for _, _, d in self._out_pairs])
        plan.swap_in = coalesce([s for _, s, _ in self._in_pairs], [d for _, _, d in self._in_pairs])
        self.host_pool.free(DEMOTING)
        self.host_pool.take_evictions()  # host blocks evicted are dropped, not demoted
        self._shape(plan)
        return plan

    def _admit(self, plan: Plan, budget: int) -> None:
        """Waiting requests, first come first served, chunked to the budget, where they fit."""
        is_host_round = False
        steady = self._steady_load() if self.policy is not None else None
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            hits = self._prefix_hits(request)
            location = self.placement.place(request, is_host_round, hits)
            if location is None:
                break
            num_copy = 0
            is_by_hit = False  # on the host although the device has room: the host holds more of the prompt
            if location is DEVICE and self.placement.offload == "neo" and len(hits[HOST]) > len(hits[DEVICE]):
                location, num_copy = self._place_host_hit(request, hits, steady)
                is_by_hit = location is HOST
            if location is HOST and steady is not None:
                if not is_by_hit and not self.policy.admit_to_host(steady, request.num_tokens):
                    break  # predicted to slow the steady state: wait for the device
                steady.add_decode(request.num_tokens, is_host=True)
            is_host_round = is_host_round or (location is HOST and not is_by_hit)
            pool = self.pools[location]
            if pool.enable_caching and request.params.prompt_logprobs is None:
                self.num_prefix_query_tokens_total += request.num_tokens
                self.num_prefix_hit_tokens_total[location] += len(hits[location]) * pool.block_size
            pool.take_prefix(request.request_id, hits[location])
            request.num_computed_tokens = len(hits[location]) * pool.block_size
            if num_copy:
                self._copy_in(request, hits, num_copy, plan)
            num_new = min(request.num_uncomputed_tokens, budget)
            pool.grow(request.request_id, request.num_computed_tokens + num_new)
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            request.location = location
            self.running.append(request)
            plan.chunks.append(self._chunk(request, num_new))
            budget -= num_new

    def _place_host_hit(
        self, request: Request, hits: dict[KVLocation, list[int]], steady: Load | None
    ) -> tuple[KVLocation, int]:
        """neo, the device has room for a prompt whose cached prefix is longer in the host pool:
        (where it starts, host blocks to copy in). With a cost model, the policy's cheapest of
        recomputing on the device, copying the host's blocks in, or the host when it fits there
        and the policy admits it (`place_host_hit`); without, the fixed rule: the host, where the
        hit is read in place, when it fits there.
        A copy-in is written before the plan's swap-outs read their device blocks (swap-ins copy
        first), so a plan that swapped a request out this iteration copies nothing in: the
        blocks it freed could be the copies' destinations."""
        fits_host = self.placement.fits_host(request, hits[HOST])
        if fits_host and steady is not None:
            fits_host = self.policy.admit_to_host(steady, request.num_tokens)
        if self.policy is None:
            return (HOST if fits_host else DEVICE), 0
        choice = self.policy.place_host_hit(
            request.num_tokens, self.device_pool.block_size, len(hits[DEVICE]), len(hits[HOST]),
            self.device_pool.blocks_for_tokens(request.num_tokens), fits_host, can_copy=not self._out_pairs,
        )
        return choice.location, choice.num_copy_blocks

    def _copy_in(self, request: Request, hits: dict[KVLocation, list[int]], num_copy: int, plan: Plan) -> None:
        """Give a device-placed request copies of the host-cached blocks past its device hit (cached
        in the device pool at once: the swap-in copy writes them before this plan reads them). The
        cached device blocks this evicts are the copies' destinations: never demoted (the swap-in
        would overwrite them before the demotion read them)."""
        first = len(hits[DEVICE])
        sources = hits[HOST][first : first + num_copy]
        keys = [self.host_pool.cached_key(block) for block in sources]
        self._evicted.extend(self.device_pool.take_evictions())
        copies = self.device_pool.grow_copied(request.request_id, keys)
        self.device_pool.take_evictions()  # dropped: overwritten by the copy
        self._in_pairs.extend((request.request_id, s, d) for s, d in zip(sources, copies))
        request.num_computed_tokens += num_copy * self.device_pool.block_size
        self.num_prefix_hit_tokens_total[HOST] += num_copy * self.device_pool.block_size
        self.num_prefix_copied_tokens_total += num_copy * self.device_pool.block_size
        plan.num_copied_in_blocks += num_copy

    def _prefix_hits(self, request: Request) -> dict[KVLocation, list[int]]:
        """The cached blocks a waiting request would reuse in each pool: never its last token
        (one is always computed), none when it asks for prompt logprobs (every prompt token
        must be scored)."""
        if request.params.prompt_logprobs is not None:
            return {DEVICE: [], HOST: []}
        max_blocks = (request.num_tokens - 1) // self.device_pool.block_size
        return {location: pool.match(request.token_ids, max_blocks) for location, pool in self.pools.items()}

    def _demote(self, plan: Plan) -> None:
        """Copy the cached device blocks evicted this iteration to free host blocks (neo only).
        The copies run with the swap-outs, before any chunk writes the evicted blocks."""
        evicted, self._evicted = self._evicted + self.device_pool.take_evictions(), []
        if self.placement.offload != "neo" or not self.host_pool.enable_caching:
            return
        for key, block in evicted:
            host_block = self.host_pool.adopt(DEMOTING, key)
            if host_block is not None:
                self._out_pairs.append((DEMOTING, block, host_block))
                self.num_demoted_blocks_total += 1
                plan.num_demoted_blocks += 1

    def _shape(self, plan: Plan) -> None:
        """Mode, sub-batches and deferred host decodes: the policy's choice with a cost model;
        without one, the fixed split when pipeline is "on", else sequential."""
        if self.policy is None:
            if self.config.pipeline == "on":
                split = split_sub_batches(plan.chunks, self.config.pipeline_min_host_decodes)
                if split is not None:
                    plan.chunks, plan.is_pipelined = split, True
            return
        swap_blocks = Plan.num_run_blocks(plan.swap_out) + Plan.num_run_blocks(plan.swap_in)
        choice = self.policy.choose(plan.chunks, swap_blocks, self.host_waits)
        plan.chunks, plan.is_pipelined = choice.chunks, choice.is_pipelined
        plan.deferred_ids, plan.predicted_s = choice.deferred_ids, choice.predicted_s
        for chunk in plan.chunks:
            self.host_waits.pop(chunk.request_id, None)
        for request_id in choice.deferred_ids:
            self.host_waits[request_id] = self.host_waits.get(request_id, 0) + 1

    def _prefill_budget(self, budget: int) -> int:
        """Prefill tokens this iteration: all of the budget, or with a latency target what the
        policy predicts fits next to the running decodes (one block at least)."""
        if self.policy is None or self.config.tpot_slo_ms is None:
            return budget
        decodes = Load()
        for request in self.running:
            if request.num_uncomputed_tokens == 1 and request.num_computed_tokens > 0:
                decodes.add_decode(request.num_tokens, is_host=request.location is HOST)
        return self.policy.prefill_budget(decodes, budget, min(budget, self.device_pool.block_size))

    def _steady_load(self) -> Load:
        """Every running request as one decode at its current length: the load that admission
        adds to."""
        load = Load()
        for request in self.running:
            load.add_decode(request.num_tokens, is_host=request.location is HOST)
        return load

    def _swap_in(self, plan: Plan) -> None:
        for request in [r for r in self.running if r.location is HOST]:
            if not self.placement.can_swap_in(request, len(self.host_pool.block_ids(request.request_id))):
                break  # oldest first: a younger host request never jumps the queue
            self._move(request, HOST, DEVICE, self._in_pairs)
            self.num_swapped_in_total += 1
            plan.swapped_in_ids.append(request.request_id)

    def _reserve(self, request: Request, num_new: int, index: int, plan: Plan) -> bool:
        """Grow the request's blocks, making room by swap-out or, as a last resort, preemption
        of the newest requests not yet scheduled (running[index:])."""
        target = request.num_computed_tokens + num_new
        while not self.pools[request.location].can_grow(request.request_id, target):
            victim = self._newest(request.location, index, plan)
            to_run = target if victim is request else None
            if victim is not None and victim.location is DEVICE and self.placement.can_swap_out(victim, to_run):
                self._move(victim, DEVICE, HOST, self._out_pairs)
                self.num_swapped_out_total += 1
                plan.swapped_out_ids.append(victim.request_id)
                continue
            victim = victim or self._newest(request.location, index, None)
            assert victim is not None  # the request itself is always a candidate
            self._preempt(victim, plan)
            if victim is request:
                return False
        self.pools[request.location].grow(request.request_id, target)
        return True

    def _newest(self, location: KVLocation, index: int, plan: Plan | None) -> Request | None:
        """The newest request in `location` among running[index:]; with a plan, one that was not
        swapped in this iteration (those are never swapped straight back out)."""
        swapped_in = set(plan.swapped_in_ids) if plan is not None else set()
        for request in reversed(self.running[index:]):
            if request.location is location and request.request_id not in swapped_in:
                return request
        return None

    def _move(self, request: Request, src: KVLocation, dst: KVLocation, pairs: list[tuple[str, int, int]]) -> None:
        """Copy the request's blocks to the other pool; its computed full blocks already cached
        there are shared instead of copied."""
        src_ids = list(self.pools[src].block_ids(request.request_id))
        dst_pool = self.pools[dst]
        hit = dst_pool.match(request.token_ids, request.num_computed_tokens // dst_pool.block_size)
        dst_pool.take_prefix(request.request_id, hit)
        dst_ids = dst_pool.grow(request.request_id, len(src_ids) * dst_pool.block_size)
        self.pools[src].free(request.request_id)
        pairs.extend((request.request_id, s, d) for s, d in zip(src_ids[len(hit) :], dst_ids))
        request.location = dst

    def _preempt(self, request: Request, plan: Plan) -> None:
        self.running.remove(request)
        self._release(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
        self.num_preemptions_total += 1
        plan.preempted_ids.append(request.request_id)

    def _release(self, request: Request) -> None:
        """Free the request's blocks and cancel its copies planned this iteration."""
        if request.location is not None:
            self.pools[request.location].free(request.request_id)
        self._out_pairs = [p for p in self._out_pairs if p[0] != request.request_id]
        self._in_pairs = [p for p in self._in_pairs if p[0] != request.request_id]
        request.location = None

    def _chunk(self, request: Request, num_new: int) -> ScheduledChunk:
        start = request.num_computed_tokens
        assert request.location is not None
        return ScheduledChunk(
            request_id=request.request_id,
            token_ids=request.token_ids[start : start + num_new],
            start_pos=start,
            block_ids=list(self.pools[request.location].block_ids(request.request_id)),
            is_sampling=start + num_new == request.num_tokens,
            params=request.params,
            prompt_token_ids=request.prompt_token_ids,
            output_token_ids=request.output_token_ids,
            location=request.location,
        )

    def update(self, plan: Plan, output: ExecuteOutput) -> list[Request]:
        """Advance counters; append sampled tokens. Returns the requests that got a token.
        A measured plan (output.execute_s) corrects the policy's later predictions."""
        if self.policy is not None and output.execute_s is not None:
            self.policy.observe(plan, output.execute_s)
        advanced = []
        for chunk in plan.chunks:
            request = self.requests.get(chunk.request_id)
            if request is None or request.status is not RequestStatus.RUNNING:
                continue
            request.num_computed_tokens = chunk.seq_len
            if request.location is not None:
                self.pools[request.location].commit(request.request_id, request.token_ids, request.num_computed_tokens)
            token = output.sampled_token_ids.get(chunk.request_id)
            if token is not None:
                request.token_ids.append(token)
                advanced.append(request)
        return advanced

    def finish(self, request_id: str) -> Request | None:
        """Drop a request (finished or aborted) and free its blocks; unknown ids are ignored."""
        self.host_waits.pop(request_id, None)
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        self._release(request)
        request.status = RequestStatus.FINISHED
        return request

    def check(self) -> None:
        """Raise AssertionError if the pools or any request's location disagree."""
        for location, pool in self.pools.items():
            pool.check()
            for owner in pool.owners():
                request = self.requests.get(owner)
                assert request is not None and request.status is RequestStatus.RUNNING, f"{pool.name}: {owner} is not running"
                assert request.location is location, f"{owner} holds {pool.name} blocks but lives in {request.location}"
        for request in self.running:
            assert request.location is not None, f"running request {request.request_id} has no location"
            held = len(self.pools[request.location].block_ids(request.request_id))
            needed = self.device_pool.blocks_for_tokens(request.num_computed_tokens)
            assert held >= needed, f"{request.request_id} holds {held} blocks for {request.num_computed_tokens} tokens"
            pool = self.pools[request.location]
            first_written = request.num_computed_tokens // pool.block_size
            for block in pool.block_ids(request.request_id)[first_written:]:
                assert pool.is_private(block), f"{request.request_id} will write block {block}, which is shared or cached"
        for request in self.waiting:
            assert request.location is None and request.num_computed_tokens == 0, f"waiting {request.request_id} holds KV"
        known = {r.request_id for r in self.running} | {r.request_id for r in self.waiting}
        assert known == set(self.requests), "request sets disagree"
