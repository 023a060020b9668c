"""The ``/v1/completions`` request and response of the worker's server: prompts (token ids or text)
and vLLM's sampling fields to :class:`~workers.engine.sampling.SamplingOptions`, engine results to
OpenAI completion choices (processed and prompt log-probs, token ids; ``-inf`` clamped to vLLM's
-9999.0). Imports :mod:`workers.protocol`, :mod:`workers.dialect` and :mod:`workers.engine`
(core, sampling, types); :mod:`workers.routes` calls it.
See docs/DESIGN.md (the LLM worker) for the invariants and figures.
"""

from __future__ import annotations

from workers.dialect import DialectError, clamp_logprob, effective_max_tokens
from workers.engine.core import Engine
from workers.engine.sampling import SamplingOptions
from workers.engine.types import EngineInputError, PromptResult, Sample
from workers.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    PromptLogprob,
    token_id_str,
)

MAX_N = 256


def prompt_lists(engine: Engine, request: CompletionRequest) -> list[list[int]]:
    prompt = request.prompt
    if isinstance(prompt, str):
        return [engine.tokenize_text(prompt, add_special_tokens=request.add_special_tokens)]
    if not prompt:
        raise EngineInputError("`prompt` must not be empty.")
    first = prompt[0]
    if isinstance(first, int):
        return [[int(t) for t in prompt]]  # type: ignore[arg-type]
    if isinstance(first, str):
        return [engine.tokenize_text(str(p), add_special_tokens=request.add_special_tokens) for p in prompt]
    return [[int(t) for t in p] for p in prompt]  # type: ignore[union-attr]


def sampling_options(engine: Engine, request: CompletionRequest, prompts: list[list[int]]) -> SamplingOptions:
    if request.n > MAX_N:
        raise DialectError(f"n must be at most {MAX_N}, got {request.n}.", "n")
    max_tokens = effective_max_tokens(request)
    if max_tokens < 1:
        raise DialectError(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
    stop: tuple[str, ...] = ()
    if isinstance(request.stop, str):
        stop = (request.stop,) if request.stop else ()
    elif request.stop:
        stop = tuple(s for s in request.stop if s)
    return SamplingOptions(
        n=request.n,
        max_tokens=max_tokens,
        temperature=request.effective_temperature(),
        top_p=request.effective_top_p(),
        seed=request.seed,
        logprobs=request.logprobs,
        ignore_eos=request.ignore_eos,
        min_tokens=request.min_tokens,
        stop=stop,
        stop_token_ids=tuple(request.stop_token_ids or ()),
        include_stop_str_in_output=request.include_stop_str_in_output,
        skip_special_tokens=request.skip_special_tokens,
    )


def build_choices(
    engine: Engine, request: CompletionRequest, results: list[PromptResult]
) -> list[CompletionChoice]:
    as_ids = bool(request.return_tokens_as_token_ids)
    with_ids = bool(request.return_token_ids)
    choices: list[CompletionChoice] = []
    for p, result in enumerate(results):
        prompt_logprobs = _prompt_logprobs(engine, result) if result.scores is not None else None
        for j, sample in enumerate(result.samples):
            logprobs = _sample_logprobs(engine, sample, as_ids) if request.logprobs is not None else None
            choices.append(
                CompletionChoice(
                    index=p * request.n + j,
                    text=sample.text,
                    logprobs=logprobs,
                    finish_reason=sample.finish_reason,
                    stop_reason=sample.stop_reason,
                    token_ids=list(sample.token_ids) if with_ids else None,
                    prompt_logprobs=prompt_logprobs,
                    prompt_token_ids=list(result.prompt_ids) if with_ids else None,
                )
            )
    return choices


def _prompt_logprobs(engine: Engine, result: PromptResult) -> list[dict[str, PromptLogprob] | None]:
    """vLLM's ``prompt_logprobs``: per position, the prompt token's entry then the top-k others."""
    assert result.scores is not None
    ids = result.prompt_ids
    texts = engine.token_texts(ids)
    prompt_logprobs: list[dict[str, PromptLogprob] | None] = [None]
    for t in range(1, len(ids)):
        value = result.scores.token_logprobs[t]
        assert value is not None
        value = clamp_logprob(value)
        entry: dict[str, PromptLogprob] = {
            str(ids[t]): PromptLogprob(logprob=value, rank=result.scores.ranks[t], decoded_token=texts[t])
        }
        if result.scores.top is not None:
            for rank, (tid, lp) in enumerate(result.scores.top[t], start=1):
                if str(tid) not in entry:
                    entry[str(tid)] = PromptLogprob(
                        logprob=clamp_logprob(lp), rank=rank, decoded_token=engine.token_text(tid)
                    )
        prompt_logprobs.append(entry)
    return prompt_logprobs


def _sample_logprobs(engine: Engine, sample: Sample, as_ids: bool) -> CompletionLogprobs:
    """A choice's ``logprobs`` (tokens as text, or as ``token_id:N`` with ``as_ids``)."""
    names = [token_id_str(t) for t in sample.token_ids] if as_ids else engine.token_texts(sample.token_ids)
    offsets: list[int] = []
    position = 0
    for name in names:
        offsets.append(position)
        position += len(name)
    top: list[dict[str, float] | None] = []
    for step in sample.top_logprobs or []:
        top.append(
            {(token_id_str(tid) if as_ids else engine.token_text(tid)): clamp_logprob(lp) for tid, lp in step}
        )
    return CompletionLogprobs(
        text_offset=offsets,
        token_logprobs=[clamp_logprob(v) for v in sample.logprobs],
        tokens=names,
        top_logprobs=top,
    )
