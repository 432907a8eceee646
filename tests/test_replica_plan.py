"""How `serve --data-parallel-size N` divides the machine (pure: no process starts)."""

from __future__ import annotations

import dataclasses

import pytest

from neo_async.config import Config, config_from_args
from neo_async.server.replica_plan import config_argv, plan_replicas, split_evenly, visible_gpu_ids
from neo_async.server.router import RouterSettings, router_command
from neo_async.server.serve import build_parser


def _config(*flags: str) -> Config:
    return config_from_args(build_parser().parse_args(list(flags)))


def test_a_child_rebuilds_the_parents_config_with_its_own_port():
    parent = _config("--offload", "full", "--host-kv-tokens", "4096", "--no-enable-prefix-caching", "--max-num-seqs", "7",
                     "--shutdown-grace-s", "2.5", "--port", "9000")
    (spec,) = plan_replicas(parent, 1, [9101], [0, 1], [])
    child = _config(*spec.argv)
    assert child.server.port == 9101 and child.server.host == "127.0.0.1"
    assert dataclasses.replace(child, server=parent.server) == parent


def test_an_auto_host_pool_is_shared_among_replicas():
    parent = _config("--host-memory-fraction", "0.6")
    specs = plan_replicas(parent, 3, [1, 2, 3], list(range(6)), [])
    for spec in specs:
        assert _config(*spec.argv).cache.host_memory_fraction == pytest.approx(0.2)
    explicit = plan_replicas(_config("--host-kv-tokens", "8192"), 2, [1, 2], [0, 1], [])
    assert all(_config(*s.argv).cache.host_kv_tokens == 8192 for s in explicit)  # a number is per replica


def test_cpus_and_gpus_are_split_into_disjoint_runs():
    specs = plan_replicas(Config(), 2, [11, 12], [0, 1, 2, 3, 4], ["3", "5", "6", "7"])
    assert [s.cpu_ids for s in specs] == [(0, 1, 2), (3, 4)]
    assert [s.gpu_ids for s in specs] == [("3", "5"), ("6", "7")]
    assert specs[1].env({})["CUDA_VISIBLE_DEVICES"] == "6,7"
    assert "CUDA_VISIBLE_DEVICES" not in plan_replicas(Config(), 1, [1], [0], [])[0].env({})
    assert split_evenly([1, 2, 3], 3) == [(1,), (2,), (3,)]


def test_visible_gpus_follow_cuda_visible_devices():
    assert visible_gpu_ids({}, 2) == ["0", "1"]
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "2, 3"}, 8) == ["2", "3"]
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": ""}, 8) == []
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "-1"}, 8) == []


@pytest.mark.parametrize(
    ("replicas", "ports", "cpus", "gpus", "message"),
    [
        (0, [], [0], [], "must be >= 1"),
        (3, [1, 2, 3], [0, 1], [], "at least 3 CPUs"),
        (2, [1, 2], [0, 1], ["0"], "need 2 GPUs, 1 visible"),
        (2, [1], [0, 1], [], "need 2 ports"),
    ],
)
def test_a_machine_too_small_is_refused_with_a_clear_error(replicas, ports, cpus, gpus, message):
    with pytest.raises(ValueError, match=message):
        plan_replicas(Config(), replicas, ports, cpus, gpus)


def test_the_router_command_names_the_workers_policy_and_load_poll():
    cmd = router_command(RouterSettings(policy="cache_aware", extra_args=("--retry-max-retries", "2")), "0.0.0.0", 8000,
                         ["http://127.0.0.1:1", "http://127.0.0.1:2"], 9999)
    assert cmd[1:3] == ["-m", "sglang_router.launch_router"]
    assert cmd[cmd.index("--worker-urls") + 1 : cmd.index("--worker-urls") + 3] == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    assert cmd[cmd.index("--policy") + 1] == "cache_aware"
    assert cmd[cmd.index("--worker-startup-check-interval") + 1] == "1"  # the /get_load poll in 0.3.2
    assert cmd[-2:] == ["--retry-max-retries", "2"]
    with pytest.raises(ValueError, match="router policy"):
        RouterSettings(policy="fastest")


def test_config_argv_of_the_default_config_is_empty():
    assert config_argv(Config()) == []
