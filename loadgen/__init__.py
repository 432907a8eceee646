"""neo-loadgen: replay a trace or a synthetic workload against an OpenAI-compatible server.

Pipeline (one module each): a dataset loader yields `RequestSpec`s (lengths, trace times),
`prompts` turns each into a prompt of exact token length, `arrivals` gives send offsets,
`runner` sends them through `client` (streaming SSE) and collects `RequestRecord`s,
`metrics` summarises them the way `vllm bench serve` does, `report` writes the files,
`sweep` repeats a run per request rate and `plot` draws the load-latency curve.
"""

from neo_async.logging_setup import use_library_default as _use_library_default

_use_library_default()
