"""Errors the engine raises to its callers (the server maps them to HTTP statuses)."""


class EngineOverloadedError(RuntimeError):
    """The waiting queue is full; retry later (HTTP 503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineDeadError(RuntimeError):
    """The engine loop stopped on an internal error; no request can complete."""
