"""Continuous batching with chunked prefill and preemption by recompute (pure logic).

Each iteration hands out {request: num_tokens} under a token budget:
1. running requests first, oldest first: a decode gets 1 token, an unfinished prefill the
   rest of its prompt (as much as the budget allows); when the pool cannot hold a running
   request's next tokens, the newest running request is preempted (its blocks freed, its
   tokens recomputed later), so older requests always make progress;
2. then waiting requests, first come first served, chunked to the remaining budget; the
   queue never skips its head (no starvation), and preempted requests rejoin at its head.
"""

from __future__ import annotations

from collections import deque

from neo_async.config import SchedulerConfig
from neo_async.kv.block_pool import BlockPool
from neo_async.sched.plan import ExecuteOutput, Plan, ScheduledChunk
from neo_async.sched.request import Request, RequestStatus


class Scheduler:
    def __init__(self, config: SchedulerConfig, pool: BlockPool) -> None:
        self.config = config
        self.pool = pool
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions_total = 0

    @property
    def num_unfinished(self) -> int:
        return len(self.requests)

    def add(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        capacity = self.pool.num_blocks * self.pool.block_size
        if request.max_total_tokens > capacity:
            raise ValueError(
                f"request needs up to {request.max_total_tokens} tokens of KV cache, "
                f"more than the whole pool holds ({capacity}); lower max_tokens or the prompt"
            )
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def schedule(self) -> Plan:
        plan = Plan()
        budget = self.config.max_num_batched_tokens
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_uncomputed_tokens, budget)
            if not self._reserve(request, num_new, plan):
                break  # the request preempted itself: everything after it is gone too
            plan.chunks.append(self._chunk(request, num_new))
            budget -= num_new
            index += 1
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            num_new = min(request.num_uncomputed_tokens, budget)
            if not self.pool.can_grow(request.request_id, request.num_computed_tokens + num_new):
                break
            self.pool.grow(request.request_id, request.num_computed_tokens + num_new)
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            plan.chunks.append(self._chunk(request, num_new))
            budget -= num_new
        return plan

    def _reserve(self, request: Request, num_new: int, plan: Plan) -> bool:
        """Grow the request's blocks, preempting the newest running requests as needed."""
        target = request.num_computed_tokens + num_new
        while not self.pool.can_grow(request.request_id, target):
            victim = self.running[-1]
            self._preempt(victim, plan)
            if victim is request:
                return False
        self.pool.grow(request.request_id, target)
        return True

    def _preempt(self, request: Request, plan: Plan) -> None:
        self.running.remove(request)
        self.pool.free(request.request_id)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
        self.num_preemptions_total += 1
        plan.preempted_ids.append(request.request_id)

    def _chunk(self, request: Request, num_new: int) -> ScheduledChunk:
        start = request.num_computed_tokens
        return ScheduledChunk(
            request_id=request.request_id,
            token_ids=request.token_ids[start : start + num_new],
            start_pos=start,
            block_ids=list(self.pool.block_ids(request.request_id)),
            is_sampling=start + num_new == request.num_tokens,
            params=request.params,
            prompt_token_ids=request.prompt_token_ids,
            output_token_ids=request.output_token_ids,
        )

    def update(self, plan: Plan, output: ExecuteOutput) -> list[Request]:
        """Advance counters; append sampled tokens. Returns the requests that got a token."""
        advanced = []
        for chunk in plan.chunks:
            request = self.requests.get(chunk.request_id)
            if request is None or request.status is not RequestStatus.RUNNING:
                continue
            request.num_computed_tokens = chunk.seq_len
            token = output.sampled_token_ids.get(chunk.request_id)
            if token is not None:
                request.token_ids.append(token)
                advanced.append(request)
        return advanced

    def finish(self, request_id: str) -> Request | None:
        """Drop a request (finished or aborted) and free its blocks; unknown ids are ignored."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        self.pool.free(request_id)
        request.status = RequestStatus.FINISHED
        return request

    def check(self) -> None:
        self.pool.check()
        owners = set(self.pool.owners())
        running = {r.request_id for r in self.running}
        assert owners <= running, f"blocks held by requests not running: {owners - running}"
        assert running | {r.request_id for r in self.waiting} == set(self.requests), "request sets disagree"
