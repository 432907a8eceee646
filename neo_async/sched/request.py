"""One request as the scheduler sees it: counters, not phases."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from neo_async.sampling_params import SamplingParams
from neo_async.sched.plan import KVLocation


class RequestStatus(str, Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    """Invariants:
    - token_ids = prompt tokens followed by output tokens; num_prompt_tokens <= len(token_ids);
    - 0 <= num_computed_tokens <= len(token_ids): tokens whose K/V are in the cache;
    - a request with num_computed_tokens == len(token_ids) - 1 ... len(token_ids) is decoding;
      below that it is (re)filling its cache (prefill, chunked or after preemption);
    - location is where its blocks are (exactly one pool) while it is running, None while it
      waits (a waiting request holds no blocks).
    """

    request_id: str
    token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    max_total_tokens: int  # prompt + output never grows past this (max_tokens, context)
    num_prompt_tokens: int = 0
    num_computed_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    num_preemptions: int = 0
    location: KVLocation | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.num_prompt_tokens:
            self.num_prompt_tokens = len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens
