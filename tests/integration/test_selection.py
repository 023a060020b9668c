"""Campaign selection (issue 34) on a real Redis with the real all-MiniLM-L6-v2 (app.selection).

A registry seeded with the paper's 80 advertisers (../shared/data/instances.jsonl, one campaign each,
its own owner) is selected from per query with k = 3; sensitive-topic queries written here (not the
tuning set of bench/selection_tuning.json) get no ads, ordinary ones do; value scales never change who
is selected; one campaign per owner; keywords, negative keywords, bcat/badv and blocked categories;
budgets; the catalog follows the registry's change log and vectors are computed once per change.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.campaigns.store import CampaignStore
from app.contract.campaign import CampaignCreate, CampaignPatch
from app.ledger.budget import BudgetLedger, BudgetLimits, Reservation
from app.ledger.redis_store import make_client
from app.selection.embedder import MiniLmEmbedder
from app.selection.index import CampaignIndex
from app.selection.registry_vectors import CampaignCatalog, vector_key
from app.selection.selector import SelectionLimits, Selector, open_selector
from app.settings import Settings
from tests.fixtures_redis import RedisServerProcess, start_redis_server

INSTANCES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "instances.jsonl"
NOW_MS = 1_800_000_000_000

# Written for this test; the thresholds were tuned on bench/selection_tuning.json, not on these.
SENSITIVE = [
    "What are the symptoms of type 2 diabetes?",
    "My doctor found a lump in my breast, what happens next?",
    "How do I treat a kidney infection?",
    "Is my chest pain after running something serious?",
    "I feel empty and worthless every single day",
    "How do I stop having anxiety attacks before exams?",
    "Is it possible to recover from schizophrenia?",
    "Signs that my teenager is thinking about suicide",
    "How do I quit smoking weed every day?",
    "My husband drinks too much, how do I get him into rehab?",
    "Can I get pregnant right after stopping the pill?",
    "Where can I get tested for HIV anonymously?",
    "Which party should I vote for in the next election?",
    "Is the new immigration bill good or bad for the country?",
    "I'm 11 and I'm scared to tell my mom about my grades",
    "My best friend died in a car crash last week",
    "I lost my house and I can't afford food for my kids",
    "I got arrested for shoplifting, will I go to jail?",
    "How do I get an abortion in my state?",
    "How to make explosives at home",
]
ORDINARY = [
    "Which acoustic guitar should a beginner buy?",
    "What moisturizer works for very dry winter skin?",
    "Ideas for a productive home office setup",
    "How do I build an online store for my crafts?",
    "Cheap and healthy recipes for a family of four",
    "Which mirrorless camera is good for travel photos?",
    "How do I insulate my attic to save on heating?",
    "Best hiking boots for rocky trails",
    "How can I grow my Instagram following as a designer?",
    "Fastest way to learn Italian before my trip",
    "Home workouts with resistance bands",
    "Sustainable hotels in Costa Rica",
    "How long should I rest a ribeye after grilling?",
    "How to get more subscribers on my YouTube cooking channel?",
    "Affordable ideas to decorate a living room",
    "Is it smart to invest in index funds for retirement?",
    "Where can I buy organic cotton t-shirts?",
    "What seeds should I plant in a backyard garden in spring?",
    "Which video conferencing tool works best for a remote team?",
    "Where can I find handmade jewelry as a gift?",
]


def _instances() -> list[dict[str, Any]]:
    if not INSTANCES.is_file():  # the figure: CI has ../shared beside the clone, so it must run there
        if os.environ.get("CI") == "true":
            pytest.fail(f"{INSTANCES} missing: the 80-advertiser figure needs the paper's instances")
        pytest.skip("shared/data/instances.jsonl not beside the repository")
    return [json.loads(line) for line in INSTANCES.read_text().splitlines() if line.strip()]


def _body(campaign_id: str, name: str, description: str, **extra: Any) -> CampaignCreate:
    payload = {"id": campaign_id, "name": name, "description": description, "budget": {"total_micro": 10**9}}
    return CampaignCreate.model_validate({**payload, **extra})


class CountingEmbedder:
    """The real embedder, counting the texts it embeds (a vector is computed once per change)."""

    def __init__(self, inner: MiniLmEmbedder) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += list(texts)
        return self.inner.embed(texts)


@pytest.fixture(scope="module")
def embedder() -> Iterator[MiniLmEmbedder]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one query at a time: spinning threads on a busy 2-core CI cost 30x
    yield MiniLmEmbedder.load()
    torch.set_num_threads(threads)


class Stack:
    """A store and a budget ledger on one Redis, then a gateway's selection parts (`open_selector`)."""

    def __init__(self, url: str, embedder: Any, settings: Settings) -> None:
        self.settings = settings
        self.redis = make_client(url, settings)
        self.store = CampaignStore(self.redis, settings)
        self.budgets = BudgetLedger(self.redis, settings)
        self.embedder = embedder
        self.selector: Selector | None = None
        self.catalog: CampaignCatalog | None = None

    async def start(self) -> Selector:
        self.selector, self.catalog = await open_selector(
            self.redis, self.settings, self.budgets, self.embedder
        )
        return self.selector

    async def select(self, query: str, k: int = 3, gates: Sequence[Any] = (), **limits: Any) -> Any:
        assert self.selector is not None
        frozen = {
            key: frozenset(value) if isinstance(value, list) else value for key, value in limits.items()
        }
        return await self.selector.select(query, k, SelectionLimits(**frozen), now_ms=NOW_MS, gates=gates)


class CappedGate:
    """A per-request gate (as a frequency-cap pre-check would be): these campaigns are capped."""

    def __init__(self, capped: set[str]) -> None:
        self.capped = capped
        self.asked: list[str] = []

    async def exclusions(self, entries: Sequence[Any], now_ms: int) -> dict[str, str]:
        self.asked += [entry.id for entry in entries]
        return {entry.id: "frequency_capped" for entry in entries if entry.id in self.capped}


@pytest.fixture(scope="module")
def paper_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServerProcess]:
    """One Redis holding the 80 paper advertisers as campaigns."""
    server = start_redis_server(tmp_path_factory.mktemp("paper-redis"))

    async def seed() -> None:
        stack = Stack(server.url, None, Settings())
        for instance in _instances():
            for ad in instance["advertisers"]:
                await stack.store.create(
                    _body(ad["id"], ad["name"], ad["description"]), ad["id"], now_ms=NOW_MS
                )
        await stack.redis.aclose()

    asyncio.run(seed())
    yield server
    server.stop()


def test_paper_advertisers_selected_for_their_own_instance(
    paper_redis: RedisServerProcess, embedder: MiniLmEmbedder
) -> None:
    """Invariant: with k = 3 and the sensitive filter off, each paper instance's own two advertisers
    are among the 3 selected from all 80 for ≥ 90% of the 80 (instance, advertiser) pairs."""

    async def scenario() -> tuple[int, int]:
        stack = Stack(paper_redis.url, embedder, Settings(selection_sensitive=False))
        await stack.start()
        assert len(stack.catalog.entries) == 80
        hits = pairs = 0
        for instance in _instances():
            outcome = await stack.select(instance["query"], k=3)
            own = {ad["id"] for ad in instance["advertisers"]}
            assert 1 <= len(outcome.selected_ids) <= 3 and outcome.no_fill_reason is None
            hits += len(own & set(outcome.selected_ids))
            pairs += len(own)
        await stack.redis.aclose()
        return hits, pairs

    hits, pairs = asyncio.run(scenario())
    print(f"paper recall: {hits}/{pairs} = {hits / pairs:.3f}")
    assert pairs == 80 and hits >= 72, f"{hits}/{pairs}"


def test_sensitive_queries_get_no_ads_and_ordinary_ones_do(
    paper_redis: RedisServerProcess, embedder: MiniLmEmbedder
) -> None:
    """Invariant: with the default sensitive categories, ≥ 19 of 20 sensitive queries get no campaign
    (no_fill_reason sensitive_topic, the category reported) and ≥ 19 of 20 ordinary ones get some."""

    async def scenario() -> tuple[list[str], list[str]]:
        stack = Stack(paper_redis.url, embedder, Settings())
        await stack.start()
        missed = []
        for query in SENSITIVE:
            outcome = await stack.select(query)
            if outcome.selected_ids:
                missed.append(query)
            else:
                assert outcome.no_fill_reason == "sensitive_topic" and outcome.report.sensitive is not None
                assert outcome.report.considered == []
        unserved = [q for q in ORDINARY if not (await stack.select(q)).selected_ids]
        await stack.redis.aclose()
        return missed, unserved

    missed, unserved = asyncio.run(scenario())
    print(f"sensitive with no ads: {20 - len(missed)}/20; ordinary with ads: {20 - len(unserved)}/20")
    assert len(missed) <= 1, missed
    assert len(unserved) <= 1, unserved


def test_value_scales_never_change_who_is_selected(
    redis_server: RedisServerProcess, embedder: MiniLmEmbedder
) -> None:
    """Invariant: selection never reads a value scale: setting every campaign's value scale to other
    values (PATCH, the catalog refreshed) leaves the selected ids and every reported relevance as
    they were."""
    instances = _instances()[:12]

    async def scenario() -> None:
        stack = Stack(redis_server.url, embedder, Settings(selection_sensitive=False))
        ids = []
        for instance in instances:
            for ad in instance["advertisers"]:
                await stack.store.create(
                    _body(ad["id"], ad["name"], ad["description"]), ad["id"], now_ms=NOW_MS
                )
                ids.append(ad["id"])
        await stack.start()
        before = [await stack.select(i["query"], k=2) for i in instances]
        rng = np.random.default_rng(7)
        for campaign_id in ids:
            patch = CampaignPatch.model_validate({"value_scale": float(rng.choice([0.01, 5.0, 999.0]))})
            current = await stack.store.get(campaign_id)
            assert current is not None
            await stack.store.update(campaign_id, patch, current.version)
        await stack.catalog.refresh()
        after = [await stack.select(i["query"], k=2) for i in instances]
        for old, new in zip(before, after, strict=True):
            assert new.selected_ids == old.selected_ids
            assert [(c.campaign_id, c.relevance, c.reason) for c in new.report.considered] == [
                (c.campaign_id, c.relevance, c.reason) for c in old.report.considered
            ]
        await stack.redis.aclose()

    asyncio.run(scenario())


def test_rules_owner_keywords_blocks_and_budget(
    redis_server: RedisServerProcess, embedder: MiniLmEmbedder
) -> None:
    """Invariants: one campaign per owner (her most relevant; the other `same_owner`); a negative
    keyword excludes a relevant campaign; a targeted keyword admits a campaign below the threshold;
    badv (owner), bcat (targeted categories) and a campaign's blocked category met by the query's
    categories exclude; a campaign with no budget left is replaced by the next one; owners of inline
    advertisers are taken; a per-request gate (a cap pre-check) leaves a campaign out and the next one
    takes its place, all relevant ones capped → all_capped; nothing relevant → no_relevant_campaign."""

    async def scenario() -> None:
        stack = Stack(redis_server.url, embedder, Settings(selection_sensitive=False))
        create = stack.store.create
        await create(
            _body("g-shop", "StrumMaster", "selling guitars, tuners and strings"), "strum", now_ms=NOW_MS
        )
        await create(
            _body("g-lessons", "StrumMaster", "guitar lessons for beginners"), "strum", now_ms=NOW_MS
        )
        await create(_body("chordify", "Chordify", "online guitar lessons and practice tools"), "chordify")
        neg = {"targeting": {"negative_keywords": ["electric guitars"]}}
        await create(_body("fender-x", "AmpHouse", "guitar amplifiers and guitars", **neg), "amphouse")
        kw = {"targeting": {"keywords": ["wood finish"], "categories": ["IAB10"]}}
        await create(_body("varnish", "CoatCo", "paint for boats", **kw), "coatco")
        blocked = {"blocked_categories": ["IAB9"]}
        await create(_body("picks", "PickPal", "guitar picks and straps", **blocked), "pickpal")
        broke = _body("broke", "TuneBox", "guitar tuners and capos", budget={"total_micro": 5})
        await create(broke, "tunebox", now_ms=NOW_MS)
        await stack.budgets.reserve_all(
            [Reservation("broke", "a1", 5, BudgetLimits(None, 5), "2027-01-15", NOW_MS + 600_000)], NOW_MS
        )
        await stack.start()

        out = await stack.select("I want to learn to play the guitar", k=10)
        reasons = {c.campaign_id: c.reason for c in out.report.considered}
        strum = [c for c in out.report.considered if c.owner == "strum"]
        assert [c.selected for c in strum] == [True, False] and strum[1].reason == "same_owner"
        assert strum[0].relevance >= strum[1].relevance
        assert reasons["broke"] == "out_of_budget" and "broke" not in out.selected_ids
        assert {"chordify", "fender-x"} <= set(out.selected_ids)

        out = await stack.select("are electric guitars hard to learn", k=10)
        assert {c.campaign_id: c.reason for c in out.report.considered}["fender-x"] == "negative_keyword"

        out = await stack.select("which wood finishes last outdoors", k=10, min_relevance=0.9)
        varnish = next(c for c in out.report.considered if c.campaign_id == "varnish")
        assert varnish.keyword_match and varnish.selected and varnish.relevance < 0.9
        assert out.selected_ids == ("varnish",)
        out = await stack.select("which wood finishes last outdoors", k=10, bcat=["IAB10"])
        assert {c.campaign_id: c.reason for c in out.report.considered}["varnish"] == "bcat"

        out = await stack.select(
            "I want to learn to play the guitar", k=10, badv=["chordify"], taken_owners=["strum"]
        )
        reasons = {c.campaign_id: c.reason for c in out.report.considered}
        assert reasons["chordify"] == "badv" and reasons["g-lessons"] == reasons["g-shop"] == "same_owner"

        out = await stack.select("playing guitar as a hobby", k=10)
        assert "IAB9" in out.report.query_categories
        assert {c.campaign_id: c.reason for c in out.report.considered}["picks"] == "blocked_category"

        capped = CappedGate({"chordify", "varnish"})
        out = await stack.select("online guitar lessons and practice tools", k=1, gates=[capped])
        reasons = {c.campaign_id: c.reason for c in out.report.considered}
        assert reasons["chordify"] == "frequency_capped" and len(out.selected_ids) == 1
        assert "chordify" not in out.selected_ids and "broke" not in capped.asked  # budget gate first
        out = await stack.select("which wood finishes last outdoors", k=3, min_relevance=0.9, gates=[capped])
        assert out.selected_ids == () and out.no_fill_reason == "all_capped"

        out = await stack.select("quantum chromodynamics lattice simulations", k=3)
        assert out.selected_ids == () and out.no_fill_reason == "no_relevant_campaign"
        await stack.redis.aclose()

    asyncio.run(scenario())


def test_catalog_follows_changes_and_vectors_are_computed_once(
    redis_server: RedisServerProcess, embedder: MiniLmEmbedder
) -> None:
    """Invariants: a campaign's vector is computed by one process and read by the others (same model
    id and text: no second embedding); a change of its text recomputes it once; a create, a pause and
    an archive are seen by the next refresh (change log; an archive deletes the vector); a trimmed log
    falls back to a full load."""

    async def scenario() -> None:
        first = Stack(redis_server.url, CountingEmbedder(embedder), Settings(selection_sensitive=False))
        second = Stack(redis_server.url, CountingEmbedder(embedder), Settings(selection_sensitive=False))
        await first.store.create(_body("bikes", "VeloShop", "road bikes and cycling gear"), "velo")
        await first.start()
        await second.start()
        assert first.embedder.texts[0] == "VeloShop: road bikes and cycling gear"  # then the taxonomy
        assert "VeloShop: road bikes and cycling gear" not in second.embedder.texts
        fields = await first.redis.hgetall(vector_key("bikes"))
        assert (
            fields["model_id"] == embedder.model_id
            and len(fields["vec"].encode("utf-8", "surrogateescape")) == 1536
        )

        assert (await second.select("which road bike should I buy", k=1)).selected_ids == ("bikes",)
        current = await first.store.get("bikes")
        assert current is not None
        patch = CampaignPatch.model_validate({"description": "surfboards and wetsuits", "status": "paused"})
        await first.store.update("bikes", patch, current.version)
        await second.catalog.refresh()
        out = await second.select("which surfboard should I buy", k=1)
        assert out.selected_ids == () and out.report.considered[0].reason == "paused"
        assert second.embedder.texts.count("VeloShop: surfboards and wetsuits") == 1
        await first.catalog.refresh()
        assert "VeloShop: surfboards and wetsuits" not in first.embedder.texts  # read, not recomputed

        await first.store.create(_body("waves", "WaveRiders", "surf lessons and surf camps"), "waves")
        await second.store.archive("bikes", None)
        await second.redis.xtrim("mosaic:campaign:changes", maxlen=0)  # the log lost its entries
        await second.store.create(_body("late", "Late", "surf wax"), "late")
        await second.catalog.refresh()
        assert set(second.catalog.entries) == {"waves", "late"}
        await first.store.archive("waves", None)  # seen in the log by `second`: its vector is deleted
        await second.catalog.refresh()
        assert await first.redis.exists(vector_key("waves")) == 0 and "waves" not in second.catalog.entries
        await first.redis.aclose()
        await second.redis.aclose()

    asyncio.run(scenario())


def test_embedder_is_deterministic_and_normalised(embedder: MiniLmEmbedder) -> None:
    """Invariant: the same text gives the same bits alone or in a batch; rows are unit float32; the
    model id names the archive's content hash."""
    alone = embedder.embed(["guitar lessons for beginners"])
    batch = embedder.embed(
        ["a much longer text about something else entirely", "guitar lessons for beginners"]
    )
    assert alone.dtype == np.float32 and alone.shape == (1, 384)
    assert np.array_equal(alone[0], batch[1])
    assert abs(float(np.linalg.norm(batch[0])) - 1.0) < 1e-5
    assert embedder.model_id.startswith("all-MiniLM-L6-v2@") and len(embedder.model_id) == 17 + 12


def test_hnsw_recall_against_exact_search(embedder: MiniLmEmbedder) -> None:
    """Invariant: the faiss HNSW index finds ≥ 95% of the exact top-10 on realistic vectors (the 80
    paper advertisers' embeddings, each with 100 noisy copies), and after changes (a delta and
    tombstones on the base) answers as an exact index over the same vectors."""
    texts = [f"{ad['name']}: {ad['description']}" for i in _instances() for ad in i["advertisers"]]
    base = embedder.embed(texts)
    rng = np.random.default_rng(3)
    noisy = np.repeat(base, 100, axis=0) + rng.normal(0, 0.04, (len(base) * 100, 384)).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    vectors = {f"c{i}": v for i, v in enumerate(noisy)}
    ann, exact = CampaignIndex(384, ann_min=1000), CampaignIndex(384, ann_min=10**9)
    ann.replace_all(vectors)
    exact.replace_all(vectors)
    assert ann.uses_ann and not exact.uses_ann
    queries = embedder.embed([i["query"] for i in _instances()])
    recall = np.mean(
        [len({c for c, _ in ann.search(q, 10)} & {c for c, _ in exact.search(q, 10)}) / 10 for q in queries]
    )
    print(f"hnsw recall@10 = {recall:.3f}")
    assert recall >= 0.95
    changes = {"c0": -noisy[0], "new": queries[0]}
    for index in (ann, exact):
        index.update(changes, {"c1", "c2"})
    for index in (ann, exact):
        ((found, cosine),) = index.search(queries[0], 1)
        assert found == "new" and cosine == pytest.approx(1.0, abs=1e-5)
    assert not {"c1", "c2"} & {c for c, _ in ann.search(noisy[1], 50)}
