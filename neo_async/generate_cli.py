"""`neo-async generate`: one prompt through the engine, text to stdout."""

from __future__ import annotations

import argparse
import sys

from neo_async.config import add_config_flags, config_from_args
from neo_async.logging_setup import configure_logging
from neo_async.sampling_params import SamplingParams

_ENGINE_GROUPS = ("model", "cache", "scheduler")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="neo-async generate", description="Generate text for one prompt.")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--verbose", action="store_true", help="log engine events to stderr")
    add_config_flags(parser, _ENGINE_GROUPS)
    args = parser.parse_args(argv)
    configure_logging("console", "info" if args.verbose else "warning")
    try:
        params = SamplingParams(
            max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed
        )
        params.validate()
        config = config_from_args(args, _ENGINE_GROUPS)
    except ValueError as exc:
        parser.error(str(exc))
    from neo_async.llm import LLM

    llm = LLM(config=config)
    if args.chat:
        output = llm.chat([{"role": "user", "content": args.prompt}], params)[0]
    else:
        output = llm.generate(args.prompt, params)[0]
    sys.stdout.write(output.text + "\n")
    return 0
