"""Orchestration of one auction: prompts → tokenize → generate → score → mechanism → bill.

I/O lives here and in the clients it calls; the mathematics is `app.mechanism` (pure). The candidate
set (M, proposal, mixture shares, seeds) depends only on the request's query, descriptions and
settings, never on the advertisers' rewards (MECHANISM.md, last section).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

from app import mechanism
from app.engine_client import EngineClient, GeneratedCandidate, WorkerCallStats, derive_seed
from app.ledger.events import make_billing_event
from app.ledger.producer import BillingProducer
from app.metrics import GatewayMetrics
from app.prompts import AdvertiserProfile, advertiser_messages, context_messages, reference_messages
from app.schemas import (
    AdvertiserResult,
    AuctionRecord,
    AuctionRequest,
    AuctionResponse,
    AuctionTimings,
    CandidateRecord,
)
from app.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

CandidateSource = Literal["context", "reference"]

AUCTION_KEY_PREFIX = "mosaic:auction:"

# Stream numbers for derive_seed: each random choice of an auction gets its own reproducible seed.
_SEED_CONTEXT_DRAWS = 1
_SEED_REFERENCE_DRAWS = 2
_SEED_ALLOCATION = 3


class AuctionDeadlineError(Exception):
    """The auction deadline (AUCTION_DEADLINE_S) passed before the mechanism ran: 504."""


def auction_key(auction_id: str) -> str:
    return f"{AUCTION_KEY_PREFIX}{auction_id}"


@dataclass
class StageClock:
    """Wall time per stage, in milliseconds."""

    started: float = field(default_factory=time.perf_counter)
    stages_ms: dict[str, float] = field(default_factory=dict)

    async def timed(self, stage: str, work: Awaitable[T]) -> T:
        begin = time.perf_counter()
        try:
            return await work
        finally:
            self.stages_ms[stage] = self.stages_ms.get(stage, 0.0) + (time.perf_counter() - begin) * 1000

    def total_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def timings(self, worker_stats: WorkerCallStats) -> AuctionTimings:
        stage = self.stages_ms.get
        return AuctionTimings(
            tokenize=stage("tokenize", 0.0),
            generate=stage("generate", 0.0),
            score=stage("score", 0.0),
            mechanism=stage("mechanism", 0.0),
            billing=stage("billing", 0.0),
            total=self.total_ms(),
            workers=worker_stats.busy_seconds() * 1000,
        )


@dataclass(frozen=True)
class CandidateSet:
    """The M candidates with where each came from; fixed before any advertiser is scored."""

    candidates: list[GeneratedCandidate]
    sources: list[CandidateSource]  # which proposal drew each candidate
    context_share: float  # fraction of the draws taken from the context-aware proposal


@dataclass(frozen=True)
class ScoredCandidates:
    """The candidate set with every score the mechanism needs (log-probs, natural log)."""

    candidate_set: CandidateSet
    log_ref: np.ndarray  # (M,) log π_ref(y_j)
    log_advertisers: np.ndarray  # (n, M) log π_i(y_j), before value scales
    log_proposal: np.ndarray  # (M,) log q(y_j)
    log_context: np.ndarray | None  # (M,) raw context-prompt score, scored for the mixture only


def mixture_counts(num_candidates: int, context_share: float) -> tuple[int, int]:
    """(context draws, reference draws) for the mixture: a fixed, report-independent split."""
    from_context = min(num_candidates, max(0, math.floor(context_share * num_candidates + 0.5)))
    return from_context, num_candidates - from_context


class CandidateSampler:
    """Draws the candidate set from the proposal and scores it under every context (no billing)."""

    def __init__(self, settings: Settings, engine: EngineClient) -> None:
        self.settings = settings
        self.engine = engine

    async def collect(
        self,
        request: AuctionRequest,
        seed: int,
        clock: StageClock | None = None,
        worker_stats: WorkerCallStats | None = None,
    ) -> ScoredCandidates:
        """Everything the mechanism needs, from the workers: prompts → tokenize → generate → score.

        The evaluation (`mosaic evaluate`) draws and scores candidates through exactly this code, then
        resolves auctions on prefixes of the same candidate set.
        """
        clock = clock or StageClock()
        worker_stats = worker_stats or WorkerCallStats()
        settings = self.settings
        num_candidates = request.candidates or settings.default_candidates
        max_tokens = request.max_tokens or settings.default_max_tokens
        profiles = [
            AdvertiserProfile(name=a.name, description=a.description, instruction=a.instruction)
            for a in request.advertisers
        ]
        reference_chat = reference_messages(request.query)
        context_chat = context_messages(request.query, profiles)
        advertiser_chats = [advertiser_messages(request.query, profile) for profile in profiles]

        # One tokenize per prompt, spread over the workers, all sent at once. Generation waits only for
        # the prompts it samples from (0: reference, 1: context); the other answers are read while it runs.
        chats = [reference_chat, context_chat, *advertiser_chats]
        tokenized = [
            asyncio.ensure_future(self.engine.tokenize_chat(chat, first_worker=index, stats=worker_stats))
            for index, chat in enumerate(chats)
        ]
        sampled_from = {"reference": (0,), "context": (1,), "mixture": (0, 1)}[request.proposal]
        try:
            await clock.timed("tokenize", asyncio.gather(*(tokenized[index] for index in sampled_from)))
            ready = [tokenized[index].result() if index in sampled_from else [] for index in (0, 1)]
            candidate_set = await clock.timed(
                "generate",
                self._draw_candidates(
                    request, num_candidates, max_tokens, seed, ready[0], ready[1], worker_stats
                ),
            )
            prompt_ids = await asyncio.gather(*tokenized)
        finally:
            for pending in tokenized:  # a failed auction leaves no request behind, no error unread
                if pending.done() and not pending.cancelled():
                    pending.exception()
                pending.cancel()
        reference_ids, context_ids, advertiser_ids = prompt_ids[0], prompt_ids[1], prompt_ids[2:]
        candidates = candidate_set.candidates
        # Score every candidate's exact reply tokens (EOS included) under π_ref, each π_i, and for the
        # mixture under the context prompt too: one batch, split over the workers.
        scoring_prompts = [reference_ids, *advertiser_ids]
        if request.proposal == "mixture":
            scoring_prompts.append(context_ids)
        sequences = [prompt + c.token_ids for prompt in scoring_prompts for c in candidates]
        prompt_lengths = [len(prompt) for prompt in scoring_prompts for _ in candidates]
        scores = await clock.timed(
            "score", self.engine.score(sequences, prompt_lengths, worker_stats, groups=len(scoring_prompts))
        )
        score_matrix = np.asarray(scores, dtype=np.float64).reshape(len(scoring_prompts), len(candidates))

        log_ref = score_matrix[0]
        log_context = score_matrix[1 + len(profiles)] if request.proposal == "mixture" else None
        if log_context is not None:
            shares = np.array([candidate_set.context_share, 1.0 - candidate_set.context_share])
            log_proposal = mechanism.mixture_log_proposal(np.stack([log_context, log_ref]), shares)
        else:
            # The processed log-prob of the sampled tokens: the density the candidate was drawn from.
            log_proposal = np.array([c.log_proposal for c in candidates], dtype=np.float64)
        return ScoredCandidates(
            candidate_set=candidate_set,
            log_ref=log_ref,
            log_advertisers=score_matrix[1 : 1 + len(profiles)],
            log_proposal=log_proposal,
            log_context=log_context,
        )

    async def _draw_candidates(
        self,
        request: AuctionRequest,
        num_candidates: int,
        max_tokens: int,
        seed: int,
        reference_ids: list[int],
        context_ids: list[int],
        worker_stats: WorkerCallStats,
    ) -> CandidateSet:
        if request.proposal == "context":
            counts = (num_candidates, 0)
        elif request.proposal == "reference":
            counts = (0, num_candidates)
        else:
            counts = mixture_counts(num_candidates, self.settings.mixture_context_share)
        draws: list[asyncio.Future[list[GeneratedCandidate]] | Any] = []
        for prompt, count, stream in (
            (context_ids, counts[0], _SEED_CONTEXT_DRAWS),
            (reference_ids, counts[1], _SEED_REFERENCE_DRAWS),
        ):
            if count == 0:
                continue
            draws.append(
                self.engine.generate(
                    prompt,
                    count,
                    max_tokens=max_tokens,
                    temperature=request.temperature,
                    top_p=request.top_p,
                    seed=derive_seed(seed, stream),
                    stats=worker_stats,
                )
            )
        results = await asyncio.gather(*draws)
        candidates: list[GeneratedCandidate] = []
        sources: list[CandidateSource] = []
        index = 0
        pools: tuple[tuple[CandidateSource, int], ...] = (("context", counts[0]), ("reference", counts[1]))
        for source, count in pools:
            if count == 0:
                continue
            candidates.extend(results[index])
            sources.extend([source] * len(results[index]))
            index += 1
        if len(candidates) != num_candidates:
            raise RuntimeError(f"workers returned {len(candidates)} candidates, {num_candidates} asked")
        return CandidateSet(candidates=candidates, sources=sources, context_share=counts[0] / num_candidates)


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
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        worker_stats = WorkerCallStats()
        try:
            async with asyncio.timeout(self.settings.auction_deadline_s):
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
        rng = np.random.default_rng(derive_seed(seed, _SEED_ALLOCATION))
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
