"""`neo-async` command line: each subcommand lives in its own module, imported on use."""

from __future__ import annotations

import importlib
import sys

# subcommand -> "module:function"; the function takes argv (list[str]) and returns an exit code.
COMMANDS = {
    "serve": ("neo_async.server.serve:main", "run the OpenAI-compatible HTTP server"),
    "generate": ("neo_async.generate_cli:main", "generate text for one prompt and print it"),
    "profile": ("neo_async.profile.cli:main", "measure this machine's cost tables (JSON, PNG plots)"),
    "simulate": ("neo_async.sim.cli:simulate_main", "replay a workload on simulated hardware"),
    "plan": ("neo_async.sim.cli:plan_main", "compare off / neo / full on simulated hardware"),
    "bench": (None, "benchmarks: offline | kernel | offload | latency | prefix | serve | load | tp | replicas | cpu-serve"),
}
BENCHES = {
    "offline": "neo_async.bench.offline:main",
    "kernel": "neo_async.bench.kernel:main",
    "offload": "neo_async.bench.offload:main",
    "latency": "neo_async.bench.latency:main",
    "prefix": "neo_async.bench.prefix:main",
    "tp": "neo_async.bench.tensor_parallel:main",
    "serve": "loadgen.cli:main",
    "load": "neo_async.bench.load:main",
    "replicas": "neo_async.bench.replicas:main",
    "cpu-serve": "neo_async.bench.cpu_serve:main",
}


def _usage() -> str:
    lines = ["usage: neo-async <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "bench kinds: " + ", ".join(BENCHES)]
    return "\n".join(lines)


def _call(target: str, argv: list[str]) -> int:
    module_name, func_name = target.split(":")
    return int(getattr(importlib.import_module(module_name), func_name)(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"neo-async: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if command == "bench":
        if not rest or rest[0] not in BENCHES:
            print(f"usage: neo-async bench {{{'|'.join(BENCHES)}}} [options]", file=sys.stderr)
            return 2
        return _call(BENCHES[rest[0]], rest[1:])
    return _call(COMMANDS[command][0], rest)


if __name__ == "__main__":
    sys.exit(main())
