"""A plan's chunks as tensors, built once per step.

Rows are ordered [device prefills | host prefills | device decodes | host decodes], so each
group is one contiguous row range: prefill K/V stores and decode attention run per group on
the group's pool, and the two decode groups can later run on two lanes at the same time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from neo_async.kernels.host_values import to_device
from neo_async.runner.attention import pad_block_tables
from neo_async.sched.plan import KVLocation, ScheduledChunk


@dataclass(frozen=True)
class PrefillStore:
    """Rows start..end are prefill tokens whose K/V go to one pool at (slot_blocks, slot_offsets)."""

    location: KVLocation
    start: int
    end: int
    slot_blocks: torch.Tensor  # [end - start] int64, on the pool's device
    slot_offsets: torch.Tensor  # [end - start] int64, on the pool's device


@dataclass(frozen=True)
class PrefillChunk:
    """One prefill chunk at rows start..end; block_ids (on its pool's device) when it attends to
    cached tokens (start_pos > 0)."""

    chunk: ScheduledChunk
    start: int
    end: int
    block_ids: torch.Tensor | None


@dataclass(frozen=True)
class DecodeGroup:
    """Rows start..end are decodes of one pool: block tables [B, W] int32 and seq_lens [B] int32
    on the pool's device."""

    location: KVLocation
    start: int
    end: int
    block_tables: torch.Tensor
    seq_lens: torch.Tensor


class BatchTensors:
    def __init__(
        self, chunks: list[ScheduledChunk], block_size: int, device: torch.device, pool_devices: dict[KVLocation, torch.device]
    ) -> None:
        groups: dict[tuple[bool, KVLocation], list[ScheduledChunk]] = {
            (is_decode, loc): [] for is_decode in (False, True) for loc in (KVLocation.DEVICE, KVLocation.HOST)
        }
        for chunk in chunks:
            groups[(chunk.is_decode, chunk.location)].append(chunk)
        self.chunks: list[ScheduledChunk] = [c for group in groups.values() for c in group]
        token_ids: list[int] = []
        positions: list[int] = []
        self.last_row: list[int] = []
        self.prefill_stores: list[PrefillStore] = []
        self.prefills: list[PrefillChunk] = []
        self.decodes: list[DecodeGroup] = []
        for (is_decode, location), group in groups.items():
            if not group:
                continue
            pool_device = pool_devices[location]
            start = len(token_ids)
            slot_blocks: list[int] = []
            slot_offsets: list[int] = []
            for chunk in group:
                row = len(token_ids)
                token_ids.extend(chunk.token_ids)
                positions.extend(range(chunk.start_pos, chunk.seq_len))
                self.last_row.append(len(token_ids) - 1)
                if is_decode:
                    continue  # decode tokens are stored by the decode attention call
                for pos in range(chunk.start_pos, chunk.seq_len):
                    slot_blocks.append(chunk.block_ids[pos // block_size])
                    slot_offsets.append(pos % block_size)
                cached = None
                if chunk.start_pos > 0:
                    cached = torch.tensor(chunk.block_ids[: -(-chunk.seq_len // block_size)], device=pool_device)
                self.prefills.append(PrefillChunk(chunk, row, len(token_ids), cached))
            end = len(token_ids)
            if is_decode:
                tables = [c.block_ids[: -(-c.seq_len // block_size)] for c in group]
                seq_lens = to_device(torch.tensor([c.seq_len for c in group], dtype=torch.int32), pool_device)
                self.decodes.append(DecodeGroup(location, start, end, pad_block_tables(tables, pool_device), seq_lens))
            else:
                blocks = torch.tensor(slot_blocks, dtype=torch.long, device=pool_device)
                offsets = torch.tensor(slot_offsets, dtype=torch.long, device=pool_device)
                self.prefill_stores.append(PrefillStore(location, start, end, blocks, offsets))
        self.token_ids = torch.tensor(token_ids, dtype=torch.long, device=device)
        self.positions = torch.tensor(positions, dtype=torch.long, device=device)

    @property
    def host_decodes(self) -> DecodeGroup | None:
        """The decodes whose KV is in the host pool (one group at most), or None."""
        return next((g for g in self.decodes if g.location is KVLocation.HOST), None)
