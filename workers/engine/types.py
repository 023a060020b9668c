"""The engine's plain data types: its results (:class:`Sample`, :class:`PromptScores`,
:class:`PromptResult`), its counters (:class:`EngineStats`) and its input error. The package's leaf:
imports torch (a tensor type) and nothing of ``workers``. See docs/DESIGN.md (the worker engine).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class EngineInputError(ValueError):
    """A request the engine cannot serve (too long, bad token id ...): HTTP 400."""


@dataclass
class Sample:
    """One generated continuation."""

    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]] | None
    finish_reason: str
    stop_reason: int | str | None
    text: str = ""
    # perf_counter() when each token was drawn (the worker's TTFT / inter-token latency metrics)
    token_times: list[float] = field(default_factory=list)


@dataclass
class PromptScores:
    """Per-position log-prob of each prompt token given the tokens before it (position 0: None)."""

    token_logprobs: list[float | None]
    ranks: list[int | None]
    top: list[list[tuple[int, float]]] | None = None


@dataclass
class Scored:
    """One prompt's scores, and what its first generated token is drawn from (``max_tokens`` = 1)."""

    scores: PromptScores
    # [V]: raw fp32 logits on the batch-invariant path, full-distribution log-probs on the others
    first_logits: torch.Tensor | None


@dataclass
class PromptResult:
    prompt_ids: list[int]
    scores: PromptScores | None
    samples: list[Sample] = field(default_factory=list)


@dataclass
class EngineStats:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    forward_passes: int = 0
