"""Block tables and lengths made for a device other than the CPU keep their host values, so
FlashInfer's plan reads them without waiting for the device; the plan's inputs from them.
("meta" plays the GPU: a tensor with no values to copy back.)"""

from __future__ import annotations

import gc

import torch

from neo_async.kernels import host_values as hv
from neo_async.kernels.flashinfer_decode import plan_inputs
from neo_async.runner.batch import BatchTensors
from neo_async.sampling_params import SamplingParams
from neo_async.sched.plan import KVLocation, ScheduledChunk

META = torch.device("meta")


def test_a_tensor_made_for_a_device_remembers_its_host_values_while_it_lives():
    values = torch.tensor([3, 1, 4], dtype=torch.int32)
    before = len(hv._HOST)
    on_device = hv.to_device(values, META)
    assert on_device.device == META and hv.host_values(on_device) is values
    del on_device
    gc.collect()
    assert len(hv._HOST) == before
    cpu = torch.tensor([1])
    assert hv.to_device(cpu, torch.device("cpu")) is cpu and hv.host_values(cpu) is cpu


def test_decode_groups_for_a_device_pool_carry_host_values():
    params = SamplingParams(temperature=0.0)
    chunks = [
        ScheduledChunk("a", [7], 20, [5, 2], True, params, [], [], KVLocation.DEVICE),
        ScheduledChunk("b", [7], 3, [9], True, params, [], [], KVLocation.DEVICE),
    ]
    batch = BatchTensors(chunks, 16, torch.device("cpu"), {KVLocation.DEVICE: META})
    group = batch.decodes[0]
    assert group.block_tables.device == META and group.seq_lens.device == META
    assert hv.host_values(group.block_tables).tolist() == [[5, 2], [9, 9]]
    assert hv.host_values(group.seq_lens).tolist() == [21, 4]


def test_plan_inputs_list_each_request_s_used_pages_in_order():
    tables = torch.tensor([[5, 2, 8], [9, 9, 9], [1, 3, 6]], dtype=torch.int32)  # padded rows
    lens = torch.tensor([17, 16, 48], dtype=torch.int32)
    indptr, indices, last_page_len = plan_inputs(tables, lens, 16)
    assert indptr.tolist() == [0, 2, 3, 6]
    assert indices.tolist() == [5, 2, 9, 1, 3, 6]
    assert last_page_len.tolist() == [1, 16, 16]
    assert {t.dtype for t in (indptr, indices, last_page_len)} == {torch.int32}
