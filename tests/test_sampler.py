"""Sampler semantics against hand-computed distributions."""

from __future__ import annotations

import math

import pytest
import torch

from neo_async.runner.sampler import SampleRow, Sampler
from neo_async.sampling_params import SamplingParams

V = 50


def sampler(seed=0) -> Sampler:
    return Sampler(V, eos_token_ids=(2,), device=torch.device("cpu"), seed=seed)


def row(prompt=(), output=(), **kw) -> SampleRow:
    return SampleRow(SamplingParams(**kw), list(prompt), list(output))


def fresh_logits(n=1, seed=0) -> torch.Tensor:
    return torch.randn(n, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_and_logprobs_are_log_softmax_of_raw_logits():
    logits = fresh_logits(2)
    expected = torch.log_softmax(logits, -1)
    res = sampler()(logits.clone(), [row(temperature=0.0, logprobs=3), row(temperature=0.0, repetition_penalty=2.0, prompt=[5])])
    assert res.token_ids[0] == int(expected[0].argmax())
    chosen, top = res.logprobs[0]
    assert chosen == pytest.approx(float(expected[0].max()), abs=1e-6)
    assert [t for t, _ in top] == expected[0].topk(3).indices.tolist()
    assert res.logprobs[1] is None


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch():
    logits = fresh_logits(3)
    a = sampler(1)(logits.clone(), [row(temperature=1.0, seed=42, output=[3, 4])] * 3)
    b = sampler(2)(logits[1:2].clone(), [row(temperature=1.0, seed=42, output=[3, 4])])
    assert a.token_ids[1] == b.token_ids[0]
    draws = {sampler(0)(logits[:1].clone(), [row(temperature=1.0, seed=s)]).token_ids[0] for s in range(40)}
    assert len(draws) > 3  # different seeds really draw different tokens


def test_sampling_frequencies_follow_the_distribution():
    logits = torch.full((1, V), -30.0)
    logits[0, 7], logits[0, 9] = 0.0, math.log(3.0)  # p = 1/4 and 3/4
    s = sampler(3)
    counts = {7: 0, 9: 0}
    for i in range(800):
        counts[s(logits.clone(), [row(temperature=1.0, seed=i)]).token_ids[0]] += 1
    assert 0.68 < counts[9] / 800 < 0.82


def test_top_k_top_p_min_p_restrict_the_support():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1] + [1e-9] * (V - 4)]))
    for kw, allowed in [
        (dict(top_k=2), {0, 1}),
        (dict(top_p=0.65), {0, 1}),
        (dict(top_p=0.75), {0, 1, 2}),
        (dict(min_p=0.6), {0, 1}),
    ]:
        seen = {sampler(0)(logits.clone(), [row(temperature=1.0, seed=i, **kw)]).token_ids[0] for i in range(200)}
        assert seen == allowed, kw


def test_penalties_match_their_definitions():
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.5] + [-9.0] * (V - 4)])
    s = sampler()
    lg = logits.clone()
    s._apply_penalties(lg[0], row(prompt=[0], output=[1, 1, 3], repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25))
    # token 0: prompt only -> 2.0 / 2; token 1: -1 * 2 - 0.5 * 2 - 0.25; token 3: 1.5 / 2 - 0.5 - 0.25
    assert lg[0, :4].tolist() == pytest.approx([1.0, -3.25, 0.5, 0.0])


def test_min_tokens_blocks_eos_and_stop_ids():
    logits = torch.full((1, V), -5.0)
    logits[0, 2] = 10.0  # eos
    logits[0, 11] = 9.0  # a stop token id
    res = sampler()(logits.clone(), [row(temperature=0.0, min_tokens=2, max_tokens=4, stop_token_ids=(11,), output=[5])])
    assert res.token_ids[0] not in (2, 11)
    res = sampler()(logits.clone(), [row(temperature=0.0, min_tokens=1, max_tokens=4, output=[5])])
    assert res.token_ids[0] == 2


@pytest.mark.parametrize(
    "kw",
    [dict(max_tokens=0), dict(temperature=-1), dict(top_p=0.0), dict(top_k=-2), dict(min_p=2.0), dict(logprobs=21), dict(stop=["" ])],
)
def test_invalid_params_raise_value_error(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw).validate()


def test_mixed_batch_in_bfloat16_equals_rows_sampled_alone_in_float32():
    logits = fresh_logits(5, seed=11).bfloat16()
    rows = [
        row(temperature=0.0),
        row(temperature=0.8, seed=5, top_p=0.9),
        row(temperature=0.0, logprobs=2),
        row(temperature=0.0, presence_penalty=1.5, output=[int(logits[3].float().argmax())]),
        row(temperature=0.0),
    ]
    batched = sampler()(logits.clone(), rows)
    for i, r in enumerate(rows):
        alone = sampler()(logits[i : i + 1].float(), [r])
        assert batched.token_ids[i] == alone.token_ids[0]
        assert batched.logprobs[i] == alone.logprobs[0]
    assert batched.token_ids[3] != int(logits[3].float().argmax())  # the penalty really applied
