"""Send offsets: Poisson and gamma rates, all at once, a trace's own times."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadgen.arrivals import rate_offsets, trace_offsets


def test_all_at_once():
    assert rate_offsets(5, math.inf, 1.0, np.random.default_rng(0)).tolist() == [0.0] * 5


@pytest.mark.parametrize("rate, burstiness", [(2.0, 1.0), (10.0, 0.25), (0.5, 4.0)])
def test_gamma_gaps_have_the_asked_mean_and_spread(rate, burstiness):
    offsets = rate_offsets(40001, rate, burstiness, np.random.default_rng(1))
    assert offsets[0] == 0.0 and np.all(np.diff(offsets) >= 0)
    gaps = np.diff(offsets)
    # gamma(shape k, scale 1/(rate k)): mean 1/rate, coefficient of variation 1/sqrt(k)
    assert gaps.mean() == pytest.approx(1.0 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0 / math.sqrt(burstiness), rel=0.05)


def test_rate_offsets_are_seeded():
    a = rate_offsets(10, 3.0, 1.0, np.random.default_rng(42))
    b = rate_offsets(10, 3.0, 1.0, np.random.default_rng(42))
    c = rate_offsets(10, 3.0, 1.0, np.random.default_rng(43))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert len(rate_offsets(1, 3.0, 1.0, np.random.default_rng(0))) == 1
    assert len(rate_offsets(0, 3.0, 1.0, np.random.default_rng(0))) == 0


def test_bad_rates():
    with pytest.raises(ValueError):
        rate_offsets(3, 0.0, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        rate_offsets(3, 1.0, 0.0, np.random.default_rng(0))


def test_trace_offsets_rebase_and_scale():
    assert trace_offsets([10.0, 10.5, 12.0], 1.0).tolist() == [0.0, 0.5, 2.0]
    assert trace_offsets([10.0, 10.5, 12.0], 0.5).tolist() == [0.0, 0.25, 1.0]
    assert trace_offsets([3.0, 1.0], 2.0).tolist() == [4.0, 0.0]  # unsorted rows keep their order
    with pytest.raises(ValueError, match="timestamps"):
        trace_offsets([0.0, None], 1.0)
    with pytest.raises(ValueError, match="scale"):
        trace_offsets([0.0], 0.0)
