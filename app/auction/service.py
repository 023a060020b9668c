"""One auction end to end: sample → resolve → build result → persist → observe (`AuctionService.run`).

I/O lives here and in the clients it calls; the mathematics is `app.mechanism` (pure), the candidate
set is `app.auction.sampler`'s, the answer's models `app.auction.result`'s. Imports the auction's own
modules, the mechanism, `app.contract`, `app.attestation` (the record is signed before its write) and
the ledger's producer and idempotency store; never the gateway (what it reports goes to an
`AuctionObserver`). Invariants: docs/DESIGN.md.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np

from app import mechanism
from app.archive.reader import RecordReader
from app.archive.store import ArchiveStore
from app.attestation.keys import SigningKeyRing, load_signing_keys
from app.attestation.statement import attest_entry
from app.auction.answers import RecordAnswers, outcome_write
from app.auction.campaign_spend import CampaignSpend
from app.auction.cost import enforce_cost_limit
from app.auction.engine_client import EngineClient, WorkerCallStats, derive_seed
from app.auction.engine_record import engine_record
from app.auction.no_fill import ads_off, no_fill_result, organic
from app.auction.observers import AuctionObserver, NoopAuctionObserver, observe_served
from app.auction.result import ResolvedAuction, auction_record, auction_response, candidate_records
from app.auction.run_control import RunControl, auction_key, clock_after, clock_ms, deadline_s
from app.auction.sampler import SEED_ALLOCATION, CandidateDraw, CandidateSampler, ScoredCandidates, StageClock
from app.auction.selection_hook import LazySelection
from app.auction.worker_dispatch import auction_deadline
from app.campaigns.participants import CampaignResolver, Participants
from app.campaigns.spend import BudgetedOutcome, BudgetSpender
from app.campaigns.store import CampaignStore
from app.contract.attestation import RecordAttestation
from app.contract.request import AuctionRequest
from app.contract.result import AuctionRecord, AuctionResponse, AuctionTimings, BillingState
from app.ledger.budget import BudgetLedger
from app.ledger.events import BillingEvent, make_billing_event
from app.ledger.idempotency import IdempotencyStore
from app.ledger.producer import BillingProducer, BillMode
from app.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

# What a response says of its billing, by the producer's bill mode.
BILLING_STATES: dict[BillMode, BillingState] = {"none": "test", "pending": "pending", "bill": "billed"}


class AuctionDeadlineError(Exception):
    """The auction deadline (AUCTION_DEADLINE_S) passed before the mechanism ran: 504."""


# What `_build_result` makes of a resolved auction: the answer, the audit record, the billing event.
Built = tuple[AuctionResponse, AuctionRecord, BillingEvent]


class AuctionService:
    """One auction end to end: sample → resolve → build result → persist → observe."""

    def __init__(
        self,
        settings: Settings,
        engine: EngineClient,
        billing: BillingProducer,
        observer: AuctionObserver | None = None,
    ) -> None:
        self.settings = settings
        self.sampler = CandidateSampler(settings, engine)
        self.billing = billing
        self.observer = observer or NoopAuctionObserver()
        # Keyed answers are stored by reference to their record with ARCHIVE_DSN (issue 36): replays
        # rebuild them from the record read through Redis, then the archive (`use_archive`).
        self.records = RecordReader(billing.redis, key_prefix=auction_key("", settings))  # a cluster's tag
        self.idempotency = IdempotencyStore(billing.redis, settings, RecordAnswers(self.records))
        self.campaign_store = CampaignStore(billing.redis, settings)
        self.budgets = BudgetLedger(billing.redis, settings)
        self.campaigns = CampaignResolver(self.campaign_store, self.budgets, settings)
        self.spender = BudgetSpender(self.budgets, settings)
        self.spend = CampaignSpend(self.spender, self.campaigns, settings, self.observer)
        self._started: set[str] = set()  # auctions prepared whose run began (it settles their cap slots)
        self.selection = LazySelection(billing.redis, settings, self.budgets)  # opened by the first `select`
        # The signing keys (created once in DATA_DIR/keys when none are configured): every stored record
        # is signed with the active one unless ATTESTATION_ENABLED=false; all are served as a JWK set.
        self.signing_keys: SigningKeyRing = load_signing_keys(settings)

    async def prepare(self, request: AuctionRequest) -> Participants:
        """Who bids: the inline advertisers and the requested campaigns that may enter (one Redis round
        trip for the campaigns and their budgets, one for their frequency caps when capped; none
        without campaigns). Regs and consent come first: with ads off no campaign is read. Nobody
        bidding makes a no-fill (one organic draw: its admission cost too). The gateway calls `release`
        once the call ends (cap slots of an auction that never ran go back)."""
        participants = ads_off(request)
        if participants is None and request.select is not None:  # the service chooses the campaigns
            participants = await self.selection.participants(request, self.campaigns)
        elif participants is None:
            participants = await self.campaigns.resolve(request)
        for _ in participants.entries:
            self.observer.campaign_counted("entered")
        for exclusion in participants.excluded:
            self.observer.campaign_counted(exclusion.reason)
        return organic(participants)

    async def release(self, participants: Participants) -> None:
        """After the call: the cap slots of an auction that never ran (refused by admission, answered by
        a replay, cancelled before it began) go back now; a run settles its own (post or void)."""
        if participants.auction_id in self._started:
            self._started.discard(participants.auction_id)
        elif participants.frequency_holds:
            await asyncio.shield(self.spender.void_slots(participants, participants.auction_id, clock_ms()))

    def admission_cost(self, request: AuctionRequest) -> int:
        """The model tokens admission holds for the auction (`app.auction.cost`); `LimitExceededError`
        (422 naming the fields) when it is more than one auction may ever cost."""
        return enforce_cost_limit(request, self.settings, len(self.sampler.engine.worker_urls))

    def bill_mode(self, request: AuctionRequest) -> BillMode:
        if request.test:
            return "none"
        return "pending" if self.settings.billing_mode == "render" else "bill"

    async def run(
        self,
        request: AuctionRequest,
        control: RunControl | None = None,
        participants: Participants | None = None,
    ) -> AuctionResponse:
        """`request` as the caller sent it; `participants` from `prepare` (who bids, and at what pacing)."""
        control = control or RunControl()
        participants = participants or Participants(request=request)
        self._started.add(participants.auction_id)
        bidding = participants.request
        clock = clock_after(control)
        auction_id = participants.auction_id or uuid.uuid4().hex
        seed = request.seed if request.seed is not None else secrets.randbits(53)  # <= MAX_SEED
        worker_stats = WorkerCallStats()
        if participants.no_fill is not None:
            return await self._run_no_fill(participants, auction_id, seed, control, clock, worker_stats)
        built: list[tuple[BudgetedOutcome | None, Built]] = []
        mode = self.bill_mode(request)
        holding = self.spend.hold(participants, mode, auction_id)  # beside the model work
        try:
            resolved = await self._sample_and_resolve(bidding, seed, clock, worker_stats, control.cleared)

            def build(budgeted: BudgetedOutcome | None) -> Built:
                # Timings up to here; the stored record keeps these (billing 0: the write of the record).
                fitted, entered = resolved, participants
                if budgeted is not None:
                    fitted = ResolvedAuction(resolved.scored, budgeted.rewards, budgeted.outcome)
                    entered = budgeted.participants or participants  # rechecked (app.campaigns.recent)
                so_far = clock.timings(worker_stats)
                return self._build_result(entered, fitted, auction_id, seed, so_far, budgeted)

            built_one = lambda b: built.append((b, build(b)))  # noqa: E731 (built while reserving)
            budgeted = await self.spend.fit(
                participants, resolved, seed, auction_id, clock, mode, built_one, holding
            )
            # built while its reservations were in flight, if they were the ones accepted
            result = next((r for b, r in built if b is budgeted), None)
            response, record, event = result if result is not None else build(budgeted)
            if budgeted is not None:
                resolved = ResolvedAuction(resolved.scored, budgeted.rewards, budgeted.outcome)
            await self._persist(bidding, response, record, event, control, clock)
        except BaseException:
            # Before the billing write began nothing can be billed: release the reservations and cap
            # slots. After it began the write may stand (a timeout is ambiguous): they are left to the
            # ledger consumer, which posts them if the event exists, or to their own expiry if it does
            # not. (Cancelled during the fit, it may hold reservations it has not returned: void them
            # all; a void of none is a no-op.)
            if not control.billing_started:
                await self.spend.void(participants, mode, auction_id, holding)
            raise
        timings = clock.timings(worker_stats)
        if control.claim is None:
            response.timings_ms = timings
        observe_served(
            self.observer, bidding, response, len(resolved.scored.candidate_set.candidates), timings
        )
        return response

    def use_archive(self, archive: ArchiveStore | None) -> None:
        """Replays read records the archive holds too (ARCHIVE_DSN: the gateway opens the pool later)."""
        self.records.archive = archive

    async def post_rendered(self, record: dict[str, Any]) -> None:
        """A pending charge was just rendered (billed): post its campaigns' reservations."""
        await self.spend.post_rendered(record)

    async def _sample_and_resolve(
        self,
        request: AuctionRequest,
        seed: int,
        clock: StageClock,
        worker_stats: WorkerCallStats,
        cleared: asyncio.Future[None] | None,
    ) -> ResolvedAuction:
        """The candidates and the mechanism's outcome, within the auction's deadline (504 past it)."""
        draw = CandidateDraw.from_request(request, self.settings)
        scored = await self._within_deadline(
            request, self.sampler.collect(draw, seed, clock, worker_stats, cleared)
        )
        return self._resolve(request, scored, seed, clock)

    async def _within_deadline(self, request: AuctionRequest, work: Coroutine[Any, Any, T]) -> T:
        """`work` (the model work) within the auction's deadline: AuctionDeadlineError (504) past it."""
        limit_s = deadline_s(request, self.settings)
        try:
            with auction_deadline(limit_s):  # worker requests never wait past it (tmax_ms included)
                async with asyncio.timeout(limit_s):
                    return await work
        except TimeoutError as error:
            self.observer.auction_counted("deadline", request.proposal)
            what = (
                f"tmax_ms={request.tmax_ms}"
                if limit_s < self.settings.auction_deadline_s
                else f"AUCTION_DEADLINE_S={self.settings.auction_deadline_s}s"
            )
            raise AuctionDeadlineError(f"auction did not finish within {what} (nothing billed)") from error

    async def _run_no_fill(
        self,
        participants: Participants,
        auction_id: str,
        seed: int,
        control: RunControl,
        clock: StageClock,
        worker_stats: WorkerCallStats,
    ) -> AuctionResponse:
        """Nobody bids: ONE reply sampled from π_ref with the seed, nothing scored, no mechanism, no
        billing event; the record is stored (`billing: none`) with the Idempotency-Key's outcome."""
        request = participants.request
        draw = CandidateDraw.from_request(request, self.settings)
        work = self.sampler.organic(draw, seed, clock, worker_stats, control.cleared)
        reply = await self._within_deadline(request, work)
        response, record = no_fill_result(
            participants,
            reply,
            auction_id=auction_id,
            seed=seed,
            currency=self.settings.currency,
            timings=clock.timings(worker_stats),
            created_at_ms=clock_ms(),
        )
        nothing = make_billing_event(auction_id, {}, self.settings.currency)
        await self._persist(request, response, record, nothing, control, clock, mode="none")
        assert response.no_fill is not None
        self.observer.no_fill_counted(response.no_fill.reason)
        timings = clock.timings(worker_stats)
        if control.claim is None:
            response.timings_ms = timings
        logger.info(
            "no-fill served",
            extra={
                "auction_id": auction_id,
                "reason": response.no_fill.reason,
                "total_ms": round(timings.total, 2),
            },
        )
        return response

    def _resolve(
        self, request: AuctionRequest, scored: ScoredCandidates, seed: int, clock: StageClock
    ) -> ResolvedAuction:
        """Rewards from the scores and value scales, then the mechanism (pure, `app.mechanism`)."""
        begin = time.perf_counter()
        value_scales = np.array([a.value_scale for a in request.advertisers], dtype=np.float64)
        rewards = mechanism.rewards_from_logprobs(scored.log_advertisers, scored.log_ref, value_scales)
        tau = request.tau if request.tau is not None else mechanism.default_tau(len(request.advertisers))
        rng = np.random.default_rng(derive_seed(seed, SEED_ALLOCATION))
        outcome = mechanism.run_auction(rewards, scored.log_ref, scored.log_proposal, tau, rng)
        clock.stages_ms["mechanism"] = (time.perf_counter() - begin) * 1000
        return ResolvedAuction(scored=scored, rewards=rewards, outcome=outcome)

    def _build_result(
        self,
        participants: Participants,
        resolved: ResolvedAuction,
        auction_id: str,
        seed: int,
        timings: AuctionTimings,
        budgeted: BudgetedOutcome | None = None,
    ) -> tuple[AuctionResponse, AuctionRecord, BillingEvent]:
        """The answer (`app.auction.result`: with the candidate table if asked), the audit record and
        the billing event of the resolved auction."""
        request = participants.request
        advertiser_ids = [advertiser.id for advertiser in request.advertisers]
        event = make_billing_event(
            auction_id,
            resolved.payments(advertiser_ids),
            self.settings.currency,
            campaigns={entry.campaign.owner: entry.campaign.id for entry in participants.entries},
            fcap={h.campaign_id: (h.user, h.per_seconds) for h in participants.frequency_holds},
            pacing=participants.pacing_args() if self.bill_mode(request) == "bill" else None,
        )
        candidates = candidate_records(resolved, advertiser_ids)
        response = auction_response(
            resolved,
            participants,
            auction_id=auction_id,
            seed=seed,
            currency=self.settings.currency,
            timings=timings,
            billing=BILLING_STATES[self.bill_mode(request)],
            payments_micro=event.payments_micro,
            budgeted=budgeted,
        )
        record = auction_record(response, candidates, participants, event, budgeted)
        record.engine = engine_record(resolved.scored)  # which engines drew and scored (issue 35)
        if request.include_candidates:
            response.candidates = candidates
        return response, record, event

    async def _persist(
        self,
        request: AuctionRequest,
        response: AuctionResponse,
        record: AuctionRecord,
        event: BillingEvent,
        control: RunControl,
        clock: StageClock,
        mode: BillMode | None = None,
    ) -> None:
        """The audit record (signed: `app.attestation`), the billing event (or pending charge) and the
        Idempotency-Key's outcome, written in one MULTI: all or none, so a served auction always has its
        record, nothing is billed for an auction we fail, and a retried key is billed once."""
        idempotent = None
        if control.claim_ready is not None:  # shielded: a cancel must not lose a claim that was taken
            control.claim = await asyncio.shield(control.claim_ready)
        if control.claim is not None:
            control.body = response.model_dump_json(exclude_none=True)
        log_entry = None  # the record's leaf in the transparency log: its signed statement's bytes
        if self.settings.attestation_enabled:  # before the write: a record that cannot be signed fails
            signed, log_entry = attest_entry(record.model_dump(mode="json"), self.signing_keys.active)
            record.attestation = RecordAttestation.model_validate(signed)
        audit = (
            auction_key(response.auction_id, self.settings),
            record.model_dump_json(),
            self.settings.audit_ttl_s,
        )
        if control.claim is not None and control.body is not None:  # by reference to `audit`, or a copy
            idempotent = outcome_write(self.idempotency, control.claim, response, control.body, audit[1])
        control.billing_started = True  # no await since the last check: from here the auction stands
        mode = mode or self.bill_mode(request)
        write = asyncio.ensure_future(self.billing.record(event, audit, mode, idempotent, log_entry))
        await clock.timed("billing", asyncio.shield(write))
