"""`neo-async bench offline`: tokens/s of our engine and of HF transformers `generate`, on the
embedded model, the same prompts in the same run (bf16 by default)."""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

import torch

from neo_async.bench.common import machine_info, print_table, write_json

TOPICS = ["the ocean", "a small robot", "mountains in winter", "the history of bread", "a city at night", "learning to code",
          "a lost key", "the moon landing"]


def make_prompts(n: int) -> list[str]:
    return [f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]} (part {i + 1})." for i in range(n)]


def bench_ours(llm: Any, prompts: list[str], max_tokens: int) -> dict[str, float]:
    from neo_async import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    started = time.perf_counter()
    outs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - started
    tokens = sum(len(o.token_ids) for o in outs)
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


def bench_hf(model: Any, tokenizer: Any, prompts: list[str], max_tokens: int) -> dict[str, float]:
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **batch, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    elapsed = time.perf_counter() - started
    tokens = (out.shape[1] - batch["input_ids"].shape[1]) * len(prompts)
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="neo-async bench offline", description=__doc__)
    parser.add_argument("--batches", default="1,16,32", help="numbers of concurrent requests")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--skip-hf", action="store_true", help="only our engine")
    parser.add_argument("--repeats", type=int, default=1, help="runs per case (best is reported)")
    parser.add_argument("--output", default="results/bench_offline.json")
    args = parser.parse_args(argv)
    from neo_async import LLM
    from neo_async.logging_setup import configure_logging
    from neo_async.model.registry import default_model_path

    configure_logging("console", "warning")
    batches = [int(b) for b in args.batches.split(",")]
    # no prefix cache: the repeats and batch sizes share prompts, and HF computes every one
    llm = LLM(dtype=args.dtype, device_threads=args.threads, max_num_seqs=max(batches), device_kv_tokens=32768,
              enable_prefix_caching=False)
    hf = hf_tok = None
    if not args.skip_hf:
        import transformers

        path = default_model_path()
        hf_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, padding_side="left")
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=getattr(torch, args.dtype)
        ).eval()
    bench_ours(llm, make_prompts(2), 8)  # warm-up: first-call kernel selection
    rows = []
    for n in batches:
        prompts = make_prompts(n)
        ours = max((bench_ours(llm, prompts, args.max_tokens) for _ in range(args.repeats)), key=lambda r: r["tokens_per_s"])
        row = {"requests": n, "ours_tok_s": ours["tokens_per_s"], "ours_s": ours["seconds"]}
        if hf is not None:
            gc.collect()
            ref = max((bench_hf(hf, hf_tok, prompts, args.max_tokens) for _ in range(args.repeats)), key=lambda r: r["tokens_per_s"])
            row |= {"hf_tok_s": ref["tokens_per_s"], "hf_s": ref["seconds"], "ratio": ours["tokens_per_s"] / ref["tokens_per_s"]}
        rows.append(row)
        print_table([row], list(row))
    print()
    print_table(rows, list(rows[0]))
    write_json(args.output, {"bench": "offline", "dtype": args.dtype, "max_tokens": args.max_tokens,
                             "threads": torch.get_num_threads(), "machine": machine_info(), "rows": rows})
    return 0
