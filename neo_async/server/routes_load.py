"""What a router in front of several replicas reads: GET /get_load, and the metadata routes
/get_server_info and /get_model_info (also without the `get_` prefix).

Contract of /get_load (sglang-router 0.3.2, `WorkerManager::get_worker_load` in
sgl-model-gateway/src/core/worker_manager.rs): a JSON array with one object per data-parallel
rank inside this server (always one here); the router reads each object's integer `num_tokens`
and takes their sum as the replica's load, which its power_of_two policy compares (lower wins).
A response that is not an array counts as a failed fetch. Its other fields (`dp_rank`,
`num_reqs`, `num_waiting_reqs`) are sglang's own; the rest are ours (requests on the host pool,
KV tokens in use per pool), for people and tests.

`num_tokens` is sglang's measure: tokens whose KV the replica holds for its running requests
plus the prompt tokens of those still waiting, here the prompt and output tokens of every
unfinished choice. It counts requests on the host pool as well: they hold memory and host
attention time as device-resident ones do.
"""

from __future__ import annotations

from aiohttp import web

from neo_async.engine_stats import EngineStats
from neo_async.server.generation import Generation
from neo_async.server.state import STATE


def load_entry(stats: EngineStats, generations: set[Generation] | list[Generation], block_size: int) -> dict[str, int]:
    """The one object of /get_load's array for an engine in this state."""
    num_tokens = sum(
        choice.num_prompt_tokens + choice.num_output_tokens
        for generation in generations
        for choice in generation.choices
        if not choice.is_finished
    )
    return {
        "dp_rank": 0,
        "num_tokens": num_tokens,
        "num_reqs": stats.num_running + stats.num_waiting,
        "num_waiting_reqs": stats.num_waiting,
        "num_running_reqs": stats.num_running,
        "num_host_reqs": stats.num_requests_on_host,
        "num_device_kv_tokens_used": stats.num_device_blocks_used * block_size,
        "num_host_kv_tokens_used": stats.num_host_blocks_used * block_size,
        "num_device_kv_tokens_total": stats.num_device_blocks_total * block_size,
        "num_host_kv_tokens_total": stats.num_host_blocks_total * block_size,
    }


async def get_load(request: web.Request) -> web.Response:
    state = request.app[STATE]
    assert state.engine is not None
    entry = load_entry(state.engine.stats(), state.in_flight, state.config.cache.block_size)
    return web.json_response([entry])


async def get_server_info(request: web.Request) -> web.Response:
    """Fields of sglang's /server_info that the router reads (`ServerInfo` in
    sgl-model-gateway/src/core/steps/worker/local/discover_metadata.rs), all optional there.
    NOTE: no `model_path`: the router would try to fetch a tokenizer for it (from the Hub when
    it is no local directory), which it needs only for its gRPC mode."""
    state = request.app[STATE]
    assert state.engine is not None
    return web.json_response(
        {
            "served_model_name": state.engine.model_name,
            "dp_size": 1,
            "max_running_requests": state.config.scheduler.max_num_seqs,
            "max_prefill_tokens": state.config.scheduler.max_num_batched_tokens,
            "version": _version(),
        }
    )


async def get_model_info(request: web.Request) -> web.Response:
    state = request.app[STATE]
    assert state.engine is not None
    return web.json_response({"is_generation": True, "served_model_name": state.engine.model_name})


def add_load_routes(app: web.Application) -> None:
    app.router.add_get("/get_load", get_load)
    for prefix in ("/get_", "/"):  # the router asks without the prefix first, then with it
        app.router.add_get(prefix + "server_info", get_server_info)
        app.router.add_get(prefix + "model_info", get_model_info)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("neo-async")
    except PackageNotFoundError:
        return "unknown"
