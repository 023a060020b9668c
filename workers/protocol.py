"""Pydantic v2 models of the worker HTTP contract (``docs/VLLM_PROTOCOL.md``).

They mirror the shapes of vLLM's ``vllm/entrypoints/openai/protocol.py`` (``CompletionRequest``,
``CompletionResponseChoice``, ``CompletionLogProbs``, ``UsageInfo``, ``TokenizeChatRequest``,
``ErrorResponse`` ...) restricted to the fields MOSAIC uses, so one set of models serves the worker
(``workers.server``) and the gateway's client, and both are tested against what vLLM emits.

Notes on vLLM's wire shapes that are easy to get wrong:

* ``prompt_logprobs`` is ``list[dict[token_id, Logprob] | None]``; JSON object keys are strings, so
  on the wire the key is ``"791"``. Entry 0 is ``null`` (no context for the first token).
* With ``return_tokens_as_token_ids`` the *generated* tokens in ``logprobs.tokens`` and the keys of
  ``logprobs.top_logprobs`` are ``"token_id:791"``; ``prompt_logprobs`` keys are plain ids either way.
* ``token_ids`` / ``prompt_token_ids`` on a choice appear only with ``return_token_ids: true``.
* Errors are ``{"error": {"message", "type", "param", "code"}}``.

Extra request fields are ignored (vLLM accepts and logs them) except those ``workers.dialect``
refuses; extra response fields from a real
vLLM (``stop_reason``, ``service_tier``, ``kv_transfer_params`` ...) are ignored when parsing.
See docs/DESIGN.md (the LLM worker) for the invariants and figures.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, model_validator
from typing_extensions import TypedDict

__all__ = [
    "ENGINE_HEADER",
    "ChatMessage",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionRequest",
    "CompletionResponse",
    "CompletionResponseView",
    "CompletionUsage",
    "DetokenizeRequest",
    "DetokenizeResponse",
    "ErrorInfo",
    "ErrorResponse",
    "ModelCard",
    "ModelList",
    "PromptLogprob",
    "TokenizeChatRequest",
    "TokenizeCompletionRequest",
    "TokenizeRequest",
    "TokenizeResponse",
    "VersionResponse",
    "parse_token_id",
    "token_id_str",
]

TOKEN_ID_PREFIX = "token_id:"


def token_id_str(token_id: int) -> str:
    """vLLM's spelling of a token with ``return_tokens_as_token_ids``: ``token_id:791``."""
    return f"{TOKEN_ID_PREFIX}{token_id}"


def parse_token_id(token: str) -> int:
    """Inverse of :func:`token_id_str`; also accepts a bare integer string (prompt_logprobs keys)."""
    text = token[len(TOKEN_ID_PREFIX) :] if token.startswith(TOKEN_ID_PREFIX) else token
    return int(text)


class _Model(BaseModel):
    """Base of every contract model: unknown fields are ignored, as vLLM does."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# --------------------------------------------------------------------------------------------- errors
class ErrorInfo(_Model):
    message: str
    type: str = "BadRequestError"
    param: str | None = None
    code: int = 400


class ErrorResponse(_Model):
    error: ErrorInfo

    @classmethod
    def build(
        cls, message: str, code: int = 400, type: str = "BadRequestError", param: str | None = None
    ) -> ErrorResponse:
        return cls(error=ErrorInfo(message=message, type=type, param=param, code=code))


# --------------------------------------------------------------------------------------------- models
class ModelCard(_Model):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "vllm"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(_Model):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)


# ------------------------------------------------------------------------------ engine identity (35)
# Every answer of our worker names the engine that gave it: the digest of its identity
# (``workers.identity``); a stock vLLM sends none.
ENGINE_HEADER = "X-Mosaic-Engine"


class VersionResponse(_Model):
    """``GET /version``: vLLM's ``{"version": ...}``; our worker adds what bit-identity of its
    log-probs depends on (``mosaic_engine``) and its digest (``mosaic_engine_id``)."""

    version: str
    mosaic_engine: dict[str, Any] | None = None
    mosaic_engine_id: str | None = None


# --------------------------------------------------------------------------------------- (de)tokenize
class ChatMessage(_Model):
    """One chat message. ``content`` may be a string or OpenAI content parts (text parts are joined)."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(
            str(part.get("text", "")) for part in self.content if part.get("type", "text") == "text"
        )


class TokenizeChatRequest(_Model):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    return_token_strs: bool | None = False

    @model_validator(mode="after")
    def _check_generation_prompt(self) -> TokenizeChatRequest:
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        return self


class TokenizeCompletionRequest(_Model):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


TokenizeRequest = TokenizeChatRequest | TokenizeCompletionRequest


class TokenizeResponse(_Model):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(_Model):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(_Model):
    prompt: str


# ---------------------------------------------------------------------------------------- completions
class CompletionRequest(_Model):
    """``POST /v1/completions`` (vLLM's ``CompletionRequest``, the fields MOSAIC needs).

    ``prompt``: one token-id list (generation) or a batch of token-id lists (scoring); a string or a
    list of strings is also accepted and tokenized by the worker (with ``add_special_tokens``).
    Unknown fields are kept in ``model_extra``: :mod:`workers.dialect` refuses the vLLM fields the
    worker does not implement (``logit_bias``, ``suffix`` ...) and ignores the rest, as vLLM does.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model: str | None = None
    prompt: list[int] | list[list[int]] | str | list[str]
    echo: bool | None = False
    frequency_penalty: float | None = None
    logprobs: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(16, ge=0)
    n: int = Field(1, ge=1)
    presence_penalty: float | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool | None = False
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    user: str | None = None
    # vLLM sampling extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    skip_special_tokens: bool = True
    prompt_logprobs: int | None = Field(None, ge=0)
    add_special_tokens: bool = True
    request_id: str | None = None
    # vLLM's `--scheduling-policy priority`: lower is handled earlier (the batch loop's order of waiting
    # work, workers.engine.scheduler); never changes an answer.
    priority: int = Field(0, ge=-(2**63), le=2**63 - 1)
    return_tokens_as_token_ids: bool | None = None
    return_token_ids: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        prompt = self.prompt
        if isinstance(prompt, list):
            if not prompt:
                raise ValueError("`prompt` must not be empty.")
            if isinstance(prompt[0], list) and any(len(p) == 0 for p in prompt):
                raise ValueError("`prompt` must not contain an empty token list.")
        return self

    # helpers -----------------------------------------------------------------------------------
    def is_batch(self) -> bool:
        """True when ``prompt`` holds several prompts (list of token lists or of strings)."""
        return isinstance(self.prompt, list) and bool(self.prompt) and not isinstance(self.prompt[0], int)

    def effective_temperature(self) -> float:
        return 1.0 if self.temperature is None else float(self.temperature)

    def effective_top_p(self) -> float:
        return 1.0 if self.top_p is None else float(self.top_p)


class PromptLogprob(TypedDict):
    """vLLM's ``Logprob``: one entry of a ``prompt_logprobs`` position.

    A TypedDict, not a model: a scoring answer holds one per prompt token (thousands), and pydantic
    validates plain dicts about twice as fast as it builds model instances (gateway overhead).
    """

    logprob: float
    rank: NotRequired[int | None]
    decoded_token: NotRequired[str | None]


class CompletionLogprobs(_Model):
    """vLLM's ``CompletionLogProbs`` (legacy OpenAI completions log-prob shape)."""

    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(_Model):
    """vLLM's ``CompletionResponseChoice``."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = None
    prompt_token_ids: list[int] | None = None

    def prompt_token_logprobs(self, prompt_token_ids: list[int] | None = None) -> list[float | None]:
        """Log-prob of each *actual* prompt token (``None`` at position 0).

        ``prompt_token_ids`` defaults to the choice's own ``prompt_token_ids`` (``return_token_ids``);
        needed to pick the actual token when ``prompt_logprobs`` > 0 put several tokens per position.
        """
        if self.prompt_logprobs is None:
            raise ValueError("choice has no prompt_logprobs (request `prompt_logprobs`)")
        ids = prompt_token_ids if prompt_token_ids is not None else self.prompt_token_ids
        out: list[float | None] = []
        for t, entry in enumerate(self.prompt_logprobs):
            if entry is None:
                out.append(None)
            elif ids is not None:
                out.append(entry[str(ids[t])]["logprob"])
            elif len(entry) == 1:
                out.append(next(iter(entry.values()))["logprob"])
            else:
                raise ValueError("several tokens per position: pass prompt_token_ids")
        return out


class CompletionUsage(_Model):
    """vLLM's ``UsageInfo``."""

    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0


class CompletionResponse(_Model):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage


# --- what the gateway reads ----------------------------------------------------------------------
# The same shapes as above with only the fields the gateway uses (unknown fields are ignored, as
# always): a scoring answer holds a dict per prompt token, and not building the `rank` and
# `decoded_token` of each (nor the generated tokens' strings and offsets) takes ~30% off the parse that
# sits between the last worker answer and the reply. tests/contract checks both parse every answer.


class PromptLogprobValue(TypedDict):
    """The part of vLLM's ``Logprob`` the gateway reads."""

    logprob: float


class CompletionLogprobsView(_Model):
    token_logprobs: list[float | None] = Field(default_factory=list)


class CompletionChoiceView(_Model):
    index: int
    text: str
    logprobs: CompletionLogprobsView | None = None
    finish_reason: str | None = None
    token_ids: list[int] | None = None
    prompt_logprobs: list[dict[str, PromptLogprobValue] | None] | None = None


class CompletionResponseView(_Model):
    """A ``/v1/completions`` answer as the gateway reads it (see :class:`CompletionResponse`)."""

    model: str
    choices: list[CompletionChoiceView]
