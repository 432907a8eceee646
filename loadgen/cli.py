"""`neo-loadgen` (also `neo-async bench serve`): flags follow `vllm bench serve`.

Examples:
  neo-loadgen --dataset-name azure --dataset-path azure_llm_2023_conv.csv \\
      --use-trace-timestamps --trace-time-scale 0.5 --num-prompts 200 --save-result
  neo-loadgen --dataset-name synthetic --input-len 1000 --output-len 100 --range-ratio 0.1 \\
      --num-prompts 64 --request-rate inf --ignore-eos
  neo-loadgen --dataset-name lengths --dataset-path osc_lengths_llama2.json \\
      --request-rates 0.5,1,2,4 --label neo
  neo-loadgen --compare neo-sweep.json device-only-sweep.json --plot-path cmp.png
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import structlog

from loadgen import arrivals, client, report, runner, sweep
from loadgen.datasets import DATASET_NAMES, NEEDS_TOKENIZER, DatasetOptions, load_dataset
from loadgen.metrics import summarize
from loadgen.progress import Progress
from loadgen.prompts import PROMPT_FORMATS, PromptBuilder
from loadgen.slo import parse_slos
from loadgen.tokenizer import load_tokenizer

log = structlog.get_logger(__name__)


class UsageError(ValueError):
    """A bad combination of flags or inputs: reported in one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neo-loadgen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    server = p.add_argument_group("server")
    server.add_argument("--base-url", default=None, help="e.g. http://127.0.0.1:8000 (default: from --host/--port)")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--endpoint", default="/v1/completions", help="/v1/completions or /v1/chat/completions")
    server.add_argument("--model", default=None, help="model name sent (default: the first of GET /v1/models)")
    server.add_argument(
        "--ready-timeout", type=float, default=0.0, help="wait up to S seconds for the server to answer"
    )
    server.add_argument("--request-timeout", type=float, default=6 * 3600.0, help="per request, seconds")

    prompts = p.add_argument_group("prompts")
    prompts.add_argument(
        "--tokenizer", default=None, help="tokenizer.json, HF directory or GGUF (default: the server's embedded model)"
    )
    prompts.add_argument(
        "--prompt-format", choices=PROMPT_FORMATS, default="text", help="ids: token-id lists (completions only)"
    )
    prompts.add_argument("--vocab-size", type=int, default=None, help="with --prompt-format ids and no tokenizer")

    data = p.add_argument_group("workload")
    data.add_argument("--dataset-name", choices=DATASET_NAMES, default="synthetic")
    data.add_argument("--dataset-path", default=None)
    data.add_argument("--num-prompts", type=int, default=None, help="default: every row (synthetic: 1000)")
    data.add_argument("--shuffle", action="store_true", help="sample rows with --seed instead of file order")
    data.add_argument("--input-len", "--random-input-len", dest="input_len", type=int, default=1024)
    data.add_argument("--output-len", "--random-output-len", dest="output_len", type=int, default=128)
    data.add_argument("--range-ratio", "--random-range-ratio", dest="range_ratio", type=float, default=0.0)
    data.add_argument("--max-input-len", type=int, default=None, help="clip prompts (ShareGPT: skip longer ones)")
    data.add_argument("--max-output-len", type=int, default=None, help="clip output lengths")
    data.add_argument("--fixed-output-len", "--sharegpt-output-len", dest="fixed_output_len", type=int, default=None)
    data.add_argument("--burstgpt-model", default=None, help="keep only this model's BurstGPT rows")
    data.add_argument("--mooncake-block-size", type=int, default=512, help="tokens per Mooncake hash id")
    data.add_argument("--prefix-repetition-prefix-len", dest="prefix_len", type=int, default=256, help="tokens per shared prefix")
    data.add_argument("--prefix-repetition-suffix-len", dest="suffix_len", type=int, default=256, help="unique tokens after it")
    data.add_argument("--prefix-repetition-num-prefixes", dest="num_prefixes", type=int, default=10, help="distinct prefixes")

    load = p.add_argument_group("arrivals")
    load.add_argument("--request-rate", type=float, default=math.inf, help="requests/s; inf = all at once")
    load.add_argument("--burstiness", type=float, default=1.0, help="gamma shape; 1 = Poisson")
    load.add_argument("--use-trace-timestamps", action="store_true", help="send at the trace's own times")
    load.add_argument("--trace-time-scale", type=float, default=1.0, help="multiplies trace gaps (0.5 = twice as fast)")
    load.add_argument("--trace-start", type=float, default=0.0, help="window start, s after the trace's first row")
    load.add_argument("--trace-duration", type=float, default=None, help="window length, s of trace time")
    load.add_argument("--max-concurrency", type=int, default=None)
    load.add_argument("--duration", type=float, default=None, help="send nothing after S seconds")
    load.add_argument("--seed", type=int, default=0)

    req = p.add_argument_group("requests")
    req.add_argument("--ignore-eos", action="store_true")
    req.add_argument("--temperature", type=float, default=0.0)
    req.add_argument("--extra-body", default=None, help="JSON object merged into every request")

    out = p.add_argument_group("results")
    out.add_argument("--goodput", nargs="+", default=None, metavar="NAME:MS", help="SLOs: ttft:MS tpot:MS e2el:MS")
    out.add_argument("--metric-percentiles", default="50,90,99", help="comma-separated; 90 and 99 always reported")
    out.add_argument("--label", default=None, help="the system's name in files and plots")
    out.add_argument("--metadata", nargs="*", default=[], metavar="KEY=VALUE")
    out.add_argument("--save-result", action="store_true")
    out.add_argument("--save-detailed", action="store_true", help="also vLLM's per-request arrays in the result file")
    out.add_argument("--result-dir", default=".")
    out.add_argument("--result-filename", default=None)
    out.add_argument("--disable-tqdm", "--no-progress", dest="is_progress_off", action="store_true")
    out.add_argument("-v", "--verbose", action="store_true")

    sw = p.add_argument_group("sweeps and plots")
    sw.add_argument("--request-rates", default=None, help="comma-separated rates: one run each, then a plot")
    sw.add_argument(
        "--compare", nargs="+", default=None, metavar="SWEEP.json", help="plot saved sweeps together, run nothing"
    )
    sw.add_argument("--plot-path", default=None, help="PNG path for sweep or --compare plots")
    return p


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not a comma-separated list of numbers") from None


def percentiles_of(text: str) -> tuple[float, ...]:
    wanted = set(parse_floats(text, "--metric-percentiles")) | {90.0, 99.0}
    if any(not 0 <= p <= 100 for p in wanted):
        raise UsageError("--metric-percentiles must lie in [0, 100]")
    return tuple(sorted(wanted))


def configure_logging(is_verbose: bool) -> dict:
    """Logs to stderr (looked up per log line); returns the configuration it replaced."""
    previous = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if is_verbose else logging.WARNING),
        logger_factory=lambda *args: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    return previous


def dataset_options(args: argparse.Namespace) -> DatasetOptions:
    return DatasetOptions(
        num_prompts=args.num_prompts,
        seed=args.seed,
        is_shuffled=args.shuffle,
        input_len=args.input_len,
        output_len=args.output_len,
        range_ratio=args.range_ratio,
        max_input_len=args.max_input_len,
        max_output_len=args.max_output_len,
        fixed_output_len=args.fixed_output_len,
        trace_start_s=args.trace_start,
        trace_duration_s=args.trace_duration,
        burstgpt_model=args.burstgpt_model,
        prefix_len=args.prefix_len,
        suffix_len=args.suffix_len,
        num_prefixes=args.num_prefixes,
    )


def check_args(args: argparse.Namespace) -> None:
    if args.endpoint not in client.ENDPOINTS:
        log.warning("unusual_endpoint", endpoint=args.endpoint)
    is_chat = args.endpoint.rstrip("/").endswith("chat/completions")
    if is_chat and args.prompt_format == "ids":
        raise UsageError("--prompt-format ids works with /v1/completions only")
    if args.use_trace_timestamps and args.request_rates:
        raise UsageError("--request-rates sweeps rates; it cannot be combined with --use-trace-timestamps")
    for item in args.metadata:
        if "=" not in item:
            raise UsageError(f"--metadata wants KEY=VALUE, got {item!r}")


def needs_tokenizer(args: argparse.Namespace) -> bool:
    return args.prompt_format == "text" or args.dataset_name in NEEDS_TOKENIZER or args.vocab_size is None


def send_offsets(args: argparse.Namespace, specs, request_rate: float) -> np.ndarray:
    if args.use_trace_timestamps:
        return arrivals.trace_offsets([s.timestamp_s for s in specs], args.trace_time_scale)
    return arrivals.rate_offsets(len(specs), request_rate, args.burstiness, np.random.default_rng(args.seed))


def settings_of(args: argparse.Namespace, model_id: str, label: str, base_url: str, request_rate: float) -> dict:
    rate = "trace" if args.use_trace_timestamps else report.json_rate(request_rate)
    return {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "label": label,
        "model_id": model_id,
        "tokenizer_id": args.tokenizer or "(embedded model)",
        "base_url": base_url,
        "endpoint": args.endpoint,
        "dataset_name": args.dataset_name,
        "dataset_path": args.dataset_path,
        "prompt_format": args.prompt_format,
        "request_rate": rate,
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
        "use_trace_timestamps": args.use_trace_timestamps,
        "trace_time_scale": args.trace_time_scale,
        "ignore_eos": args.ignore_eos,
        "seed": args.seed,
        **dict(item.split("=", 1) for item in args.metadata),
    }


async def resolve_model(session, config: client.ClientConfig) -> str:
    try:
        models = await client.fetch_models(session, config)
    except Exception as e:  # any failure here means the server is not usable
        raise UsageError(
            f"cannot list models at {config.base_url}/v1/models ({type(e).__name__}: {e}); pass --model"
        ) from None
    if not models:
        raise UsageError(f"{config.base_url}/v1/models lists no model; pass --model")
    return models[0]


def result_filename(args: argparse.Namespace, stem_parts: tuple, is_sweep: bool, rate: float) -> str:
    if args.result_filename is None:
        return report.default_stem(*stem_parts) + ".json"
    if not is_sweep:
        return args.result_filename
    path = Path(args.result_filename)
    return f"{path.stem}-{report.rate_label(rate)}qps{path.suffix or '.json'}"


async def run_all(args: argparse.Namespace) -> int:
    check_args(args)
    percentiles = percentiles_of(args.metric_percentiles)
    slos = parse_slos(args.goodput)
    rates = parse_floats(args.request_rates, "--request-rates") if args.request_rates else [args.request_rate]
    base_url = args.base_url or f"http://{args.host}:{args.port}"
    extra_body = json.loads(args.extra_body) if args.extra_body else {}
    if args.ready_timeout > 0 and not await client.wait_until_ready(base_url, args.ready_timeout):
        raise UsageError(f"server at {base_url} not ready after {args.ready_timeout:g} s")

    tokenizer = load_tokenizer(args.tokenizer) if needs_tokenizer(args) else None
    count_tokens = (lambda text: len(tokenizer.encode(text))) if tokenizer is not None else None
    specs = load_dataset(args.dataset_name, args.dataset_path, dataset_options(args), count_tokens)
    builder = PromptBuilder(tokenizer, args.prompt_format, args.seed, args.mooncake_block_size, args.vocab_size)
    prompts = [builder.build(spec, i) for i, spec in enumerate(specs)]
    log.info("workload_ready", num_requests=len(specs), dataset=args.dataset_name)

    config = client.ClientConfig(
        base_url=base_url,
        endpoint=args.endpoint,
        model=args.model or "",
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
        request_timeout_s=args.request_timeout,
        extra_body=extra_body,
    )
    results = []
    async with client.new_session(config) as session:
        if not config.model:
            config = dataclasses.replace(config, model=await resolve_model(session, config))
        label = args.label or ("openai-chat" if config.is_chat else "openai")
        started = datetime.now()
        for rate in rates:
            offsets = send_offsets(args, specs, rate)
            progress = Progress(
                len(specs),
                is_enabled=not args.is_progress_off,
                label="trace" if args.use_trace_timestamps else f"rate {report.rate_label(rate)}",
            )
            options = runner.RunOptions(args.max_concurrency, args.duration)
            outcome = await runner.run(session, config, specs, prompts, offsets, options, progress, count_tokens)
            result = settings_of(args, config.model, label, base_url, rate)
            result.update(summarize(outcome.records, outcome.duration_s, percentiles, slos))
            print(report.format_table(result, percentiles), flush=True)
            if args.save_result:
                if args.save_detailed:
                    result.update(report.detailed_arrays(outcome.records))
                stem = (label, result["request_rate"], args.max_concurrency, config.model, started)
                paths = report.save(
                    result, outcome.records, args.result_dir, result_filename(args, stem, len(rates) > 1, rate)
                )
                print(f"saved {paths[0]} and {paths[1]}", flush=True)
            results.append(result)
    if args.request_rates:
        document = sweep.sweep_document(label, config.model, results)
        stem = (
            f"{Path(args.result_filename).stem}-sweep"
            if args.result_filename
            else report.default_stem(label, "sweep", args.max_concurrency, config.model, started)
        )
        sweep_path = sweep.save_sweep(document, Path(args.result_dir) / f"{stem}.json")
        print(sweep.format_sweep_table(document))
        plot_path = plot_or_skip([document], args.plot_path or sweep_path.with_suffix(".png"))
        print(f"saved {sweep_path}" + (f" and {plot_path}" if plot_path else ""), flush=True)
    return 0 if all(r["completed"] > 0 for r in results) else 1


def plot_or_skip(documents: list[dict], path) -> Path | None:
    try:
        from loadgen.plot import plot_load_latency
    except ImportError:  # matplotlib is optional ([plot] extra)
        log.warning("plot_skipped", reason="matplotlib not installed")
        return None
    return plot_load_latency(documents, path)


def compare(args: argparse.Namespace) -> int:
    documents = [sweep.load_sweep(path) for path in args.compare]
    for document in documents:
        print(sweep.format_sweep_table(document))
    plot_path = plot_or_skip(documents, args.plot_path or "compare.png")
    if plot_path is not None:
        print(f"saved {plot_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    previous_logging = configure_logging(args.verbose)
    try:
        if args.compare:
            return compare(args)
        return asyncio.run(run_all(args))
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"neo-loadgen: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        structlog.configure(**previous_logging)  # main() may run inside another program


if __name__ == "__main__":
    sys.exit(main())
