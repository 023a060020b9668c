"""One auction end to end: sample and score candidates, resolve the mechanism, record and bill.

I/O lives here and in the clients it calls; the mathematics is `app.mechanism` (pure), the candidate
set is `app.auction.sampler`'s. Imports: the sampler, the mechanism, the request/response models and
the ledger's producer; never the HTTP app or its routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from app import mechanism
from app.auction.engine_client import EngineClient, WorkerCallStats, derive_seed
from app.auction.sampler import SEED_ALLOCATION, CandidateSampler, CandidateSet, StageClock
from app.auction.worker_dispatch import auction_deadline
from app.contract.request import AuctionRequest
from app.contract.result import (
    AdvertiserResult,
    AuctionRecord,
    AuctionResponse,
    AuctionTimings,
    CandidateRecord,
)
from app.gateway.metrics import GatewayMetrics
from app.ledger.events import make_billing_event
from app.ledger.idempotency import IdempotencyClaim, IdempotencyStore
from app.ledger.producer import BillingProducer, BillMode
from app.settings import Settings

logger = logging.getLogger(__name__)

AUCTION_KEY_PREFIX = "mosaic:auction:"


class AuctionDeadlineError(Exception):
    """The auction deadline (AUCTION_DEADLINE_S) passed before the mechanism ran: 504."""


def auction_key(auction_id: str) -> str:
    return f"{AUCTION_KEY_PREFIX}{auction_id}"


@dataclass
class RunControl:
    """One auction's link to its caller (the route).

    `billing_started` turns true, with no await in between, just before the final write begins: a
    caller may cancel the auction (an abandoned request) only while it is false; after that the
    write runs shielded and the auction stands. With a key, `claim_ready` (sent by the caller as
    model work begins) is awaited before the write; `body` is then the exact JSON answered,
    the one stored under the Idempotency-Key in the same MULTI as the record and the billing event.
    `cleared` (with a key): generation waits for it, so the key's replay check, sent with the
    auction's tokenization, ends before any model work.
    """

    claim_ready: asyncio.Future[IdempotencyClaim] | None = None  # the key's claim, under way
    cleared: asyncio.Future[None] | None = None  # set when generation may begin (the replay check)
    claim: IdempotencyClaim | None = None
    idempotency_ms: float = 0.0
    billing_started: bool = False
    body: str | None = None


def deadline_s(request: AuctionRequest, settings: Settings) -> float:
    """This auction's deadline: its `tmax_ms`, at most AUCTION_DEADLINE_S."""
    if request.tmax_ms is None:
        return settings.auction_deadline_s
    return min(settings.auction_deadline_s, request.tmax_ms / 1000)


class AuctionService:
    """One auction end to end: sample and score candidates, resolve, record and bill."""

    def __init__(
        self,
        settings: Settings,
        engine: EngineClient,
        billing: BillingProducer,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.sampler = CandidateSampler(settings, engine)
        self.billing = billing
        self.metrics = metrics
        self.idempotency = IdempotencyStore(billing.redis, settings)

    def bill_mode(self, request: AuctionRequest) -> BillMode:
        if request.test:
            return "none"
        return "pending" if self.settings.billing_mode == "render" else "bill"

    async def run(self, request: AuctionRequest, control: RunControl | None = None) -> AuctionResponse:
        control = control or RunControl()
        clock = StageClock()
        if control.idempotency_ms:
            clock.started -= control.idempotency_ms / 1000  # the claim is part of the gateway's work
            clock.stages_ms["idempotency"] = control.idempotency_ms
        auction_id = uuid.uuid4().hex
        seed = request.seed if request.seed is not None else secrets.randbits(53)  # <= MAX_SEED
        worker_stats = WorkerCallStats()
        limit_s = deadline_s(request, self.settings)
        try:
            with auction_deadline(limit_s):  # worker requests never wait past it (tmax_ms included)
                async with asyncio.timeout(limit_s):
                    outcome, candidate_set, rewards, log_ref, log_proposal = await self._resolve(
                        request, seed, clock, worker_stats, control.cleared
                    )
        except TimeoutError as error:
            self.metrics.auctions.labels("deadline", request.proposal).inc()
            what = (
                f"tmax_ms={request.tmax_ms}"
                if limit_s < self.settings.auction_deadline_s
                else f"AUCTION_DEADLINE_S={self.settings.auction_deadline_s}s"
            )
            raise AuctionDeadlineError(f"auction did not finish within {what} (nothing billed)") from error

        advertiser_ids = [advertiser.id for advertiser in request.advertisers]
        payments = {aid: float(outcome.payments[i]) for i, aid in enumerate(advertiser_ids)}
        event = make_billing_event(auction_id, payments, self.settings.currency)
        candidates_table = [
            CandidateRecord(
                text=candidate.text,
                log_ref=float(log_ref[j]),
                log_proposal=float(log_proposal[j]),
                rewards={aid: float(rewards[i, j]) for i, aid in enumerate(advertiser_ids)},
                probability=float(outcome.probabilities[j]),
                proposal=candidate_set.sources[j],
                num_tokens=len(candidate.token_ids),
                finish_reason=candidate.finish_reason,
            )
            for j, candidate in enumerate(candidate_set.candidates)
        ]
        response = AuctionResponse(
            auction_id=auction_id,
            reply=candidate_set.candidates[outcome.chosen_index].text,
            chosen_index=outcome.chosen_index,
            tau=outcome.tau,
            proposal=request.proposal,
            seed=seed,
            currency=self.settings.currency,
            advertisers=[
                AdvertiserResult(
                    id=aid,
                    payment=float(outcome.payments[i]),
                    expected_reward=float(outcome.expected_rewards[i]),
                    expected_utility=float(outcome.expected_utilities[i]),
                )
                for i, aid in enumerate(advertiser_ids)
            ],
            revenue=float(outcome.revenue),
            effective_sample_size=float(outcome.effective_sample_size),
            # Up to here; the stored record keeps these (billing 0: it is the write of the record).
            timings_ms=clock.timings(worker_stats),
            billing={"none": "test", "pending": "pending", "bill": "billed"}[self.bill_mode(request)],
            test=True if request.test else None,
        )
        record = AuctionRecord(
            **response.model_dump(exclude={"candidates"}),
            candidates=candidates_table,
            request=request.model_dump(mode="json"),
            created_at_ms=event.created_at_ms,
            payments_micro=event.payments_micro,
        )
        if request.include_candidates:
            response.candidates = candidates_table
        # The audit record, the billing event (or pending charge) and the Idempotency-Key's outcome
        # are written in one MULTI: all or none, so a served auction always has its record, nothing is
        # billed for an auction we fail, and a retried key is billed once.
        idempotent = None
        if control.claim_ready is not None:  # shielded: a cancel must not lose a claim that was taken
            control.claim = await asyncio.shield(control.claim_ready)
        if control.claim is not None:
            control.body = response.model_dump_json(exclude_none=True)
            idempotent = self.idempotency.write_for(control.claim, 200, control.body, auction_id)
        audit = (auction_key(auction_id), record.model_dump_json(), self.settings.audit_ttl_s)
        control.billing_started = True  # no await since the last check: from here the auction stands
        write = asyncio.ensure_future(self.billing.record(event, audit, self.bill_mode(request), idempotent))
        await clock.timed("billing", asyncio.shield(write))
        timings = clock.timings(worker_stats)
        if control.claim is None:
            response.timings_ms = timings
        self._observe(request, response, len(candidate_set.candidates), timings)
        logger.info(
            "auction served",
            extra={
                "auction_id": auction_id,
                "advertisers": len(advertiser_ids),
                "candidates": len(candidate_set.candidates),
                "proposal": request.proposal,
                "revenue": response.revenue,
                "ess": response.effective_sample_size,
                "total_ms": round(timings.total, 2),
                "worker_ms": round(timings.workers, 2),
            },
        )
        return response

    async def _resolve(
        self,
        request: AuctionRequest,
        seed: int,
        clock: StageClock,
        worker_stats: WorkerCallStats,
        cleared: asyncio.Future[None] | None = None,
    ) -> tuple[mechanism.AuctionOutcome, CandidateSet, np.ndarray, np.ndarray, np.ndarray]:
        scored = await self.sampler.collect(request, seed, clock, worker_stats, cleared)
        begin = time.perf_counter()
        value_scales = np.array([a.value_scale for a in request.advertisers], dtype=np.float64)
        rewards = mechanism.rewards_from_logprobs(scored.log_advertisers, scored.log_ref, value_scales)
        tau = request.tau if request.tau is not None else mechanism.default_tau(len(request.advertisers))
        rng = np.random.default_rng(derive_seed(seed, SEED_ALLOCATION))
        outcome = mechanism.run_auction(rewards, scored.log_ref, scored.log_proposal, tau, rng)
        clock.stages_ms["mechanism"] = (time.perf_counter() - begin) * 1000
        return outcome, scored.candidate_set, rewards, scored.log_ref, scored.log_proposal

    def _observe(
        self, request: AuctionRequest, response: AuctionResponse, num_candidates: int, timings: AuctionTimings
    ) -> None:
        metrics = self.metrics
        if request.test:
            metrics.auctions.labels("test", request.proposal).inc()  # not in the revenue metrics
            return
        metrics.auctions.labels("served", request.proposal).inc()
        for stage in ("tokenize", "generate", "score", "mechanism", "billing", "total"):
            metrics.stage_seconds.labels(stage).observe(getattr(timings, stage) / 1000)
        metrics.candidates.observe(num_candidates)
        metrics.effective_sample_size.observe(response.effective_sample_size)
        if response.billing == "billed":  # a pending charge counts when rendered
            metrics.revenue.labels(response.currency).inc(response.revenue)


def load_record(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    record: dict[str, Any] = json.loads(raw)
    return record
