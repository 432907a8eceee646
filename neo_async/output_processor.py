"""Detokenizes sampled tokens, applies stop conditions, and produces per-request deltas.

Without a tokenizer (skip_tokenizer_init) deltas carry token ids and empty text, and a
logprob's token text is `token_id:<id>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from neo_async.model.tokenizer import DecodeStream, Tokenizer, token_text
from neo_async.outputs import FinishReason, RequestDelta, TokenLogprob
from neo_async.sched.request import Request


@dataclass
class _State:
    stream: DecodeStream | None  # None without a tokenizer
    text: str = ""  # decoded output so far (cut at a stop string once one matched)
    num_sent_chars: int = 0
    num_sent_tokens: int = 0
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    max_stop_len: int = 0
    # prompt_logprobs[p]: prompt token p's logprob, gathered chunk by chunk (None at position 0);
    # None once sent
    prompt_logprobs: list[TokenLogprob | None] | None = field(default_factory=lambda: [None])


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer | None, eos_token_ids: tuple[int, ...]) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self._states: dict[str, _State] = {}

    def add(self, request: Request) -> None:
        max_stop = max((len(s) for s in request.params.stop), default=0)
        self._states[request.request_id] = _State(self._decode_stream(), max_stop_len=max_stop)

    def _decode_stream(self) -> DecodeStream | None:
        return None if self.tokenizer is None else self.tokenizer.decode_stream()

    def drop(self, request_id: str) -> None:
        self._states.pop(request_id, None)

    def text_of(self, request_id: str) -> str:
        return self._states[request_id].text

    def on_prompt_logprobs(self, request_id: str, first_pos: int, scored: list) -> None:
        """Prompt tokens first_pos, first_pos + 1, ... scored by a prefill chunk; positions
        already held (a prefill recomputed after preemption) are skipped."""
        state = self._states.get(request_id)
        if state is None or state.prompt_logprobs is None:
            return
        for pos, (token, logprob, top) in enumerate(scored, start=first_pos):
            if pos == len(state.prompt_logprobs):
                state.prompt_logprobs.append(self._token_logprob(token, (logprob, top)))

    def on_token(self, request: Request, logprob: tuple[float, list[tuple[int, float]]] | None) -> RequestDelta | None:
        """Account for the request's newest token. Returns a delta (None if nothing to send yet)."""
        state = self._states[request.request_id]
        p = request.params
        token = request.token_ids[-1]
        if logprob is not None:
            state.pending_logprobs.append(self._token_logprob(token, logprob))
        finish: FinishReason | None = None
        stop_reason: int | str | None = None
        if token in p.stop_token_ids:
            finish, stop_reason = FinishReason.STOP, token
        elif token in self.eos_token_ids and not p.ignore_eos:
            finish, stop_reason = FinishReason.STOP, None
        elif state.stream is not None:
            new_text = state.stream.step(token)
            if new_text:
                state.text += new_text
                if p.stop:
                    matched = self._cut_at_stop(state, len(new_text), p.stop, p.include_stop_str_in_output)
                    if matched is not None:
                        finish, stop_reason = FinishReason.STOP, matched
        if finish is None and (request.num_output_tokens >= p.max_tokens or request.num_tokens >= request.max_total_tokens):
            finish = FinishReason.LENGTH
        return self._delta(request, state, finish, stop_reason)

    def finish_aborted(self, request: Request) -> RequestDelta:
        state = self._states.get(request.request_id) or _State(self._decode_stream())
        delta = self._delta(request, state, FinishReason.ABORT, None)
        assert delta is not None
        return delta

    def _cut_at_stop(self, state: _State, num_new_chars: int, stops: tuple[str, ...], include: bool) -> str | None:
        search_from = max(0, len(state.text) - num_new_chars - state.max_stop_len + 1)
        best: tuple[int, str] | None = None
        for stop in stops:
            index = state.text.find(stop, search_from)
            if index >= 0 and (best is None or index < best[0]):
                best = (index, stop)
        if best is None:
            return None
        index, stop = best
        state.text = state.text[: index + len(stop) if include else index]
        state.num_sent_chars = min(state.num_sent_chars, len(state.text))
        return stop

    def _delta(self, request: Request, state: _State, finish: FinishReason | None, stop_reason: int | str | None) -> RequestDelta | None:
        if finish is None and state.max_stop_len:
            upto = max(state.num_sent_chars, len(state.text) - state.max_stop_len + 1)  # hold back a possible stop prefix
        else:
            upto = len(state.text)
        new_tokens = request.output_token_ids[state.num_sent_tokens :]
        text = state.text[state.num_sent_chars : upto]
        if finish is None and not new_tokens and not text:
            return None
        state.num_sent_chars = upto
        state.num_sent_tokens = request.num_output_tokens
        logprobs = None
        if request.params.logprobs is not None:
            logprobs, state.pending_logprobs = state.pending_logprobs, []
        prompt_logprobs = None
        is_complete = state.prompt_logprobs is not None and len(state.prompt_logprobs) == request.num_prompt_tokens
        if request.params.prompt_logprobs is not None and is_complete:
            prompt_logprobs, state.prompt_logprobs = state.prompt_logprobs, None
        if finish is not None:
            self._states.pop(request.request_id, None)
        return RequestDelta(
            request_id=request.request_id,
            token_ids=new_tokens,
            text=text,
            logprobs=logprobs,
            finish_reason=finish,
            num_prompt_tokens=request.num_prompt_tokens,
            num_output_tokens=request.num_output_tokens,
            stop_reason=stop_reason,
            prompt_logprobs=prompt_logprobs,
        )

    def _token_logprob(self, token: int, logprob: tuple[float, list[tuple[int, float]]]) -> TokenLogprob:
        chosen, top = logprob
        return TokenLogprob(token, self._token_text(token), chosen, tuple((t, self._token_text(t), lp) for t, lp in top))

    def _token_text(self, token: int) -> str:
        return token_text(self.tokenizer, token)
