"""Turns a Plan into tensors, runs the model layer by layer, samples (device-only mode).

All of a plan's tokens run as one flat batch: prefill chunks first, then decodes. Per layer:
pre -> store K/V -> attention (per prefill chunk, one batched paged call for decodes) -> post.
"""

from __future__ import annotations

import torch

from neo_async.model.llama import LlamaModel
from neo_async.runner.attention import KVCache, pad_block_tables, prefill_attention
from neo_async.runner.sampler import SampleRow, Sampler
from neo_async.sched.plan import ExecuteOutput, Plan, ScheduledChunk


class Executor:
    def __init__(self, model: LlamaModel, cache: KVCache, sampler: Sampler) -> None:
        self.model = model
        self.cache = cache
        self.sampler = sampler
        self.device = model.device
        self.keep_logits = False  # when set, outputs carry each sampling row's raw logits (tests)

    @torch.inference_mode()
    def execute(self, plan: Plan) -> ExecuteOutput:
        if plan.is_empty:
            return ExecuteOutput()
        prefills = [c for c in plan.chunks if not c.is_decode]
        decodes = [c for c in plan.chunks if c.is_decode]
        chunks = prefills + decodes
        batch = _BatchTensors(chunks, self.cache.block_size, self.device)
        spec, model = self.model.spec, self.model
        hidden = model.embed(batch.token_ids)  # [T, hidden]
        num_prefill_tokens = sum(c.num_tokens for c in prefills)
        rope = model.rope(batch.positions)
        for layer in range(spec.num_layers):
            q, k, v = model.pre(layer, hidden, rope)
            if prefills:
                self.cache.store(layer, k[:num_prefill_tokens], v[:num_prefill_tokens], batch.slot_blocks, batch.slot_offsets)
            out = torch.empty(q.shape, dtype=torch.float32, device=self.device)  # [T, Hq, D]
            offset = 0
            for chunk in prefills:
                end = offset + chunk.num_tokens
                if chunk.start_pos == 0:
                    kc, vc = k[offset:end].transpose(0, 1), v[offset:end].transpose(0, 1)
                else:
                    kc, vc = self.cache.gather(layer, batch.block_ids[chunk.request_id], chunk.seq_len)
                out[offset:end] = prefill_attention(q[offset:end], kc, vc, chunk.start_pos, spec.attn_scale)
                offset = end
            if decodes:
                self.cache.decode(
                    layer,
                    q[num_prefill_tokens:],
                    batch.decode_tables,
                    batch.decode_seq_lens,
                    spec.attn_scale,
                    k_new=k[num_prefill_tokens:],
                    v_new=v[num_prefill_tokens:],
                    out=out[num_prefill_tokens:],
                )
            hidden = model.post(layer, hidden, out.view(out.shape[0], -1))
        sampling = [(i, c) for i, c in enumerate(chunks) if c.is_sampling]
        if not sampling:
            return ExecuteOutput()
        last_rows = torch.tensor([batch.last_row[i] for i, _ in sampling], device=self.device)
        logits = model.logits(hidden[last_rows])  # [N, vocab]
        rows = [SampleRow(c.params, c.prompt_token_ids, c.output_token_ids) for _, c in sampling]
        output = ExecuteOutput()
        if self.keep_logits:
            output.logits = {c.request_id: logits[j].float() for j, (_, c) in enumerate(sampling)}
        result = self.sampler(logits, rows)
        for (_, chunk), token, lp in zip(sampling, result.token_ids, result.logprobs):
            output.sampled_token_ids[chunk.request_id] = token
            if lp is not None:
                output.logprobs[chunk.request_id] = lp
        return output


class _BatchTensors:
    """Flat token ids and positions of an ordered list of chunks (prefills first), KV slots of the
    prefill tokens, block tables and lengths of the decodes."""

    def __init__(self, chunks: list[ScheduledChunk], block_size: int, device: torch.device) -> None:
        token_ids: list[int] = []
        positions: list[int] = []
        slot_blocks: list[int] = []
        slot_offsets: list[int] = []
        self.last_row: list[int] = []
        self.block_ids: dict[str, torch.Tensor] = {}
        decode_tables, decode_lens = [], []
        for chunk in chunks:
            token_ids.extend(chunk.token_ids)
            positions.extend(range(chunk.start_pos, chunk.seq_len))
            if not chunk.is_decode:  # decode tokens are stored by the decode attention call
                for pos in range(chunk.start_pos, chunk.seq_len):
                    slot_blocks.append(chunk.block_ids[pos // block_size])
                    slot_offsets.append(pos % block_size)
            self.last_row.append(len(token_ids) - 1)
            if chunk.is_decode:
                decode_tables.append(chunk.block_ids[: -(-chunk.seq_len // block_size)])
                decode_lens.append(chunk.seq_len)
            elif chunk.start_pos > 0:
                used = -(-chunk.seq_len // block_size)
                self.block_ids[chunk.request_id] = torch.tensor(chunk.block_ids[:used], device=device)
        self.token_ids = torch.tensor(token_ids, dtype=torch.long, device=device)
        self.positions = torch.tensor(positions, dtype=torch.long, device=device)
        self.slot_blocks = torch.tensor(slot_blocks, dtype=torch.long, device=device)
        self.slot_offsets = torch.tensor(slot_offsets, dtype=torch.long, device=device)
        if decode_tables:
            self.decode_tables = pad_block_tables(decode_tables, device)
            self.decode_seq_lens = torch.tensor(decode_lens, dtype=torch.int32, device=device)
