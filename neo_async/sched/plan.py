"""The typed batch plan: the only thing the scheduler hands to the executor."""

from __future__ import annotations

from dataclasses import dataclass, field

from neo_async.sampling_params import SamplingParams


@dataclass(frozen=True)
class ScheduledChunk:
    """Tokens of one request to run this iteration.

    token_ids are at positions start_pos .. start_pos + len(token_ids) - 1; block_ids is the
    request's whole block table (enough blocks for every position up to the last one).
    When is_sampling, the last token's logits pick the request's next token.
    """

    request_id: str
    token_ids: list[int]
    start_pos: int
    block_ids: list[int]
    is_sampling: bool
    params: SamplingParams
    prompt_token_ids: list[int]  # for repetition penalties (read only)
    output_token_ids: list[int]  # for penalties and per-step seeding (read only)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def seq_len(self) -> int:
        """Tokens in the cache once this chunk has run."""
        return self.start_pos + len(self.token_ids)

    @property
    def is_decode(self) -> bool:
        return len(self.token_ids) == 1 and self.start_pos > 0


@dataclass
class Plan:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted_ids: list[str] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


@dataclass
class ExecuteOutput:
    """What the executor returns: one sampled token per sampling chunk."""

    sampled_token_ids: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, object] = field(default_factory=dict)  # request id -> (logprob, top list)
    logits: dict[str, object] | None = None  # request id -> raw logits [vocab], only when asked
