"""The rows of a step's final hidden states that produce output: the sampling rows (one per
sampling chunk) and the prompt rows that score prompt tokens (requests with prompt_logprobs).

A row's logits predict the token at the next position, so the prefill row at position p scores
prompt token p + 1: a prompt's log-probabilities come from the prefill that runs anyway, chunk by
chunk, never from a second pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from neo_async.model.llama import LlamaModel
from neo_async.sched.plan import ScheduledChunk

# Prompt rows scored per lm_head call: bounds the [rows, vocab] float32 logits held at once.
MAX_SCORED_ROWS = 256

# (token id, logprob, top alternatives [(token id, logprob), ...] best first)
ScoredToken = tuple[int, float, list[tuple[int, float]]]


@dataclass(frozen=True)
class PromptSpan:
    """Consecutive prompt rows of one chunk: they score prompt tokens target_ids, which sit at
    positions first_pos .. first_pos + len(target_ids) - 1 (first_pos >= 1)."""

    request_id: str
    first_pos: int
    target_ids: list[int]
    num_top: int


@dataclass
class OutputRows:
    sampling: list[ScheduledChunk]
    sampling_hidden: torch.Tensor  # [len(sampling), hidden]
    prompt_spans: list[PromptSpan]
    prompt_hidden: torch.Tensor  # [sum of len(span.target_ids), hidden], spans in order

    @staticmethod
    def of(chunks: list[ScheduledChunk], last_row: list[int], hidden: torch.Tensor) -> OutputRows:
        """chunks in batch row order, last_row[i] the last row of chunks[i] in hidden [T, hidden]."""
        sampling = [(c, last) for c, last in zip(chunks, last_row) if c.is_sampling]
        spans, rows = [], []
        for chunk, last in zip(chunks, last_row):
            if chunk.params.prompt_logprobs is None:
                continue
            # rows at positions start_pos .. end - 1 score prompt positions start_pos + 1 .. end
            end = min(chunk.seq_len, len(chunk.prompt_token_ids) - 1)
            if end <= chunk.start_pos:
                continue
            first_row = last - chunk.num_tokens + 1
            rows.extend(range(first_row, first_row + end - chunk.start_pos))
            targets = chunk.prompt_token_ids[chunk.start_pos + 1 : end + 1]
            spans.append(PromptSpan(chunk.request_id, chunk.start_pos + 1, targets, chunk.params.prompt_logprobs))
        device = hidden.device
        sampling_rows = torch.tensor([last for _, last in sampling], dtype=torch.long, device=device)
        # without prompt rows (the common step) an empty view: no index tensor, no gather
        prompt_hidden = hidden[torch.tensor(rows, dtype=torch.long, device=device)] if rows else hidden[:0]
        return OutputRows([c for c, _ in sampling], hidden[sampling_rows], spans, prompt_hidden)

    def __add__(self, other: OutputRows) -> OutputRows:
        return OutputRows(
            self.sampling + other.sampling,
            torch.cat([self.sampling_hidden, other.sampling_hidden]),
            self.prompt_spans + other.prompt_spans,
            torch.cat([self.prompt_hidden, other.prompt_hidden]) if other.prompt_spans else self.prompt_hidden,
        )


def score_prompts(model: LlamaModel, spans: list[PromptSpan], hidden: torch.Tensor) -> dict[str, tuple[int, list[ScoredToken]]]:
    """hidden [M, hidden] of the spans' rows -> request id -> (first position, scored tokens),
    log-probabilities of the model's distribution in float32."""
    if not spans:
        return {}
    targets = torch.tensor([t for s in spans for t in s.target_ids], dtype=torch.long, device=hidden.device)  # [M]
    num_top = max(s.num_top for s in spans)
    chosen_parts, top_values, top_ids = [], [], []
    for start in range(0, hidden.shape[0], MAX_SCORED_ROWS):
        end = start + MAX_SCORED_ROWS
        logprobs = torch.log_softmax(model.logits(hidden[start:end]).float(), dim=-1)  # [rows, vocab]
        chosen_parts.append(logprobs.gather(1, targets[start:end, None])[:, 0])
        if num_top:
            top = torch.topk(logprobs, num_top, dim=-1)
            top_values.append(top.values)
            top_ids.append(top.indices)
    chosen = torch.cat(chosen_parts).tolist()
    values = torch.cat(top_values).tolist() if num_top else None
    ids = torch.cat(top_ids).tolist() if num_top else None
    out: dict[str, tuple[int, list[ScoredToken]]] = {}
    row = 0
    for span in spans:
        scored = []
        for token in span.target_ids:
            top = [] if ids is None else list(zip(ids[row][: span.num_top], values[row][: span.num_top]))
            scored.append((token, chosen[row], top))
            row += 1
        out[span.request_id] = (span.first_pos, scored)
    return out
