"""Reading OpenAI-style streaming responses: `data: {json}` lines, then `data: [DONE]`."""

from __future__ import annotations

DONE = "[DONE]"


def data_of(line: bytes) -> str | None:
    """The payload of a `data:` line; None for blank lines, comments and other fields."""
    line = line.strip()
    if not line.startswith(b"data:"):
        return None
    return line[5:].strip().decode("utf-8")


def choice_token_ids(chunk: dict) -> list[int]:
    """Token ids carried by the chunk's first choice (`token_ids`, vLLM's field on a server
    that runs without a tokenizer, whose `text` stays empty); [] when none."""
    choices = chunk.get("choices")
    return (choices[0].get("token_ids") or []) if choices else []


def choice_text(chunk: dict) -> str | None:
    """Text carried by the chunk's first choice ('' if none); None when it has no choice.

    Completions put it in `text`, chat completions in `delta.content` (or
    `delta.reasoning_content` on servers that split reasoning out).
    """
    choices = chunk.get("choices")
    if not choices:
        return None
    choice = choices[0]
    if "text" in choice:
        return choice["text"] or ""
    delta = choice.get("delta") or {}
    return delta.get("content") or delta.get("reasoning_content") or ""


def finish_reason_of(chunk: dict) -> str | None:
    choices = chunk.get("choices")
    return choices[0].get("finish_reason") if choices else None


def error_of(chunk: dict) -> str | None:
    """A server's in-stream error (`{"error": {...}}` or `{"error": "..."}`), as text."""
    error = chunk.get("error")
    if error is None:
        return None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)
