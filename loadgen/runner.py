"""One benchmark run: send every request at its offset, under a concurrency cap and a
duration limit, and return a record per request (sent or not)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import numpy as np
import structlog

from loadgen import client
from loadgen.client import ClientConfig
from loadgen.progress import Progress
from loadgen.prompts import Prompt
from loadgen.records import RequestRecord, resolve_num_output_tokens
from loadgen.workload import RequestSpec

log = structlog.get_logger(__name__)

NOT_SENT = "not sent: duration limit reached"


@dataclass(frozen=True)
class RunOptions:
    max_concurrency: int | None = None  # None: no cap
    duration_limit_s: float | None = None  # no request is sent after this; those in flight finish

    def validate(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if self.duration_limit_s is not None and self.duration_limit_s <= 0:
            raise ValueError("duration limit must be > 0")


@dataclass
class RunResult:
    records: list[RequestRecord]  # in request order
    duration_s: float  # first send slot -> last response


def new_records(specs: list[RequestSpec], prompts: list[Prompt], offsets: np.ndarray) -> list[RequestRecord]:
    return [
        RequestRecord(
            request_id=i,
            prompt_len=prompt.prompt_len,
            output_len=spec.output_len,
            scheduled_s=float(offset),
            trace_timestamp_s=spec.timestamp_s,
        )
        for i, (spec, prompt, offset) in enumerate(zip(specs, prompts, offsets, strict=True))
    ]


async def run(
    session: aiohttp.ClientSession,
    config: ClientConfig,
    specs: list[RequestSpec],
    prompts: list[Prompt],
    offsets: np.ndarray,
    options: RunOptions | None = None,
    progress: Progress | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> RunResult:
    options = options or RunOptions()
    options.validate()
    records = new_records(specs, prompts, offsets)
    semaphore = asyncio.Semaphore(options.max_concurrency) if options.max_concurrency else None
    limit_s = options.duration_limit_s
    start = time.perf_counter()

    def finish(record: RequestRecord) -> None:
        if progress is not None:
            progress.update(record.success)

    async def attempt(i: int) -> None:
        record = records[i]
        if limit_s is not None and time.perf_counter() - start >= limit_s:
            record.error = NOT_SENT
        else:
            await client.send(session, config, prompts[i], record, start)
            if record.success:
                record.num_output_tokens = resolve_num_output_tokens(record, count_tokens)
        finish(record)

    async def one(i: int) -> None:
        if semaphore is None:
            await attempt(i)
            return
        async with semaphore:
            await attempt(i)

    tasks = []
    for i in np.argsort(offsets, kind="stable").tolist():
        if limit_s is not None and offsets[i] >= limit_s:
            records[i].error = NOT_SENT
            finish(records[i])
            continue
        delay = start + offsets[i] - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    duration_s = time.perf_counter() - start
    if progress is not None:
        progress.close()
    log.info("run_done", num_requests=len(records), duration_s=round(duration_s, 3))
    return RunResult(records, duration_s)
