"""Splitting a sequential step's host decodes into parts of about equal KV tokens."""

from __future__ import annotations

import random

import pytest
import torch

from neo_async.runner.batch import DecodeGroup
from neo_async.runner.threads import sequential_host_parts
from neo_async.runner.layer_ops import host_row_parts
from neo_async.sched.plan import KVLocation


def _group(lens: list[int]) -> DecodeGroup:
    tables = torch.zeros((len(lens), 1), dtype=torch.int32)
    return DecodeGroup(KVLocation.HOST, 3, 3 + len(lens), tables, torch.tensor(lens, dtype=torch.int32))


def test_no_group_no_parts_and_one_part_is_everything():
    assert host_row_parts(None, 2) == []
    assert host_row_parts(_group([5, 7, 9]), 1) == [(0, 3)]
    assert host_row_parts(_group([500]), 2) == [(0, 1)]


def test_two_parts_split_the_kv_tokens_about_evenly():
    assert host_row_parts(_group([100, 100, 100, 100]), 2) == [(0, 2), (2, 4)]
    assert host_row_parts(_group([1000, 10, 10, 10]), 2) == [(0, 1), (1, 4)]
    assert host_row_parts(_group([10, 10, 10, 1000]), 2) == [(0, 3), (3, 4)]


@pytest.mark.parametrize("seed", range(20))
def test_parts_cover_every_request_once_in_order_and_the_cut_is_the_most_even(seed):
    rng = random.Random(seed)
    lens = [rng.randint(1, 3000) for _ in range(rng.randint(2, 40))]
    parts = host_row_parts(_group(lens), 2)
    assert len(parts) == 2 and parts[0][0] == 0 and parts[-1][1] == len(lens) and parts[0][1] == parts[1][0]
    imbalance = [abs(sum(lens) - 2 * sum(lens[:cut])) for cut in range(1, len(lens))]
    assert abs(sum(lens) - 2 * sum(lens[: parts[0][1]])) == min(imbalance)


def test_parts_follow_the_device_lanes_threads():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert sequential_host_parts(cpu, 2, 1) == 2
    assert sequential_host_parts(cpu, 1, 1) == 1
    assert sequential_host_parts(cpu, 3, 2) == 1
    assert sequential_host_parts(cpu, 16, 8) == 2
    assert sequential_host_parts(cuda, 16, 1) == 1
