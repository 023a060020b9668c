"""The engine's configuration: :class:`EngineConfig`, built by the caller (``workers.server``) from
:class:`workers.settings.WorkerSettings` and passed to :class:`workers.engine.core.Engine`; the engine
never reads the settings itself. Imports :mod:`workers.settings` only (the type and its defaults).
See docs/DESIGN.md (the worker engine) for the invariants and figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workers.settings import WorkerSettings

DecodeMode = Literal["fast", "eager", "legacy"]
DECODE_MODES: tuple[DecodeMode, ...] = ("fast", "eager", "legacy")


_DEFAULTS = WorkerSettings.model_construct()  # the fields' defaults, no environment read


@dataclass(frozen=True)
class EngineConfig:
    """What an engine serves with; the defaults are WorkerSettings' (see :meth:`from_settings`)."""

    max_model_len: int = _DEFAULTS.worker_max_model_len
    score_token_budget: int = _DEFAULTS.worker_score_token_budget
    max_logprobs: int = _DEFAULTS.worker_max_logprobs
    decode: DecodeMode = _DEFAULTS.worker_decode
    force_ignore_eos: bool = _DEFAULTS.worker_force_ignore_eos
    batching: bool = _DEFAULTS.worker_batching
    batch_token_budget: int = _DEFAULTS.worker_batch_token_budget
    batch_max_rows: int = _DEFAULTS.worker_batch_max_rows
    priority_aging_steps: int = _DEFAULTS.worker_priority_aging_steps
    priority_fill_tokens: int = _DEFAULTS.worker_priority_fill_tokens
    priority_pause_steps: int = _DEFAULTS.worker_priority_pause_steps
    priority_pause_gap: int = _DEFAULTS.worker_priority_pause_gap
    prefix_sharing: bool = True  # score prompts sharing a long prefix through one prefix pass
    min_shared_prefix: int = 16  # shortest prefix worth sharing (tokens)

    def __post_init__(self) -> None:
        if self.decode not in DECODE_MODES:
            raise ValueError(f"unknown decode mode {self.decode!r} (one of {', '.join(DECODE_MODES)})")

    @classmethod
    def from_settings(cls, settings: WorkerSettings, max_logprobs: int | None = None) -> EngineConfig:
        """The settings' engine fields; ``max_logprobs`` None: WORKER_MAX_LOGPROBS."""
        return cls(
            max_model_len=settings.worker_max_model_len,
            score_token_budget=settings.worker_score_token_budget,
            max_logprobs=settings.worker_max_logprobs if max_logprobs is None else max_logprobs,
            decode=settings.worker_decode,
            force_ignore_eos=settings.worker_force_ignore_eos,
            batching=settings.worker_batching,
            batch_token_budget=settings.worker_batch_token_budget,
            batch_max_rows=settings.worker_batch_max_rows,
            priority_aging_steps=settings.worker_priority_aging_steps,
            priority_fill_tokens=settings.worker_priority_fill_tokens,
            priority_pause_steps=settings.worker_priority_pause_steps,
            priority_pause_gap=settings.worker_priority_pause_gap,
        )
