"""Token sampling: penalties, temperature, top-k / top-p / min-p, per-request seeds, logprobs.

Randomness: a seeded request draws its noise from a generator seeded with
(seed, number of tokens it has generated so far), so its output does not depend on what else
is in the batch or on preemptions; unseeded requests share the sampler's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from neo_async.sampling_params import SamplingParams

_SEED_MIX = 0x9E3779B97F4A7C15


@dataclass
class SampleRow:
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]


@dataclass
class SampleResult:
    token_ids: list[int]
    # per row: None, or (chosen logprob, [(token id, logprob), ...] best first)
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]


class Sampler:
    def __init__(self, vocab_size: int, eos_token_ids: tuple[int, ...], device: torch.device, seed: int | None = None) -> None:
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.device = device
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor, rows: list[SampleRow]) -> SampleResult:
        """logits [N, vocab] in any float dtype, one row per SampleRow. Plain greedy rows take
        one batched argmax; the others are widened to float32 (a copy) and processed per row."""
        token_ids = [0] * len(rows)
        chosen: list[tuple[float, list[tuple[int, float]]] | None] = [None] * len(rows)
        plain = [i for i, row in enumerate(rows) if self._is_plain_greedy(row)]
        if plain:
            best = (logits if len(plain) == len(rows) else logits[plain]).max(-1).indices.tolist()  # max: faster than argmax on bf16
            for i, token in zip(plain, best, strict=True):
                token_ids[i] = token
        plain_set = set(plain)
        rest = [i for i in range(len(rows)) if i not in plain_set]
        if not rest:
            return SampleResult(token_ids, chosen)
        rest_logits = logits[rest].float()
        rest_rows = [rows[i] for i in rest]
        logprobs = self._logprobs(rest_logits, rest_rows)
        for j, (i, row) in enumerate(zip(rest, rest_rows, strict=True)):
            self._apply_penalties(rest_logits[j], row)
            token = int(torch.argmax(rest_logits[j])) if row.params.is_greedy else self._sample_row(rest_logits[j], row)
            token_ids[i] = token
            lp = logprobs[j]
            chosen[i] = None if lp is None else (float(lp[0][token]), lp[1])
        return SampleResult(token_ids, chosen)

    def _is_plain_greedy(self, row: SampleRow) -> bool:
        """Greedy with nothing that changes or reports the distribution: an argmax suffices."""
        p = row.params
        return (
            p.is_greedy
            and p.logprobs is None
            and not p.logit_bias
            and p.repetition_penalty == 1.0
            and not p.frequency_penalty
            and not p.presence_penalty
            and len(row.output_token_ids) >= p.min_tokens
        )

    def _logprobs(self, logits: torch.Tensor, rows: list[SampleRow]) -> list:
        """Per row: None or (log-probabilities [vocab], top list) of the raw model distribution,
        before any penalty or filter."""
        wanted = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
        out: list = [None] * len(rows)
        if not wanted:
            return out
        lp = torch.log_softmax(logits[wanted], dim=-1)
        for j, i in enumerate(wanted):
            k = rows[i].params.logprobs or 0
            top = torch.topk(lp[j], k) if k else None
            top_list = [] if top is None else list(zip(top.indices.tolist(), top.values.tolist()))
            out[i] = (lp[j], top_list)
        return out

    def _apply_penalties(self, row_logits: torch.Tensor, row: SampleRow) -> None:
        p = row.params
        if p.logit_bias:
            ids = torch.tensor([t for t, _ in p.logit_bias], dtype=torch.long, device=row_logits.device)
            row_logits.index_add_(0, ids, torch.tensor([b for _, b in p.logit_bias], dtype=row_logits.dtype, device=row_logits.device))
        if len(row.output_token_ids) < p.min_tokens:
            banned = list(p.stop_token_ids) + ([] if p.ignore_eos else list(self.eos_token_ids))
            if banned:
                row_logits[torch.tensor(banned, device=row_logits.device)] = float("-inf")
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(row.prompt_token_ids) | set(row.output_token_ids)), dtype=torch.long, device=row_logits.device)
            if seen.numel():
                vals = row_logits[seen]
                row_logits[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if (p.frequency_penalty or p.presence_penalty) and row.output_token_ids:
            out_ids = torch.tensor(row.output_token_ids, dtype=torch.long, device=row_logits.device)
            counts = torch.bincount(out_ids, minlength=row_logits.shape[0]).to(row_logits.dtype)
            row_logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row_logits.dtype)

    def _sample_row(self, row_logits: torch.Tensor, row: SampleRow) -> int:
        p = row.params
        scaled = row_logits / p.temperature
        if p.top_k and p.top_k < scaled.shape[0]:
            kth = torch.topk(scaled, p.top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        if p.min_p > 0.0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            drop_sorted = (cumulative - sorted_probs) >= p.top_p * cumulative[-1]  # keep the smallest nucleus
            probs = probs.scatter(0, order, sorted_probs.masked_fill(drop_sorted, 0.0))
        noise = torch.empty_like(probs).exponential_(generator=self._generator_for(row))
        return int(torch.argmax(probs / noise))

    def _generator_for(self, row: SampleRow) -> torch.Generator:
        seed = row.params.seed
        if seed is None:
            return self.generator
        g = torch.Generator(device=self.device)
        g.manual_seed((seed * _SEED_MIX + len(row.output_token_ids)) % (1 << 63))
        return g
