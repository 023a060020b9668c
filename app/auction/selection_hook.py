"""The `select` requests' campaign selector, opened on first use: `LazySelection`.

Job: a gateway opens its selector (`app.selection.open_selector`: the embedding model, the catalog of
every campaign and its vector, the index) the first time a request asks for `select`, not at start - a
gateway that never selects loads no embedding model - and keeps the catalog refreshed in the
background (SELECTION_REFRESH_S) until `aclose`. A selector that cannot be opened (the model package
missing, its archive unreadable) is a 503 `selection_unavailable` naming the cause, retried on the next
request. Then `participants`: what the selection makes of a request - a sensitive topic is a no-fill
before any campaign is read; otherwise the selected ids go through the campaign resolver as `campaigns`
do, and the report rides along for the answer. Imports app.selection, app.campaigns, app.contract.
See docs/DESIGN.md § Selection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

import redis.asyncio as aioredis

from app.campaigns.participants import CampaignResolver, Participants
from app.contract.request import AuctionRequest
from app.contract.selection import NoFill
from app.ledger.budget import BudgetLedger
from app.ledger.frequency import FrequencyLedger
from app.selection.budget_gate import CapGate
from app.selection.registry_vectors import CampaignCatalog
from app.selection.selector import SelectionLimits, SelectionOutcome, Selector, open_selector
from app.settings import Settings

logger = logging.getLogger(__name__)


class SelectionUnavailableError(Exception):
    """A `select` request the gateway's selector cannot serve (it could not be opened): 503."""


class LazySelection:
    """The selector, its catalog and the catalog's refresh task, opened by the first `select`."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, budgets: BudgetLedger) -> None:
        self.redis = redis
        self.settings = settings
        self.budgets = budgets
        self._parts: tuple[Selector, CampaignCatalog, asyncio.Task[None]] | None = None
        self._lock = asyncio.Lock()
        self.frequency = FrequencyLedger(redis, settings)

    async def selector(self) -> Selector:
        async with self._lock:  # one opening, however many requests wait for it
            if self._parts is None:
                try:
                    selector, catalog = await open_selector(self.redis, self.settings, self.budgets)
                except (ImportError, OSError, ValueError) as error:
                    raise SelectionUnavailableError(
                        f"selection_unavailable: the campaign selector could not be opened "
                        f"({type(error).__name__}: {error}); name the campaigns (`campaigns`) instead"
                    ) from error
                refresh = asyncio.create_task(catalog.run(self.settings.selection_refresh_s))
                self._parts = (selector, catalog, refresh)
                logger.info("campaign selector opened", extra={"campaigns": len(catalog.entries)})
            return self._parts[0]

    async def select(self, request: AuctionRequest) -> SelectionOutcome:
        assert request.select is not None
        limits = SelectionLimits(
            min_relevance=request.select.min_relevance,
            bcat=frozenset(request.bcat),
            badv=frozenset(request.badv),
            taken_owners=frozenset(advertiser.id for advertiser in request.advertisers),
        )
        # a capped campaign is replaced by the next relevant one (the resolver's reservation decides)
        gates = [CapGate(self.frequency, request.user_id)] if request.user_id and not request.test else []
        return await (await self.selector()).select(request.query, request.select.max, limits, gates=gates)

    async def participants(self, request: AuctionRequest, resolver: CampaignResolver) -> Participants:
        """Who bids in a `select` request: the selected campaigns through the resolver (their budgets,
        caps and pacing as for `campaigns`), the selection's report attached; a sensitive topic is a
        no-fill at once (no campaign read); nothing selected keeps the selection's reason."""
        outcome = await self.select(request)
        if outcome.no_fill_reason == "sensitive_topic":
            sensitive = outcome.report.sensitive
            detail = f"sensitive topic: {sensitive.category}" if sensitive else "sensitive topic"
            organic = request.model_copy(update={"advertisers": [], "proposal": "reference"})
            no_fill = NoFill(reason="sensitive_topic", detail=detail)
            return Participants(request=organic, no_fill=no_fill, selection=outcome.report)
        participants = await resolver.resolve(request, campaign_ids=list(outcome.selected_ids))
        if participants.no_fill is not None and not outcome.selected_ids and outcome.no_fill_reason:
            reason = outcome.no_fill_reason
            no_fill = NoFill(reason=reason, detail=f"the selection found no campaign to enter ({reason})")
            participants = dataclasses.replace(participants, no_fill=no_fill)
        return dataclasses.replace(participants, selection=outcome.report)

    async def aclose(self) -> None:
        if self._parts is not None:
            self._parts[2].cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._parts[2]
            self._parts = None
