"""The candidate set of one auction: prompts → tokenize → generate M candidates → score them.

Report-independent by construction: the candidate set (M, proposal, mixture shares, seeds) depends only
on the request's query, descriptions and settings, never on the advertisers' rewards (MECHANISM.md,
last section). The service (`app.auction.service`) and the evaluation (`app.evaluation`) both draw
through this class, driven by a `CandidateDraw` (a served auction's from its request). Imports the
prompts, the mechanism's mixture density, the engine client and `app.contract`; no billing, no HTTP
(docs/DESIGN.md § The path of one auction).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

from app import mechanism
from app.auction.engine_client import (
    EngineClient,
    GeneratedCandidate,
    ScoredChunk,
    WorkerCallStats,
    derive_seed,
)
from app.contract.request import AuctionRequest, ProposalName
from app.contract.result import AuctionTimings
from app.prompts import AdvertiserProfile, auction_chats, reference_messages
from app.settings import Settings

T = TypeVar("T")

CandidateSource = Literal["context", "reference"]

# Stream numbers for derive_seed: each random choice of an auction gets its own reproducible seed.
SEED_CONTEXT_DRAWS = 1
SEED_REFERENCE_DRAWS = 2
SEED_ALLOCATION = 3


class PromptTooLongError(ValueError):
    """A rendered prompt is over MAX_PROMPT_TOKENS; `loc` names the request field that made it long."""

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]], limit: int) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems
        self.limit = limit


def check_prompt_lengths(lengths: list[int], limit: int) -> None:
    """Raise PromptTooLongError unless every prompt has at most `limit` tokens.

    `lengths` in tokenize order: reference (the query alone), context (the query and every
    advertiser), then each advertiser's own prompt. A long query makes every prompt long, so it is
    named alone; otherwise each advertiser whose own prompt is too long, else all of them together.
    """
    reference, context, own = lengths[0], lengths[1], lengths[2:]
    problems: list[tuple[tuple[str | int, ...], str]]
    if reference > limit:
        problems = [
            (("query",), f"query renders to a {reference}-token prompt, over MAX_PROMPT_TOKENS={limit}")
        ]
    else:
        problems = [
            (("advertisers", index), f"advertiser {index} renders to a {length}-token prompt, over {limit}")
            for index, length in enumerate(own)
            if length > limit
        ]
        if not problems and context > limit:
            problems = [
                (
                    ("advertisers",),
                    f"the advertisers together render to a {context}-token context prompt, over "
                    f"MAX_PROMPT_TOKENS={limit}",
                )
            ]
    if problems:
        raise PromptTooLongError(problems, limit)


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
            idempotency=stage("idempotency", 0.0),
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
    # Which engine scored what (the record's `engine`, `app.auction.engine_record`; issue 35): the
    # scoring requests over the batch (sequence g·M + j: candidate j under prompt g = reference, each
    # advertiser, the context prompt for a mixture) and the identities of the engines that took part.
    score_chunks: tuple[ScoredChunk, ...] = ()
    identities: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_tokens: int = 0


@dataclass(frozen=True)
class CandidateDraw:
    """What one auction's candidate set is drawn from: the query, the advertisers' prompts (never their
    value scales: the set is report-independent), M, the proposal and the sampling parameters."""

    query: str
    advertisers: tuple[AdvertiserProfile, ...]
    num_candidates: int
    proposal: ProposalName
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0

    @classmethod
    def from_request(cls, request: AuctionRequest, settings: Settings) -> CandidateDraw:
        """A served auction's draw: the request's fields, M and the reply length defaulted by settings."""
        return cls(
            query=request.query,
            advertisers=tuple(advertiser.profile() for advertiser in request.advertisers),
            num_candidates=request.candidates or settings.default_candidates,
            proposal=request.proposal,
            max_tokens=request.max_tokens or settings.default_max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
        )


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
        draw: CandidateDraw,
        seed: int,
        clock: StageClock | None = None,
        worker_stats: WorkerCallStats | None = None,
        cleared: asyncio.Future[None] | None = None,
    ) -> ScoredCandidates:
        """Everything the mechanism needs, from the workers: prompts → tokenize → generate → score.

        ``cleared``: awaited after tokenization, before any generation (tokenizing is no model work).

        The evaluation (`mosaic evaluate`) draws and scores candidates through exactly this code, then
        resolves auctions on prefixes of the same candidate set.
        """
        clock = clock or StageClock()
        worker_stats = worker_stats or WorkerCallStats()
        prompt_ids, candidate_set = await self._tokenize_and_draw(draw, seed, clock, worker_stats, cleared)
        return await self._score(draw, prompt_ids, candidate_set, clock, worker_stats)

    async def organic(
        self,
        draw: CandidateDraw,
        seed: int,
        clock: StageClock,
        worker_stats: WorkerCallStats,
        cleared: asyncio.Future[None] | None = None,
    ) -> GeneratedCandidate:
        """A no-fill's reply: ONE sample of the reference model π_ref (the reference draws' seed stream
        of `seed`: a replay by seed gives it again), nothing scored. One tokenize, one generate."""
        prompt = reference_messages(draw.query)
        ids = await clock.timed("tokenize", self.engine.tokenize_chat(prompt, stats=worker_stats))
        check_prompt_lengths([len(ids), 0], self.settings.max_prompt_tokens)
        if cleared is not None:
            await asyncio.shield(cleared)
        generating = self.engine.generate(
            ids,
            1,
            max_tokens=draw.max_tokens,
            temperature=draw.temperature,
            top_p=draw.top_p,
            seed=derive_seed(seed, SEED_REFERENCE_DRAWS),
            stats=worker_stats,
        )
        (reply,) = await clock.timed("generate", generating)
        return reply

    async def _tokenize_and_draw(
        self,
        draw: CandidateDraw,
        seed: int,
        clock: StageClock,
        worker_stats: WorkerCallStats,
        cleared: asyncio.Future[None] | None,
    ) -> tuple[list[list[int]], CandidateSet]:
        """Every prompt's token ids (0: reference, 1: context, 2+i: advertiser i) and the candidate set."""
        # One tokenize per prompt, spread over the workers, all sent at once.
        chats = auction_chats(draw.query, draw.advertisers)
        tokenized = [
            asyncio.ensure_future(self.engine.tokenize_chat(chat, first_worker=index, stats=worker_stats))
            for index, chat in enumerate(chats)
        ]
        try:
            # Every prompt's length is checked before any generation: cost is tokens, and a prompt
            # over MAX_PROMPT_TOKENS is refused (422) before the workers spend anything on it.
            prompt_ids = await clock.timed("tokenize", asyncio.gather(*tokenized))
            check_prompt_lengths([len(ids) for ids in prompt_ids], self.settings.max_prompt_tokens)
            if cleared is not None:  # e.g. an Idempotency-Key's replay check: no model work before it
                await asyncio.shield(cleared)
            candidate_set = await clock.timed(
                "generate", self._draw_candidates(draw, seed, prompt_ids[0], prompt_ids[1], worker_stats)
            )
        finally:
            for pending in tokenized:  # a failed auction leaves no request behind, no error unread
                if pending.done() and not pending.cancelled():
                    pending.exception()
                pending.cancel()
        return prompt_ids, candidate_set

    async def _score(
        self,
        draw: CandidateDraw,
        prompt_ids: list[list[int]],
        candidate_set: CandidateSet,
        clock: StageClock,
        worker_stats: WorkerCallStats,
    ) -> ScoredCandidates:
        """Score every candidate's exact reply tokens (EOS included) under π_ref, each π_i, and for the
        mixture under the context prompt too: one batch, split over the workers."""
        reference_ids, context_ids, advertiser_ids = prompt_ids[0], prompt_ids[1], prompt_ids[2:]
        candidates = candidate_set.candidates
        mixture = draw.proposal == "mixture"
        scoring_prompts = [reference_ids, *advertiser_ids, *([context_ids] if mixture else [])]
        sequences = [prompt + c.token_ids for prompt in scoring_prompts for c in candidates]
        prompt_lengths = [len(prompt) for prompt in scoring_prompts for _ in candidates]
        scoring = self.engine.score_chunks(
            sequences, prompt_lengths, worker_stats, groups=len(scoring_prompts)
        )
        scores, chunks = await clock.timed("score", scoring)
        score_matrix = np.asarray(scores, dtype=np.float64).reshape(len(scoring_prompts), len(candidates))
        num_advertisers = len(draw.advertisers)
        log_ref = score_matrix[0]
        log_context = score_matrix[1 + num_advertisers] if mixture else None
        if log_context is not None:
            shares = np.array([candidate_set.context_share, 1.0 - candidate_set.context_share])
            log_proposal = mechanism.mixture_log_proposal(np.stack([log_context, log_ref]), shares)
        else:
            # The processed log-prob of the sampled tokens: the density the candidate was drawn from.
            log_proposal = np.array([c.log_proposal for c in candidates], dtype=np.float64)
        return ScoredCandidates(
            candidate_set=candidate_set,
            log_ref=log_ref,
            log_advertisers=score_matrix[1 : 1 + num_advertisers],
            log_proposal=log_proposal,
            log_context=log_context,
            score_chunks=tuple(chunks),
            identities=self._identities(candidates, chunks),
            max_tokens=draw.max_tokens,
        )

    def _identities(
        self, candidates: list[GeneratedCandidate], chunks: list[ScoredChunk]
    ) -> dict[str, dict[str, Any]]:
        """The identities of the engines that drew or scored this candidate set, by id."""
        used = {c.engine_id for c in candidates} | {chunk.engine_id for chunk in chunks}
        known = self.engine.identities.known
        return {engine_id: known.get(engine_id, {"unread": "not seen"}) for engine_id in sorted(used)}

    async def _draw_candidates(
        self,
        draw: CandidateDraw,
        seed: int,
        reference_ids: list[int],
        context_ids: list[int],
        worker_stats: WorkerCallStats,
    ) -> CandidateSet:
        num_candidates = draw.num_candidates
        if draw.proposal == "context":
            counts = (num_candidates, 0)
        elif draw.proposal == "reference":
            counts = (0, num_candidates)
        else:
            counts = mixture_counts(num_candidates, self.settings.mixture_context_share)
        draws: list[asyncio.Future[list[GeneratedCandidate]] | Any] = []
        for prompt, count, stream in (
            (context_ids, counts[0], SEED_CONTEXT_DRAWS),
            (reference_ids, counts[1], SEED_REFERENCE_DRAWS),
        ):
            if count == 0:
                continue
            draws.append(
                self.engine.generate(
                    prompt,
                    count,
                    max_tokens=draw.max_tokens,
                    temperature=draw.temperature,
                    top_p=draw.top_p,
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
