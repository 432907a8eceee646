"""Tensor-parallel ranks driven from the engine's process: rank 0 is a `Worker` here, ranks
1..N-1 are spawned processes (torch.multiprocessing), all joined by torch.distributed (gloo on
the CPU, NCCL on GPUs). Every plan is broadcast to the ranks (an object broadcast over a gloo
group of its own) and run by all of them in lockstep; rank 0's sampled tokens are the step's.
The start-up profile runs the same way: every rank measures at once, rank 0 deciding how often
each point is timed, so the collectives inside the measured calls pair up; rank 0's tables are
the policy's.

Each rank owns a share of the cores (CPU affinity, so torch's pool and the host kernel's team
size themselves to it) and its share of both KV pools (its KV heads); the block tables are the
engine's, the same on every rank.

Failure: a rank that exits is seen by a monitor thread within a fraction of a second; the next
step (or the one in flight, when its collective breaks or times out) raises `RankFailedError`,
and `failure` says which rank and how, so the service can report itself unhealthy."""

from __future__ import annotations

import dataclasses
import datetime
import os
import threading

import structlog
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from neo_async.config import Config
from neo_async.model.tensor_parallel import destroy_process_group, free_init_method, init_process_group
from neo_async.profile.measure import profile_worker
from neo_async.runner.worker import Worker
from neo_async.sampling_params import SamplingParams
from neo_async.sched.cost_tables import MeasuredCosts
from neo_async.sched.plan import ExecuteOutput, Plan

log = structlog.get_logger("neo_async.runner.rank_group")

PLAN_WAIT = datetime.timedelta(days=7)  # ranks wait for the next plan this long (an idle server)
STEP_TIMEOUT_S = 60.0  # a collective inside a step (or joining) that takes longer fails it
_LEAN_PARAMS = SamplingParams()


@dataclasses.dataclass(frozen=True)
class ProfileRequest:
    """Sent instead of a plan: every rank profiles its Worker now, in lockstep."""

    quick: bool


class RankFailedError(RuntimeError):
    """A tensor-parallel rank died or failed a step; the ranks cannot run another step."""


def core_shares(cores: list[int], num_ranks: int) -> list[list[int]]:
    """Each rank's cores: consecutive equal shares of `cores` (a share may be shared when there
    are fewer cores than ranks)."""
    if len(cores) < num_ranks:
        return [[cores[r % len(cores)]] for r in range(num_ranks)]
    per = len(cores) // num_ranks
    return [cores[r * per : (r + 1) * per] for r in range(num_ranks)]


def rank_device(rank: int) -> torch.device:
    return torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")


def lean(plan: Plan) -> Plan:
    """The plan as ranks other than 0 need it: without what only sampling and prompt scoring
    read (prompt and output token lists, sampling parameters), so a step's broadcast does not
    grow with the prompts."""
    chunks = [dataclasses.replace(c, params=_LEAN_PARAMS, prompt_token_ids=[], output_token_ids=[]) for c in plan.chunks]
    return dataclasses.replace(plan, chunks=chunks)


class RankGroup:
    """The engine's data plane over N tensor-parallel ranks: what `Worker` offers the engine."""

    def __init__(self, config: Config) -> None:
        n = config.model.tensor_parallel_size
        if torch.cuda.is_available() and torch.cuda.device_count() < n:
            raise ValueError(f"tensor_parallel_size {n} needs {n} GPUs; {torch.cuda.device_count()} visible")
        shares = core_shares(sorted(os.sched_getaffinity(0)), n)
        init_method = free_init_method()
        context = mp.get_context("spawn")
        self.failure: str | None = None
        self._closing = False
        self._procs = [
            context.Process(target=run_rank, args=(r, n, init_method, config, shares[r]), name=f"neo-rank-{r}", daemon=True)
            for r in range(1, n)
        ]
        for proc in self._procs:
            proc.start()
        self._affinity = os.sched_getaffinity(0)  # given back by close()
        os.sched_setaffinity(0, shares[0])
        try:
            shard = init_process_group(0, n, init_method, rank_device(0), timeout_s=STEP_TIMEOUT_S)
            self._plans = dist.new_group(backend="gloo", timeout=PLAN_WAIT)
            self.worker = Worker(config.model, config.cache, rank_device(0), shard)
        except BaseException:
            self._stop_ranks(kill=True)
            destroy_process_group()
            os.sched_setaffinity(0, self._affinity)
            raise
        threading.Thread(target=self._monitor, name="neo-rank-monitor", daemon=True).start()
        w = self.worker
        self.device, self.threads, self.shard, self.load_s = w.device, w.threads, w.shard, w.load_s
        self.spec, self.tokenizer, self.max_model_len = w.spec, w.tokenizer, w.max_model_len  # spec: rank 0's heads
        self.block_size, self.num_device_blocks, self.num_host_blocks = w.block_size, w.num_device_blocks, w.num_host_blocks
        self.bytes_per_block = w.bytes_per_block

    def execute(self, plan: Plan) -> ExecuteOutput:
        self._raise_if_failed()
        try:
            dist.broadcast_object_list([lean(plan)], src=0, group=self._plans)
            return self.worker.execute(plan)
        except Exception as e:
            self.failure = self.failure or f"a tensor-parallel step failed on rank 0: {e!r}"
            raise RankFailedError(self.failure) from e

    def profile(self, config: Config, quick: bool) -> MeasuredCosts:
        """The cost tables, measured on every rank at once (rank 0's are returned)."""
        self._raise_if_failed()
        dist.broadcast_object_list([ProfileRequest(quick)], src=0, group=self._plans)
        return profile_worker(self.worker, config, quick=quick, agree=lambda decision: agree(decision, self._plans))

    def close(self) -> None:
        """Stops every rank (they finish the plan in flight first) and leaves the group."""
        if self._closing:
            return
        self._closing = True
        self.worker.close()
        if self.failure is None:
            try:
                dist.broadcast_object_list([None], src=0, group=self._plans)
            except Exception:  # noqa: BLE001 - a rank already gone: it is stopped below
                pass
        self._stop_ranks(kill=self.failure is not None)
        destroy_process_group()
        os.sched_setaffinity(0, self._affinity)

    def _raise_if_failed(self) -> None:
        if self.failure is not None:
            raise RankFailedError(self.failure)

    def _monitor(self) -> None:
        while not self._closing:
            for proc in self._procs:
                if proc.exitcode is not None and not self._closing and self.failure is None:
                    self.failure = f"tensor-parallel rank {proc.name} exited with code {proc.exitcode}"
                    log.error("rank_failed", rank=proc.name, exitcode=proc.exitcode)
            if self.failure is not None:
                return
            threading.Event().wait(0.2)

    def _stop_ranks(self, kill: bool) -> None:
        for proc in self._procs:
            if kill and proc.is_alive():
                proc.kill()
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def run_rank(rank: int, size: int, init_method: str, config: Config, cores: list[int]) -> None:
    """A spawned rank: joins the group, builds its Worker, runs every broadcast plan until the
    engine sends None."""
    os.sched_setaffinity(0, cores)
    device = rank_device(rank)
    shard = init_process_group(rank, size, init_method, device, timeout_s=STEP_TIMEOUT_S)
    plans = dist.new_group(backend="gloo", timeout=PLAN_WAIT)
    worker = Worker(config.model, config.cache, device, shard)
    while True:
        box: list[Plan | ProfileRequest | None] = [None]
        dist.broadcast_object_list(box, src=0, group=plans)
        message = box[0]
        if message is None:
            break
        if isinstance(message, ProfileRequest):
            profile_worker(worker, config, quick=message.quick, agree=lambda decision: agree(decision, plans))
        else:
            worker.execute(message)
    worker.close()
    destroy_process_group()


def agree(decision: object, group: object) -> object:
    """Rank 0's decision, on every rank."""
    box = [decision]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def make_worker(config: Config) -> Worker | RankGroup:
    """The data plane the config asks for: one Worker, or N tensor-parallel ranks."""
    if config.model.tensor_parallel_size > 1:
        return RankGroup(config)
    return Worker(config.model, config.cache)
