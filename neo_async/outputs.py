"""What the engine hands back: per-step deltas (streaming) and finished outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class FinishReason(str, Enum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or the model's context
    ABORT = "abort"  # cancelled by the caller or the server


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()  # (token id, text, logprob), best first


@dataclass
class RequestDelta:
    """New output of one request since its previous delta.

    Invariant: the concatenation of every delta's `text` is the request's final text
    (stop strings already cut away), and likewise for `token_ids`.
    """

    request_id: str
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None
    finish_reason: FinishReason | None
    num_prompt_tokens: int
    num_output_tokens: int
    stop_reason: int | str | None = None  # the stop token id or stop string that matched
    # Every prompt token's logprob (the first None), on the request's first delta only, when
    # its params ask for prompt_logprobs.
    prompt_logprobs: list[TokenLogprob | None] | None = None

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """A finished request, as returned by `LLM.generate`."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    logprobs: list[TokenLogprob] | None = None
    stop_reason: int | str | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None  # see RequestDelta
    metrics: dict[str, float] = field(default_factory=dict)
