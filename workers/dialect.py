"""Where this worker's ``/v1/completions`` dialect differs from vLLM's, and how it says so.

vLLM (0.33.0, ``vllm/entrypoints/openai/completion/protocol.py``) accepts ~60 request fields; this
worker implements the sampling subset MOSAIC needs. Invariant: **a field that would change the answer
and that the worker does not implement is refused** (400 ``BadRequestError`` whose ``param`` names
the field), never silently ignored; a field left at vLLM's neutral value (``top_k: -1``,
``repetition_penalty: 1.0``, ``logit_bias: {}`` ...) is accepted, so clients that always send them
work. Fields that change nothing here (``user``, ``request_id``, ``cache_salt``, ``session_id`` ...)
and unknown fields are accepted and ignored, as vLLM does. ``priority`` is implemented (a field of
:class:`~workers.protocol.CompletionRequest`, as vLLM's with ``--scheduling-policy priority``): it
orders waiting work in the batch loop and never changes an answer.

Also vLLM's numbers: ``max_tokens: null`` means 16 (vLLM's ``normalize_null_max_tokens``); a
log-prob of ``-inf`` is sent as ``-9999.0`` (vLLM's serving code clamps it: JSON has no ``-inf``
and ``null`` is refused by both response models); ``logprobs`` / ``prompt_logprobs`` above
``--max-logprobs`` (vLLM's default 20) are refused.

Imports :mod:`workers.engine.types` (the error type) and :mod:`workers.protocol` only.
See docs/DESIGN.md (the LLM worker) for the invariants and figures.
"""

from __future__ import annotations

from typing import Any

from workers.engine.types import EngineInputError
from workers.protocol import CompletionRequest

LOGPROB_FLOOR = -9999.0
NULL_MAX_TOKENS = 16
DEFAULT_MAX_LOGPROBS = 20

# field → the values that mean "off" in vLLM (a request with any other value is refused here).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "echo": (None, False),
    "stream": (None, False),
    "stream_options": (None,),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "use_beam_search": (None, False),
    "best_of": (None, 1),
    "length_penalty": (None, 1.0),
    "top_k": (None, 0, -1),
    "min_p": (None, 0.0),
    "repetition_penalty": (None, 1.0),
    "frequency_penalty": (None, 0.0),
    "presence_penalty": (None, 0.0),
    "watermarking": (None, False),
    "spaces_between_special_tokens": (None, True),
    "truncate_prompt_tokens": (None,),
    "truncation_side": (None,),
    "allowed_token_ids": (None,),
    "logprob_token_ids": (None,),
    "bad_words": (None, []),
    "prompt_embeds": (None,),
    "response_format": (None, {"type": "text"}),
    "structured_outputs": (None,),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
    "return_token_offsets": (None, False),
    "vllm_xargs": (None, {}),
    "repetition_detection": (None,),
    "thinking_token_budget": (None,),
    "logits_processors": (None, []),
}


class DialectError(EngineInputError):
    """A request field this worker refuses: HTTP 400 with ``param`` = the field (vLLM's shape)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _value(request: CompletionRequest, name: str) -> Any:
    if name in CompletionRequest.model_fields:
        return getattr(request, name)
    return (request.model_extra or {}).get(name)


def check_request(request: CompletionRequest, max_logprobs: int = DEFAULT_MAX_LOGPROBS) -> None:
    """Raise :class:`DialectError` for the first field the worker does not implement (sorted by name)."""
    for name in sorted(NEUTRAL):
        value = _value(request, name)
        if value not in NEUTRAL[name]:
            raise DialectError(
                f"`{name}` is not supported by this worker (got {value!r}); "
                f"omit it or send one of {list(NEUTRAL[name])!r}.",
                name,
            )
    for name in ("logprobs", "prompt_logprobs"):
        asked = getattr(request, name)
        if asked is not None and asked > max_logprobs:
            raise DialectError(
                f"Requested {name} of {asked}, which is greater than max allowed: {max_logprobs} "
                "(--max-logprobs).",
                name,
            )


def effective_max_tokens(request: CompletionRequest) -> int:
    """vLLM: ``max_tokens: null`` is the field's default, 16."""
    return NULL_MAX_TOKENS if request.max_tokens is None else request.max_tokens


def clamp_logprob(value: float) -> float:
    """vLLM's ``max(logprob, -9999.0)`` (a ``-inf`` that JSON cannot carry)."""
    return value if value >= LOGPROB_FLOOR else LOGPROB_FLOOR
