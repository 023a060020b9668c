"""Which campaigns enter an auction by relevance to its query: `Selector.select` → `SelectionOutcome`.

One query embedding (in a thread), then: the sensitive-topic check (SELECTION_SENSITIVE: no ads at
all, reason ``sensitive_topic``); the index's most similar campaigns plus those whose targeted keyword
the query matches; the rules of app.selection.matching (negative keywords, relevance or keyword);
status and schedule; the request's ``badv`` (owners) and ``bcat`` (the campaign's targeted categories);
the campaign's blocked categories against the query's content categories; owners already in the auction
(inline advertisers); the gates: "has budget left" (one budget read for a batch, `BudgetGate`) and any
the request brings (e.g. a frequency-cap pre-check); at most one campaign per owner (her most relevant
eligible one); the k most relevant. It never reads a value scale or a budget amount (the catalog holds
neither): bids cannot buy eligibility. `open_selector` assembles a gateway's parts. Imports numpy,
redis-py (a type), the selection modules, app.campaigns (eligibility, store), the budget ledger, the
settings and app.contract; see docs/DESIGN.md § Selection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import redis.asyncio as aioredis

from app.campaigns.eligibility import window_exclusion
from app.campaigns.store import CampaignStore
from app.contract.result import ExclusionReason
from app.contract.selection import ConsideredCampaign, SelectionReport, SensitiveMatch
from app.ledger.budget import BudgetLedger
from app.selection.budget_gate import BudgetGate, Gate
from app.selection.embedder import Embedder
from app.selection.index import CampaignIndex
from app.selection.matching import admit, matches_any, rank_key, words
from app.selection.registry_vectors import CampaignCatalog, CatalogEntry, VectorStore
from app.selection.taxonomy import (
    CATEGORY_IDS,
    CATEGORY_THRESHOLD,
    CategoryVectors,
    category_vectors,
    phrase_table,
    query_categories,
)
from app.selection.taxonomy import sensitive_match as find_sensitive
from app.settings import Settings

NoFillReason = str  # sensitive_topic | no_relevant_campaign | all_out_of_budget | all_capped | all_excluded
MIN_DEPTH = 32  # campaigns read from the index at least (filters drop some)


@dataclass(frozen=True)
class SelectionLimits:
    """What the request says about who may enter (besides k)."""

    min_relevance: float | None = None
    bcat: frozenset[str] = frozenset()
    badv: frozenset[str] = frozenset()
    taken_owners: frozenset[str] = frozenset()  # owners of the request's inline advertisers


@dataclass(frozen=True)
class SelectorConfig:
    min_relevance: float
    sensitive: bool
    sensitive_categories: tuple[str, ...]
    sensitive_threshold: float
    category_threshold: float

    @classmethod
    def of(cls, settings: Settings) -> SelectorConfig:
        unknown = sorted(set(settings.selection_sensitive_categories) - CATEGORY_IDS)
        if unknown:
            raise ValueError(f"SELECTION_SENSITIVE_CATEGORIES: unknown category ids {unknown}")
        return cls(
            min_relevance=settings.selection_min_relevance,
            sensitive=settings.selection_sensitive,
            sensitive_categories=tuple(settings.selection_sensitive_categories),
            sensitive_threshold=settings.selection_sensitive_threshold,
            category_threshold=CATEGORY_THRESHOLD,
        )


@dataclass
class _Candidate:
    entry: CatalogEntry
    relevance: float
    keyword_match: bool
    reason: ExclusionReason | None = None
    selected: bool = False


@dataclass(frozen=True)
class SelectionOutcome:
    selected_ids: tuple[str, ...]
    report: SelectionReport
    no_fill_reason: NoFillReason | None
    candidates: tuple[str, ...] = field(default=())  # eligible ones ranked (selected first), for callers


class Selector:
    """Selects campaigns for a query (module docstring)."""

    def __init__(
        self,
        embedder: Embedder,
        catalog: CampaignCatalog,
        categories: CategoryVectors,
        config: SelectorConfig,
        gates: Sequence[Gate] = (),
    ) -> None:
        self.embedder = embedder
        self.catalog = catalog
        self.categories = categories
        self.config = config
        self.gates = tuple(gates)

    @classmethod
    async def build(
        cls, embedder: Embedder, catalog: CampaignCatalog, settings: Settings, gates: Sequence[Gate] = ()
    ) -> Selector:
        """A selector with the taxonomy's phrases embedded (in a thread: ~300 short texts)."""
        config = SelectorConfig.of(settings)
        ids, owners, phrases = phrase_table()
        vectors = await asyncio.to_thread(embedder.embed, phrases)
        return cls(embedder, catalog, category_vectors(ids, owners, vectors), config, gates)

    async def select(
        self,
        query: str,
        k: int,
        limits: SelectionLimits,
        now_ms: int | None = None,
        gates: Sequence[Gate] = (),
    ) -> SelectionOutcome:
        """Up to k campaigns for `query` and the report of who was considered and why left out; `gates`
        are this request's checks, after the selector's own."""
        started = time.perf_counter()
        (query_vec,) = await asyncio.to_thread(self.embedder.embed, [query])
        spent = time.perf_counter() - started
        return await self.select_embedded(query, query_vec, k, limits, now_ms, spent, gates)

    async def select_embedded(
        self,
        query: str,
        query_vec: np.ndarray,
        k: int,
        limits: SelectionLimits,
        now_ms: int | None = None,
        embedding_s: float = 0.0,
        gates: Sequence[Gate] = (),
    ) -> SelectionOutcome:
        """`select` once the query is embedded (what bench/selection.py times)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        embedded = time.perf_counter()
        similarities = self.categories.similarities(query_vec)
        topics = query_categories(query_vec, self.categories, self.config.category_threshold)
        sensitive = None
        if self.config.sensitive:
            sensitive = find_sensitive(
                query_vec,
                self.categories,
                self.config.sensitive_categories,
                self.config.sensitive_threshold,
                similarities,
            )
        if sensitive is not None:
            report = _report([], topics, sensitive, embedding_s, time.perf_counter() - embedded)
            return SelectionOutcome((), report, "sensitive_topic")
        min_relevance = self.config.min_relevance if limits.min_relevance is None else limits.min_relevance
        candidates = self.screen(query, query_vec, k, min_relevance, limits, frozenset(topics), now)
        await self._pick(candidates, k, now, (*self.gates, *gates))
        selected = tuple(c.entry.id for c in candidates if c.selected)
        report = _report(candidates, topics, None, embedding_s, time.perf_counter() - embedded)
        eligible = tuple(c.entry.id for c in candidates if c.reason is None)
        return SelectionOutcome(selected, report, None if selected else _no_fill(candidates), eligible)

    def screen(
        self,
        query: str,
        query_vec: np.ndarray,
        k: int,
        min_relevance: float,
        limits: SelectionLimits,
        topics: frozenset[str],
        now_ms: int,
    ) -> list[_Candidate]:
        """The considered campaigns, most relevant first, each with its first exclusion reason (or None
        when eligible so far): every rule but the budget, one per owner and k (pure, no I/O)."""
        query_words = words(query)
        entries = self.catalog.entries
        depth = max(MIN_DEPTH, 4 * k)
        keyword_hits = _keyword_hits(self.catalog, query_words)
        while True:
            searched = self.catalog.index.search(query_vec, depth)
            found = dict(searched)
            for campaign_id in keyword_hits - found.keys():
                found[campaign_id] = self.catalog.index.similarity(campaign_id, query_vec)
            ranked = sorted(
                ((cid, rel) for cid, rel in found.items() if cid in entries), key=lambda p: rank_key(*p)
            )
            candidates = [
                _judge(entries[cid], rel, query_words, min_relevance, limits, topics, now_ms)
                for cid, rel in ranked
            ]
            # Deeper only while the index still answers relevant campaigns and too few owners are
            # eligible (twice k: some may have no budget left).
            exhausted = len(searched) < depth or searched[-1][1] < min_relevance
            owners = {c.entry.owner for c in candidates if c.reason is None}
            if exhausted or len(owners) >= 2 * k:
                return candidates
            depth *= 4

    async def _pick(self, candidates: list[_Candidate], k: int, now_ms: int, gates: Sequence[Gate]) -> None:
        """The gates, one per owner and the top k, in rank order (the gates read batches of 2k)."""
        owners: set[str] = set()
        eligible = [c for c in candidates if c.reason is None]
        position = 0
        while position < len(eligible):
            batch = eligible[position : position + max(2 * k, 8)]
            position += len(batch)
            reasons: dict[str, ExclusionReason] = {}
            for gate in gates:
                unchecked = [c.entry for c in batch if c.entry.id not in reasons]
                reasons.update(await gate.exclusions(unchecked, now_ms))
            for candidate in batch:
                candidate.reason = reasons.get(candidate.entry.id)
                if candidate.reason is not None:
                    continue
                if candidate.entry.owner in owners:
                    candidate.reason = "same_owner"
                elif len(owners) < k:
                    owners.add(candidate.entry.owner)
                    candidate.selected = True
            if len(owners) >= k:
                for candidate in eligible[position:]:  # outranked: never checked by the gates
                    if candidate.entry.owner in owners:
                        candidate.reason = "same_owner"
                return


def _keyword_hits(catalog: CampaignCatalog, query_words: frozenset[str]) -> set[str]:
    hits: set[str] = set()
    for word in query_words:
        for campaign_id in catalog.postings.get(word, ()):
            entry = catalog.entries.get(campaign_id)
            if entry is not None and matches_any(query_words, entry.keywords):
                hits.add(campaign_id)
    return hits


def _judge(
    entry: CatalogEntry,
    relevance: float,
    query_words: frozenset[str],
    min_relevance: float,
    limits: SelectionLimits,
    topics: frozenset[str],
    now_ms: int,
) -> _Candidate:
    """The campaign's first exclusion reason by the rules that need no I/O, in the report's order."""
    admission = admit(relevance, min_relevance, query_words, entry.keywords, entry.negatives)
    candidate = _Candidate(entry, relevance, admission.keyword_match)
    if admission.negative_match:
        candidate.reason = "negative_keyword"
    elif not admission.admitted:
        candidate.reason = "not_relevant"
    else:
        candidate.reason = window_exclusion(entry.status, entry.start_ms, entry.end_ms, now_ms)
    if candidate.reason is None:
        if entry.owner in limits.badv:
            candidate.reason = "badv"
        elif entry.categories & limits.bcat:
            candidate.reason = "bcat"
        elif entry.blocked & topics:
            candidate.reason = "blocked_category"
        elif entry.owner in limits.taken_owners:
            candidate.reason = "same_owner"
    return candidate


def _no_fill(candidates: list[_Candidate]) -> NoFillReason:
    """Why nothing was selected: nothing relevant, every relevant one out of budget, or left out."""
    relevant = [c for c in candidates if c.reason not in ("not_relevant", "negative_keyword")]
    if not relevant:
        return "no_relevant_campaign"
    if all(c.reason == "out_of_budget" for c in relevant):
        return "all_out_of_budget"
    if all(c.reason == "frequency_capped" for c in relevant):
        return "all_capped"
    return "all_excluded"


def _report(
    candidates: list[_Candidate],
    topics: list[str],
    sensitive: tuple[str, float] | None,
    embedding_s: float,
    selection_s: float,
) -> SelectionReport:
    """The contract's `SelectionReport` from the internal candidates (the adapter to app.contract)."""
    return SelectionReport(
        considered=[
            ConsideredCampaign(
                campaign_id=c.entry.id,
                owner=c.entry.owner,
                relevance=round(c.relevance, 6),
                keyword_match=c.keyword_match,
                selected=c.selected,
                reason=c.reason,
            )
            for c in candidates
        ],
        query_categories=topics,
        sensitive=None
        if sensitive is None
        else SensitiveMatch(category=sensitive[0], similarity=sensitive[1]),
        embedding_ms=embedding_s * 1000,
        selection_ms=selection_s * 1000,
    )


async def open_selector(
    redis: aioredis.Redis, settings: Settings, budgets: BudgetLedger, embedder: Embedder | None = None
) -> tuple[Selector, CampaignCatalog]:
    """A gateway's selection parts, loaded: the model (MiniLmEmbedder unless given), the catalog after
    its first full load, the selector. The caller runs ``catalog.run(settings.selection_refresh_s)`` as
    a task for as long as it serves."""
    if embedder is None:
        from app.selection.embedder import MiniLmEmbedder

        embedder = await asyncio.to_thread(MiniLmEmbedder.load)
    index = CampaignIndex(embedder.dim, settings.selection_ann_min)
    store = CampaignStore(redis, settings)
    catalog = CampaignCatalog(store, VectorStore(redis, embedder), index)
    await catalog.refresh()
    selector = await Selector.build(embedder, catalog, settings, [BudgetGate(budgets)])
    return selector, catalog
