"""`RequestRecord`: everything measured about one request, one JSON Lines row each.

Times ending in `_s` are seconds: `scheduled_s` and `sent_s` from the run's start, the
rest from the moment the request was sent.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec


class RequestRecord(msgspec.Struct, kw_only=True):
    """Invariants: is_sent is False => success is False and error says why;
    success => ttft_s <= chunk_times_s[-1] <= e2el_s when there is any token chunk."""

    request_id: int
    prompt_len: int  # tokens in the prompt as built
    output_len: int  # max_tokens asked for
    scheduled_s: float  # planned send time
    trace_timestamp_s: float | None = None
    is_sent: bool = False
    success: bool = False
    error: str = ""
    http_status: int | None = None
    num_reconnects: int = 0  # sends lost on a kept-alive connection the server had closed (not failures)
    sent_s: float | None = None
    ttft_s: float | None = None  # first chunk with text
    e2el_s: float | None = None  # last chunk with a choice (text or finish)
    chunk_times_s: list[float] = msgspec.field(default_factory=list)  # every chunk with text
    num_output_tokens: int = 0
    usage_prompt_tokens: int | None = None
    usage_completion_tokens: int | None = None
    finish_reason: str | None = None
    generated_text: str = ""


def resolve_num_output_tokens(record: RequestRecord, count_tokens: Callable[[str], int] | None) -> int:
    """The server's usage count, else the text re-tokenized, else one token per text chunk."""
    if record.usage_completion_tokens is not None:
        return record.usage_completion_tokens
    if count_tokens is not None:
        return count_tokens(record.generated_text)
    return len(record.chunk_times_s)


def write_jsonl(records: list[RequestRecord], path) -> None:
    encoder = msgspec.json.Encoder()
    with open(path, "wb") as f:
        for record in records:
            f.write(encoder.encode(record))
            f.write(b"\n")


def read_jsonl(path) -> list[RequestRecord]:
    decoder = msgspec.json.Decoder(RequestRecord)
    with open(path, "rb") as f:
        return [decoder.decode(line) for line in f if line.strip()]
