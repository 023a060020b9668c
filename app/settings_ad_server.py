"""The ad server's settings: campaign budgets and pacing (issue 33), campaign selection (issue 34),
the transparency log (issue 35),
the audit archive in PostgreSQL (issue 36).

One pydantic-settings mixin that `app.settings.Settings` extends (it extends the worker's settings in
turn), so that every component still reads ONE `Settings` while each file stays small. Imports pydantic
and the worker's settings only. See docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from workers.settings import WorkerSettings


def split_list(value: Any) -> Any:
    """Accept JSON lists and comma-separated strings for list settings."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            import json

            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


_SENSITIVE = "IAB7-medical IAB7-mental IAB7-substance IAB7-sexual IAB11-politics IAB6-minors IAB14-tragedy"
_SENSITIVE += " IAB13-hardship IAB11-legal IAB25 IAB26"  # issue 34: app.selection.taxonomy.SENSITIVE_DEFAULT


class AdServerSettings(WorkerSettings):
    # issue 33: campaign budgets (app.ledger.budget)
    budget_reservation_ttl_s: int = Field(
        120,
        ge=1,
        le=86400,
        description="How long a campaign budget reservation holds its amount when nobody posts or voids "
        "it (a gateway killed mid-auction). In BILLING_MODE=render the effective TTL is RENDER_WINDOW_S + "
        "BUDGET_RESERVATION_TTL_S. A billing event applied after it is still counted, as a late post.",
    )
    budget_reserve_attempts: int = Field(
        3,
        ge=1,
        le=16,
        description="Fits of one auction against budgets read anew when a reservation is refused (others "
        "spent meanwhile); past them a campaign still refused is left out of the draw.",
    )
    budget_fit_rounds: int = Field(
        8,
        ge=0,
        le=64,
        description="Rounds of lowering several budget-binding campaigns before dropping some.",
    )
    budget_hold_factor: float = Field(
        4.0,
        ge=0,
        le=1000,
        description="Before the model work, each campaign of a billed auction holds (pre-authorises) this "
        "many times its mean charge so far (its pacing target per auction while it has none), at most what "
        "remains: the hold's durable write runs behind generation, and a payment within it needs no Redis "
        "call on the reply path (a larger one grows the hold then: one round trip). 0: no hold. "
        "BILLING_MODE=render takes no hold (a pending charge holds its amount until rendered).",
    )
    budget_hold_share: float = Field(
        0.1,
        gt=0,
        le=1,
        description="A hold is at most this share of what remains of the campaign's budget, so that the "
        "holds of concurrent auctions leave room for each other's payments.",
    )
    campaign_cache_s: float = Field(
        1.0,
        ge=0,
        le=1,
        description="How long a gateway decides which campaigns enter an auction from its last read of them "
        "(no Redis round trip before the model work); each is read again beside the model work before any "
        "hold or reservation, and one found paused, archived or deleted then is withdrawn, never charged. "
        'At most 1 (the registry\'s "visible to every gateway within 1 s"); 0: read before every auction.',
    )
    pacing: bool = Field(
        True, description="Pace campaigns with a daily budget (α = 1/(1+μ) on their value scale); off: α = 1."
    )
    pacing_epsilon: float = Field(0.2, gt=0, le=10, description="Pacing step size ε (μ moves ε per auction).")
    pacing_mu_max: float = Field(9.0, ge=0, le=1000, description="Largest μ: α ≥ 1/(1+μ̄).")
    pacing_traffic: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [1.0] * 24,
        description="The day's expected traffic per hour of the campaign's day (24 non-negative weights, "
        "comma-separated; default flat): a daily budget is spent along it.",
    )

    # issue 34: campaign selection (app.selection; thresholds tuned on bench/selection_tuning.json)
    selection_min_relevance: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Cosine of query and campaign text a selected campaign needs (a targeted "
        "keyword admits it below; the request's select.min_relevance overrides).",
    )
    selection_sensitive: bool = Field(True, description="No ads on sensitive topics; false: no check.")
    selection_sensitive_categories: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: _SENSITIVE.split(),
        description="Category ids of app/selection/taxonomy.py whose queries get no ads (comma-separated).",
    )
    selection_sensitive_threshold: float = Field(
        0.30,
        ge=0,
        le=1,
        description="Similarity to a sensitive category (no ordinary one closer) that turns ads off.",
    )
    selection_ann_min: int = Field(
        20_000,
        ge=1,
        description="Campaigns from which the index is faiss HNSW, not exact search (bench/selection.py).",
    )
    selection_refresh_s: float = Field(
        0.5, gt=0, le=60, description="Period of the catalog's refresh (change log)."
    )

    # issue 35: the transparency log (app.transparency.sequencer; DESIGN.md § Verifiable auctions)
    transparency_sequencer: bool = Field(True, description="Sign tree heads here (several gateways: safe).")
    transparency_head_interval_s: float = Field(1.0, gt=0, le=3600, description="Least s between heads.")
    transparency_audit_leaves: int = Field(2048, ge=1, description="Leaves re-read per head.")
    transparency_heads_kept: int = Field(4096, ge=1, description="Latest signed tree heads kept in Redis.")
    transparency_proof_wait_s: float = Field(2.0, ge=0, le=60, description="Proof waits, then 409.")

    # issue 36: audit records archived to PostgreSQL (app.archive; DESIGN.md § Archive)
    archive_dsn: str = Field(
        "",
        description="PostgreSQL DSN of the audit archive; empty: records stay in Redis only (AUDIT_TTL_S).",
    )
    archive_embedded: bool = Field(True, description="With ARCHIVE_DSN: the gateway runs the archiver.")
    archive_batch: int = Field(500, ge=1, le=10_000, description="Records per archiver transaction.")
    archive_interval_s: float = Field(1.0, gt=0, le=3600, description="Archiver's pause when idle.")
    archive_min_age_s: float = Field(0.0, ge=0, le=86_400, description="Least age of an archived record.")
    archive_retention_days: int = Field(0, ge=0, le=36_500, description="Days archived; 0: forever.")
    archive_lease_s: float = Field(30.0, gt=0, le=3600, description="One archiver at a time: its lease.")
    archive_pool_max: int = Field(4, ge=1, le=100, description="PostgreSQL connections per process.")

    @field_validator("selection_sensitive_categories", mode="before")
    @classmethod
    def _categories(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("pacing_traffic", mode="before")
    @classmethod
    def _hourly(cls, value: Any) -> Any:
        return split_list(value) if isinstance(value, str) else value

    @field_validator("pacing_traffic")
    @classmethod
    def _day_curve(cls, weights: list[float]) -> list[float]:
        if len(weights) != 24 or any(not (w >= 0) or w == float("inf") for w in weights) or sum(weights) <= 0:
            raise ValueError("PACING_TRAFFIC: 24 finite weights >= 0, not all 0")
        return weights
