"""Online calibration of predicted iteration times: convergence, bounded steps, independent
kinds, and its effect on the policy's choices through the scheduler."""

from __future__ import annotations

import math

import pytest

from neo_async.config import SchedulerConfig
from neo_async.kv.block_pool import BlockPool
from neo_async.sampling_params import SamplingParams
from neo_async.sched.calibration import Calibration
from neo_async.sched.plan import ExecuteOutput, Plan
from neo_async.sched.predict import plan_time
from neo_async.sched.request import Request
from neo_async.sched.scheduler import Scheduler
from tests.synthetic_costs import SyntheticCosts
from tests.test_sched_policy import policy, workload


def run(cal: Calibration, kind: tuple[bool, bool], raw_s: float, true_ratio: float, steps: int) -> None:
    for _ in range(steps):
        predicted = raw_s * cal.factor(*kind)
        cal.observe(*kind, predicted, raw_s * true_ratio)


@pytest.mark.parametrize("ratio", [0.6, 1.0, 1.5, 3.0])
def test_the_factor_converges_to_measured_over_predicted(ratio):
    cal = Calibration()
    run(cal, (False, False), 0.03, ratio, 60)
    assert cal.factor(False, False) == pytest.approx(ratio, rel=0.01)


def test_kinds_are_independent_and_start_at_one():
    cal = Calibration()
    run(cal, (True, False), 0.05, 2.0, 60)
    assert cal.factor(True, False) == pytest.approx(2.0, rel=0.01)
    assert cal.factor(False, False) == cal.factor(False, True) == cal.factor(True, True) == 1.0


def test_one_outlier_moves_the_factor_by_a_bounded_step():
    cal = Calibration(weight=0.2, max_step=math.log(2.0))
    cal.observe(False, True, 0.3, 30.0)  # a 100x outlier (a first step's warm-up)
    assert cal.factor(False, True) == pytest.approx(2.0 ** 0.2)


def test_factors_stay_within_bounds_and_bad_values_are_ignored():
    cal = Calibration(low=0.5, high=4.0)
    run(cal, (False, False), 0.01, 100.0, 200)
    assert cal.factor(False, False) == pytest.approx(4.0)
    run(cal, (False, False), 0.01, 0.001, 200)
    assert cal.factor(False, False) == pytest.approx(0.5)
    before = cal.factor(False, False)
    for predicted, measured in ((0.0, 1.0), (1.0, 0.0), (float("nan"), 1.0), (1.0, float("inf"))):
        cal.observe(False, False, predicted, measured)
    assert cal.factor(False, False) == before
    with pytest.raises(ValueError):
        Calibration(weight=0.0)


def test_measured_slow_pipelined_steps_turn_the_policy_sequential():
    """The tables favour pipelining; pipelined iterations measured 3x slower than the tables
    say (sequential ones never measured) make the policy run sequentially."""
    costs = SyntheticCosts(host_per_kv=2e-8)
    p = policy(costs)
    assert p.choose(workload(), 0, {}).is_pipelined
    for _ in range(30):
        choice = p.choose(workload(), 0, {})
        if not choice.is_pipelined:
            break
        plan = Plan(chunks=choice.chunks, is_pipelined=True, predicted_s=choice.predicted_s)
        p.observe(plan, 3.0 * plan_time(costs, choice.chunks, True))
    choice = p.choose(workload(), 0, {})
    assert not choice.is_pipelined
    assert choice.predicted_s == pytest.approx(plan_time(costs, choice.chunks, False))


def _scheduler(calibrate: bool) -> Scheduler:
    config = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, pipeline="auto", calibrate_costs=calibrate)
    s = Scheduler(config, BlockPool(32, 4, "device"), BlockPool(64, 4, "host"), "neo", costs=SyntheticCosts())
    s.add(Request("r0", list(range(10, 30)), SamplingParams(max_tokens=8), 0.0, 28))
    return s


@pytest.mark.parametrize("calibrate", [True, False])
def test_the_scheduler_feeds_measured_plans_to_the_calibration_when_enabled(calibrate):
    s = _scheduler(calibrate)
    predictions = []
    for _ in range(8):
        plan = s.schedule()
        predictions.append(plan.predicted_s)
        out = ExecuteOutput({c.request_id: 7 for c in plan.chunks if c.is_sampling}, execute_s=2.0 * plan.predicted_s)
        s.update(plan, out)
    decode_factor = s.policy.calibration.factor(False, False)
    assert (decode_factor > 1.5) == calibrate and (decode_factor == 1.0) == (not calibrate)
    # unmeasured plans (a simulator that does not report times) leave it alone
    s2 = _scheduler(True)
    plan = s2.schedule()
    s2.update(plan, ExecuteOutput({c.request_id: 7 for c in plan.chunks if c.is_sampling}))
    assert s2.policy.calibration.factor(False, True) == 1.0
