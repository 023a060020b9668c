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
from typing import Any

import numpy as np

from app import mechanism
from app.auction.engine_client import EngineClient, WorkerCallStats, derive_seed
from app.auction.sampler import SEED_ALLOCATION, CandidateSampler, CandidateSet, StageClock
from app.auction.worker_dispatch import auction_deadline
from app.gateway.metrics import GatewayMetrics
from app.gateway.schemas import (
    AdvertiserResult,
    AuctionRecord,
    AuctionRequest,
    AuctionResponse,
    CandidateRecord,
)
from app.ledger.events import make_billing_event
from app.ledger.producer import BillingProducer
from app.settings import Settings

logger = logging.getLogger(__name__)

AUCTION_KEY_PREFIX = "mosaic:auction:"


class AuctionDeadlineError(Exception):
    """The auction deadline (AUCTION_DEADLINE_S) passed before the mechanism ran: 504."""


def auction_key(auction_id: str) -> str:
    return f"{AUCTION_KEY_PREFIX}{auction_id}"


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

    async def run(self, request: AuctionRequest) -> AuctionResponse:
        clock = StageClock()
        auction_id = uuid.uuid4().hex
        seed = request.seed if request.seed is not None else secrets.randbits(53)  # <= MAX_SEED
        worker_stats = WorkerCallStats()
        try:
            deadline_s = self.settings.auction_deadline_s
            with auction_deadline(deadline_s):  # worker requests never wait past it
                async with asyncio.timeout(deadline_s):
                    outcome, candidate_set, rewards, log_ref, log_proposal = await self._resolve(
                        request, seed, clock, worker_stats
                    )
        except TimeoutError as error:
            self.metrics.auctions.labels("deadline", request.proposal).inc()
            raise AuctionDeadlineError(
                f"auction did not finish within AUCTION_DEADLINE_S={self.settings.auction_deadline_s}s"
            ) from error

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
        )
        record = AuctionRecord(
            **response.model_dump(exclude={"candidates"}),
            candidates=candidates_table,
            request=request.model_dump(mode="json"),
            created_at_ms=event.created_at_ms,
            payments_micro=event.payments_micro,
        )
        # The audit record and the billing event are written in one MULTI: both or neither, so a
        # served auction always has its record and nothing is billed for an auction we fail.
        await clock.timed(
            "billing",
            self.billing.append(
                event,
                audit=(auction_key(auction_id), record.model_dump_json(), self.settings.audit_ttl_s),
            ),
        )
        timings = clock.timings(worker_stats)
        response.timings_ms = timings
        if request.include_candidates:
            response.candidates = candidates_table
        self._observe(request, response, len(candidate_set.candidates), worker_stats)
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
        self, request: AuctionRequest, seed: int, clock: StageClock, worker_stats: WorkerCallStats
    ) -> tuple[mechanism.AuctionOutcome, CandidateSet, np.ndarray, np.ndarray, np.ndarray]:
        scored = await self.sampler.collect(request, seed, clock, worker_stats)
        begin = time.perf_counter()
        value_scales = np.array([a.value_scale for a in request.advertisers], dtype=np.float64)
        rewards = mechanism.rewards_from_logprobs(scored.log_advertisers, scored.log_ref, value_scales)
        tau = request.tau if request.tau is not None else mechanism.default_tau(len(request.advertisers))
        rng = np.random.default_rng(derive_seed(seed, SEED_ALLOCATION))
        outcome = mechanism.run_auction(rewards, scored.log_ref, scored.log_proposal, tau, rng)
        clock.stages_ms["mechanism"] = (time.perf_counter() - begin) * 1000
        return outcome, scored.candidate_set, rewards, scored.log_ref, scored.log_proposal

    def _observe(
        self, request: AuctionRequest, response: AuctionResponse, num_candidates: int, stats: WorkerCallStats
    ) -> None:
        metrics = self.metrics
        metrics.auctions.labels("served", request.proposal).inc()
        for stage in ("tokenize", "generate", "score", "mechanism", "billing", "total"):
            metrics.stage_seconds.labels(stage).observe(getattr(response.timings_ms, stage) / 1000)
        metrics.candidates.observe(num_candidates)
        metrics.effective_sample_size.observe(response.effective_sample_size)
        metrics.revenue.labels(response.currency).inc(response.revenue)


def load_record(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    record: dict[str, Any] = json.loads(raw)
    return record
