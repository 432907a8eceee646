"""The embedding API: `LLM(...).generate(prompts, SamplingParams(...))`."""

from __future__ import annotations

import sys
import time
from typing import Any, Sequence

from neo_async.config import Config
from neo_async.engine import Engine
from neo_async.outputs import RequestOutput
from neo_async.sampling_params import SamplingParams


class LLM:
    """Offline batched generation on our engine.

    Keyword arguments are config fields by name (`dtype`, `device_kv_tokens`, `block_size`,
    `max_num_seqs`, ...), applied over `config` (or the defaults).

    With `skip_tokenizer_init=True` no tokenizer is loaded (`self.tokenizer` is None): prompts
    must be token ids, outputs carry `token_ids` with empty `text`, and `chat`, string prompts
    and stop strings raise ValueError.
    """

    def __init__(self, model: str | None = None, config: Config | None = None, **overrides: Any) -> None:
        config = (config or Config()).override(model=model, **overrides).validate()
        self.engine = Engine(config)
        self.tokenizer = self.engine.tokenizer
        self._counter = 0

    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for every prompt (strings or token id lists); outputs keep the input order.

        With use_tqdm, a progress bar over the prompts goes to stderr when it is a terminal.
        """
        batch = _as_prompt_list(prompts)
        if params is None or isinstance(params, SamplingParams):
            param_list = [params or SamplingParams()] * len(batch)
        else:
            param_list = list(params)
            if len(param_list) != len(batch):
                raise ValueError(f"{len(param_list)} SamplingParams for {len(batch)} prompts")
        requests = []
        for prompt, p in zip(batch, param_list):
            self._counter += 1
            requests.append(self.engine.make_request(prompt, p, request_id=f"llm-{self._counter}"))
        started = {}
        texts: dict[str, list[str]] = {r.request_id: [] for r in requests}
        logprobs: dict[str, list] = {r.request_id: [] for r in requests}
        prompt_logprobs: dict[str, list] = {}
        finals = {}
        for request in requests:
            self.engine.add_request(request)
            started[request.request_id] = time.perf_counter()
        progress = _progress_bar(len(requests)) if use_tqdm else None
        while len(finals) < len(requests):
            for delta in self.engine.step():
                texts[delta.request_id].append(delta.text)
                if delta.logprobs:
                    logprobs[delta.request_id].extend(delta.logprobs)
                if delta.prompt_logprobs is not None:
                    prompt_logprobs[delta.request_id] = delta.prompt_logprobs
                if delta.is_finished:
                    finals[delta.request_id] = delta
                    if progress is not None:
                        progress.update(1)
        if progress is not None:
            progress.close()
        outputs = []
        for request in requests:
            final = finals[request.request_id]
            outputs.append(
                RequestOutput(
                    request_id=request.request_id,
                    prompt_token_ids=request.prompt_token_ids,
                    token_ids=request.output_token_ids,
                    text="".join(texts[request.request_id]),
                    finish_reason=final.finish_reason,
                    logprobs=logprobs[request.request_id] if request.params.logprobs is not None else None,
                    stop_reason=final.stop_reason,
                    prompt_logprobs=prompt_logprobs.get(request.request_id),
                )
            )
        return outputs

    def chat(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        params: SamplingParams | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation (or a list of them) and generate."""
        if self.tokenizer is None:
            raise ValueError("chat needs the model's tokenizer and chat template; this LLM runs with skip_tokenizer_init")
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True) for c in conversations]  # type: ignore[arg-type]
        return self.generate(prompts, params, use_tqdm=use_tqdm)


def _progress_bar(total: int) -> Any:
    """A tqdm bar over `total` prompts on stderr, or None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="Generating", unit="prompt", file=sys.stderr, dynamic_ncols=True)


def _as_prompt_list(prompts: Any) -> list[str | list[int]]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    if all(isinstance(p, int) for p in prompts):
        return [prompts]
    return [p if isinstance(p, str) else list(p) for p in prompts]
