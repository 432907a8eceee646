"""The load-aware policy (pure: no torch, no clock): from predicted costs, each iteration,
which host decodes run and in which sub-batch, whether the plan runs pipelined or sequential,
how many prefill tokens fit a latency target, and whether a new prompt may start on the host.

Objective: output tokens per second (a plan's sampled tokens, one per decode and per final
prefill chunk, over its predicted time). Prefill tokens are work that every plan of the iteration
carries, not output: counting them would make a long prefill crowd out the host decodes that its
shadow hides for free. With `tpot_slo_ms` set, a plan predicted to exceed it is never chosen when
one that meets it exists. Host decodes may be left out of an iteration (deferred) when that raises
the rate or is needed to meet the target, but never `max_host_wait_iterations` times in a row:
every request makes progress. `pipeline = "on"` always runs a pipelined plan when one exists (the
split still follows the costs); "auto" picks the faster.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from neo_async.config import SchedulerConfig
from neo_async.sched.calibration import Calibration
from neo_async.sched.costs import CostModel
from neo_async.sched.predict import Load, pipelined_time, sequential_time
from neo_async.sched.plan import KVLocation, Plan, ScheduledChunk

# a deferral must raise the predicted rate by this share: predictions are not exact
_MIN_GAIN = 0.02
# the host lane's share of host decodes tried when pricing a load without its per-request split
_B1_SHARES = (0.25, 0.5, 0.75, 1.0)


@dataclass
class Choice:
    chunks: list[ScheduledChunk]  # to run, in the given order; sub_batch set when pipelined
    deferred_ids: list[str]
    is_pipelined: bool
    predicted_s: float

    @property
    def num_sampled(self) -> int:
        return sum(c.is_sampling for c in self.chunks)


@dataclass(frozen=True)
class HitPlacement:
    """Where a prompt with a longer cached prefix in the host pool than in the device pool starts,
    and how many of its host-cached blocks are copied to the device (device placement only)."""

    location: KVLocation
    num_copy_blocks: int
    predicted_s: float  # the chosen option's prefill, copies included


class Policy:
    def __init__(self, costs: CostModel, config: SchedulerConfig) -> None:
        self.costs = costs
        self.config = config
        self.slo_s = config.tpot_slo_ms / 1000 if config.tpot_slo_ms is not None else None
        self.calibration = Calibration()

    def observe(self, plan: Plan, measured_s: float) -> None:
        """A priced plan's measured time: corrects later predictions of its kind (when enabled);
        the kind read as the pricing reads it (prefill chunks in the plan's Load)."""
        if self.config.calibrate_costs and plan.predicted_s is not None:
            has_prefill = bool(Load.of(plan.chunks).prefills)
            self.calibration.observe(plan.is_pipelined, has_prefill, plan.predicted_s, measured_s)

    def _sequential_time(self, load: Load, swap_blocks: int = 0) -> float:
        return sequential_time(self.costs, load, swap_blocks) * self.calibration.factor(False, bool(load.prefills))

    def _pipelined_time(self, b0: Load, b1: Load, swap_blocks: int = 0) -> float:
        has_prefill = bool(b0.prefills or b1.prefills)
        return pipelined_time(self.costs, b0, b1, swap_blocks) * self.calibration.factor(True, has_prefill)

    # ---- the iteration's plan ------------------------------------------------------------

    def choose(self, chunks: list[ScheduledChunk], swap_blocks: int, waits: dict[str, int]) -> Choice:
        """The plan to run. waits: iterations each host decode has been deferred in a row."""
        host = sorted((c for c in chunks if c.is_host and c.is_decode), key=lambda c: -c.seq_len)
        deferrable = [c for c in host if waits.get(c.request_id, 0) < self.config.max_host_wait_iterations]
        candidates = []
        if self.config.pipeline != "off" and len(host) >= self.config.pipeline_min_host_decodes:
            candidates.append(self._pipelined(chunks, host, deferrable, swap_blocks))
        candidates = [c for c in candidates if c is not None]
        if not candidates or self.config.pipeline == "auto":
            candidates.append(self._sequential(chunks, deferrable, swap_blocks))
        return self._best(candidates)

    def _best(self, candidates: list[Choice]) -> Choice:
        if self.slo_s is not None:
            meeting = [c for c in candidates if c.predicted_s <= self.slo_s]
            if not meeting:
                return min(candidates, key=lambda c: c.predicted_s)
            candidates = meeting
        return max(candidates, key=lambda c: (c.num_sampled / max(c.predicted_s, 1e-9), -c.predicted_s))

    def _sequential(self, chunks: list[ScheduledChunk], deferrable: list[ScheduledChunk], swap_blocks: int) -> Choice:
        load = Load.of(chunks)
        price = lambda: self._sequential_time(load, swap_blocks)  # noqa: E731
        deferred = self._defer(load.num_sampled, deferrable, price, lambda c: load.remove_decode(c), lambda c: load.add(c))
        kept = [c for c in chunks if c.request_id not in deferred]
        return Choice(kept, sorted(deferred), False, price())

    def _pipelined(
        self, chunks: list[ScheduledChunk], host: list[ScheduledChunk], deferrable: list[ScheduledChunk], swap_blocks: int
    ) -> Choice | None:
        """Host decodes, longest first, each into the sub-batch where the layer is predicted
        shorter (ties, and the first, to b1); None when b0 or b1 would be empty."""
        host_ids = {c.request_id for c in host}
        loads = (Load.of(c for c in chunks if c.request_id not in host_ids), Load())
        side: dict[str, int] = {}
        for k, chunk in enumerate(host):
            times = []
            for j in (0, 1):
                loads[j].add(chunk)
                times.append(self._pipelined_time(*loads, swap_blocks))
                loads[j].remove_decode(chunk)
            side[chunk.request_id] = 1 if k == 0 or times[1] <= times[0] else 0  # b1 is never empty
            loads[side[chunk.request_id]].add(chunk)
        if not loads[0].num_tokens and len(host) > 1:  # b0 neither: it takes the shortest
            side[host[-1].request_id] = 0
            loads[1].remove_decode(host[-1])
            loads[0].add(host[-1])
        price = lambda: self._pipelined_time(*loads, swap_blocks)  # noqa: E731
        deferred = self._defer(
            loads[0].num_sampled + loads[1].num_sampled,
            deferrable,
            price,
            lambda c: loads[side[c.request_id]].remove_decode(c),
            lambda c: loads[side[c.request_id]].add(c),
            lambda: bool(loads[0].num_tokens and loads[1].num_tokens),
        )
        if not loads[0].num_tokens or not loads[1].num_tokens:
            return None
        kept = [dataclasses.replace(c, sub_batch=side.get(c.request_id, 0)) for c in chunks if c.request_id not in deferred]
        return Choice(kept, sorted(deferred), True, price())

    def _defer(self, num_sampled: int, deferrable: list[ScheduledChunk], price, remove, add, valid=lambda: True) -> set[str]:
        """Which deferrable host decodes to leave out: the longest k, for the k that gives the best
        rate (each k priced: the plan time is a max of lanes, flat until the slower lane changes,
        so one more deferral alone may gain nothing where several gain much). Above the latency
        target, the best rate among the k that meet it, else the shortest step. A k whose plan is
        not `valid` (a pipelined plan with an empty sub-batch) is never picked."""
        removed: list[ScheduledChunk] = []
        times = [price()]
        for chunk in deferrable:
            if num_sampled - len(removed) <= 1:
                break
            remove(chunk)
            removed.append(chunk)
            times.append(price() if valid() else math.inf)
        k = self._pick(num_sampled, times)
        for chunk in reversed(removed[k:]):
            add(chunk)
        return {c.request_id for c in removed[:k]}

    def _pick(self, num_sampled: int, times: list[float]) -> int:
        """The number of decodes to defer, given the plan time with k deferred (times[k])."""
        rates = [(num_sampled - k) / max(t, 1e-9) for k, t in enumerate(times)]
        options = range(len(times))
        if self.slo_s is not None and times[0] > self.slo_s:
            meeting = [k for k in options if times[k] <= self.slo_s]
            if not meeting:
                return min(options, key=lambda k: times[k])
            return max(meeting, key=lambda k: rates[k])
        best = max(options, key=lambda k: rates[k])
        return best if rates[best] > (1 + _MIN_GAIN) * rates[0] else 0

    # ---- admission ---------------------------------------------------------------------------

    def best_time(self, load: Load) -> float:
        """The faster of sequential and pipelined for a load whose host decodes may be split in
        any proportion (the per-request split unknown: shares of the total tried)."""
        best = self._sequential_time(load)
        if self.config.pipeline == "off" or load.host_decodes < self.config.pipeline_min_host_decodes:
            return best
        for share in _B1_SHARES:
            n1 = max(1, round(load.host_decodes * share))
            kv1 = load.host_kv_tokens * n1 // load.host_decodes
            b1 = Load()
            b1.add_decode(kv1, is_host=True, count=n1)
            b0 = load.copy()
            b0.add_decode(-kv1, is_host=True, count=-n1)
            if b0.num_tokens > 0:
                best = min(best, self._pipelined_time(b0, b1))
        return best

    def prefill_budget(self, decodes: Load, max_tokens: int, min_tokens: int) -> int:
        """The most prefill tokens (one chunk, no cached context assumed) that keep the step
        within the latency target next to these decodes; at least min_tokens (prefills must make
        progress), at most max_tokens. Without a target, max_tokens."""
        if self.slo_s is None or max_tokens <= min_tokens:
            return max_tokens

        def fits(n: int) -> bool:
            load = decodes.copy()
            load.num_tokens += n
            load.prefills.append((n, n))
            return self.best_time(load) <= self.slo_s

        low, high = min_tokens, max_tokens
        if fits(high):
            return high
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        return low

    def admit_to_host(self, steady: Load, num_tokens: int) -> bool:
        """Whether a prompt of num_tokens may start on the host, given the running requests'
        decode load: within the latency target, else when the predicted rate does not drop (with
        `host_admission = "room"`, always: the placement has found it room)."""
        if self.config.host_admission == "room":
            return True
        if not steady.num_tokens:
            return True  # nothing else runs: waiting longer cannot help
        grown = steady.copy()
        grown.add_decode(num_tokens, is_host=True)
        after = self.best_time(grown)
        if self.slo_s is not None:
            return after <= self.slo_s
        before = self.best_time(steady)
        return grown.num_sampled / after >= steady.num_sampled / before  # strict: a tolerance would compound

    # ---- placement of a prompt with a host hit -------------------------------------------------

    def prefill_time(self, num_tokens: int, context_tokens: int) -> float:
        """The rest of a prompt's prefill, num_tokens up to a cache of context_tokens, as one chunk
        alone in an iteration: what a cached prefix saves."""
        if num_tokens <= 0:
            return 0.0
        load = Load(num_tokens=num_tokens, num_sampled=1, prefills=[(num_tokens, context_tokens)])
        return self._sequential_time(load)

    def copy_time(self, num_blocks: int) -> float:
        """Copying num_blocks KV blocks between the pools, every layer."""
        return self.costs.num_layers * self.costs.swap(num_blocks) if num_blocks > 0 else 0.0

    def place_host_hit(
        self, num_tokens: int, block_size: int, device_hit: int, host_hit: int, num_blocks: int, fits_host: bool, can_copy: bool
    ) -> HitPlacement:
        """A prompt of num_tokens (num_blocks blocks in all) that the device has room for, with
        device_hit < host_hit cached blocks in the two pools. Options, each priced as its prefill
        and copies (the decode that follows is the same: on the device in all three):
        - device, recomputing what only the host holds: prefill after device_hit blocks;
        - device, copying the host's blocks past device_hit in (can_copy): prefill after host_hit
          blocks, plus the copy of host_hit - device_hit blocks;
        - host (fits_host): prefill after host_hit blocks, read in place; but the device has room,
          so the swap-in phase moves the request there at the next iteration, copying its blocks
          the device does not cache (num_blocks - device_hit).
        The cheapest wins; ties go to the earlier option (fewer copies)."""
        if not 0 <= device_hit < host_hit or num_tokens < 1:
            raise ValueError(f"a host hit longer than the device hit expected, got {device_hit} and {host_hit} blocks")
        after_host = self.prefill_time(num_tokens - host_hit * block_size, num_tokens)
        options = [HitPlacement(KVLocation.DEVICE, 0, self.prefill_time(num_tokens - device_hit * block_size, num_tokens))]
        if can_copy:
            copied = host_hit - device_hit
            options.append(HitPlacement(KVLocation.DEVICE, copied, after_host + self.copy_time(copied)))
        if fits_host:
            options.append(HitPlacement(KVLocation.HOST, 0, after_host + self.copy_time(num_blocks - device_hit)))
        return min(options, key=lambda o: o.predicted_s)
