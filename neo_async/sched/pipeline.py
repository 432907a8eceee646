"""Asymmetric pipelining: a plan's chunks split into two sub-batches (pure logic).

b0 holds every prefill, every device decode and some host decodes; b1 holds host decodes only.
Per layer the host computes attention of one sub-batch while the device runs the other's
linear layers and device attention, so the host attention of b1 overlaps the device's work for
b0 and the host attention of b0 overlaps the device's linear work for b1.

The split balances in KV tokens read per layer (a proxy until measured costs exist): host
decodes, longest first, each go to the lighter side, b1's load being its host KV tokens and
b0's the KV tokens its device attention reads (prefill and device decode contexts) plus its
host KV tokens.
"""

from __future__ import annotations

import dataclasses

from neo_async.sched.plan import ScheduledChunk


def split_sub_batches(chunks: list[ScheduledChunk], min_host_decodes: int) -> list[ScheduledChunk] | None:
    """The chunks with their sub_batch set, in the same order, or None when the plan should
    run sequentially (fewer than min_host_decodes host decodes, or one side would be empty)."""
    host_decodes = [i for i, c in enumerate(chunks) if c.is_host and c.is_decode]
    if len(host_decodes) < max(1, min_host_decodes):
        return None
    load = [sum(c.seq_len for c in chunks if not (c.is_host and c.is_decode)), 0]
    side: dict[int, int] = {}
    for i in sorted(host_decodes, key=lambda i: -chunks[i].seq_len):
        j = 1 if load[1] <= load[0] else 0
        side[i] = j
        load[j] += chunks[i].seq_len
    if len(side) == len(chunks) and 0 not in side.values():
        return None  # b0 would be empty (a lone host decode): nothing to overlap
    return [dataclasses.replace(c, sub_batch=side.get(i, 0)) for i, c in enumerate(chunks)]
