"""Campaign selection's cost and quality (issue 34): selection after the embedding at 1k, 10k and 100k
campaigns (exact and faiss HNSW), the query's embedding on its own, HNSW recall@k against exact search,
and the thresholds' tuning on bench/selection_tuning.json.

Campaigns: 1k generated texts ("<brand>: <verb> <product> <audience>", 60 products across the
taxonomy's categories) embedded with the real all-MiniLM-L6-v2; 10k and 100k repeat those 1k vectors
with Gaussian noise (σ = 0.03 per dimension, re-normalised: cosine ≈ 0.86 to its source), so the
geometry stays that of real texts (clusters of paraphrases), not of random vectors. Queries: the tuning
set's ordinary and relevance queries and the paper's 40 (embedded once). Selection = `Selector.
select_embedded` (taxonomy, sensitive check, index, keyword postings, rules, one per owner, top 3),
without the budget read (one Redis round trip for the first 2k candidates, on top).

    .venv/bin/python bench/selection.py                     # writes the table; ~5 min on 2 cores
    .venv/bin/python bench/selection.py --sizes 1000 --queries 40

Last line: name=value pairs (p50/p99 ms per size and mode, embed_p50_ms, recall, build seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

TUNING = Path(__file__).with_name("selection_tuning.json")
INSTANCES = common.REPO.parent / "shared" / "data" / "instances.jsonl"
PRODUCTS = (
    "guitars and ukuleles",
    "piano lessons",
    "running shoes",
    "yoga mats",
    "protein snacks",
    "meal kits",
    "organic coffee beans",
    "kitchen knives",
    "cast iron cookware",
    "camping tents",
    "hiking boots",
    "road bikes",
    "electric scooters",
    "used cars",
    "car insurance",
    "tyres and brakes",
    "laptops",
    "smartphones",
    "noise-cancelling headphones",
    "cloud backup",
    "password managers",
    "web hosting",
    "accounting software",
    "project management tools",
    "video conferencing",
    "resume writing",
    "job boards for developers",
    "language courses",
    "coding bootcamps",
    "math tutoring",
    "sofas",
    "mattresses",
    "smart thermostats",
    "solar panels",
    "garden tools",
    "vegetable seeds",
    "house plants",
    "dog food",
    "cat toys",
    "pet insurance",
    "flights to Europe",
    "eco-friendly hotels",
    "travel backpacks",
    "city tours",
    "index funds",
    "retirement planning",
    "credit cards",
    "mortgages",
    "wedding dresses",
    "handmade jewelry",
    "skin care serums",
    "organic cosmetics",
    "sneakers",
    "winter jackets",
    "board games",
    "photo editing software",
    "mirrorless cameras",
    "podcast microphones",
    "home insulation",
    "air purifiers",
)
VERBS = ("selling", "offering", "providing", "renting out", "reviewing")
AUDIENCES = (
    "for beginners",
    "for small businesses",
    "for families",
    "online",
    "with free delivery",
    "at discount prices",
    "for professionals",
    "in your city",
    "for students",
    "with expert advice",
)
SYLLABLES = ("zo", "ra", "ti", "ven", "lo", "mar", "ki", "sta", "pex", "nu", "dor", "fi")


def generated_texts(count: int, rng: np.random.Generator) -> list[str]:
    """`count` distinct campaign texts: a made-up brand and a product offer (seeded)."""
    combos = [(v, p, a) for p in PRODUCTS for v in VERBS for a in AUDIENCES]
    chosen = rng.choice(len(combos), size=count, replace=False)
    texts = []
    for n, index in enumerate(chosen):
        verb, product, audience = combos[index]
        brand = "".join(rng.choice(SYLLABLES, size=3)).capitalize() + str(n % 10)
        texts.append(f"{brand}: {verb} {product} {audience}")
    return texts


def queries(limit: int) -> list[str]:
    tuning = json.loads(TUNING.read_text())
    texts = list(tuning["ordinary"]) + [item["query"] for item in tuning["relevance"]]
    if INSTANCES.is_file():
        texts += [json.loads(line)["query"] for line in INSTANCES.read_text().splitlines() if line.strip()]
    return texts[:limit]


def timed_embeddings(embedder: Any, texts: list[str]) -> tuple[np.ndarray, list[float]]:
    rows, times = [], []
    for text in texts:
        started = time.perf_counter()
        rows.append(embedder.embed([text])[0])
        times.append((time.perf_counter() - started) * 1000)
    return np.stack(rows), times


def scaled(base: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` vectors: the base ones, then noisy copies of them (σ = 0.03, unit rows)."""
    reps = -(-size // len(base))
    out = np.tile(base, (reps, 1))[:size].copy()
    noise = rng.normal(0.0, 0.03, (size - len(base), base.shape[1])).astype(np.float32)
    out[len(base) :] += noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def build_selector(embedder: Any, vectors: np.ndarray, ann_min: int, settings: Any) -> tuple[Any, float]:
    """A Selector over an in-memory catalog of `vectors` (3 campaigns per owner); its build seconds."""
    import redis.asyncio as aioredis

    from app.campaigns.store import CampaignStore
    from app.selection.index import CampaignIndex
    from app.selection.registry_vectors import CampaignCatalog, CatalogEntry, VectorStore
    from app.selection.selector import Selector

    client = aioredis.Redis()  # never connected: the catalog is installed directly
    catalog = CampaignCatalog(
        CampaignStore(client, settings), VectorStore(client, embedder), CampaignIndex(384, ann_min)
    )
    entries = {
        f"c{i}": CatalogEntry(
            f"c{i}",
            f"o{i // 3}",
            "active",
            None,
            None,
            (),
            (),
            frozenset(),
            frozenset(),
            None,
            10**9,
            "UTC",
            None,
        )
        for i in range(len(vectors))
    }
    started = time.perf_counter()
    catalog.install(entries, {cid: vectors[i] for i, cid in enumerate(entries)}, None)
    build_s = time.perf_counter() - started
    return asyncio.run(Selector.build(embedder, catalog, settings)), build_s


def time_selection(selector: Any, texts: list[str], vecs: np.ndarray, repeats: int) -> list[float]:
    from app.selection.selector import SelectionLimits

    async def run() -> list[float]:
        times = []
        for _ in range(repeats):
            for text, vec in zip(texts, vecs, strict=True):
                started = time.perf_counter()
                await selector.select_embedded(text, vec, 3, SelectionLimits())
                times.append((time.perf_counter() - started) * 1000)
        return times

    return asyncio.run(run())


def recall_at(selector_ann: Any, selector_exact: Any, vecs: np.ndarray, k: int) -> float:
    ann, exact = selector_ann.catalog.index, selector_exact.catalog.index
    return float(
        np.mean(
            [len({c for c, _ in ann.search(q, k)} & {c for c, _ in exact.search(q, k)}) / k for q in vecs]
        )
    )


def tuning_report(embedder: Any, settings: Any, emit: Any) -> dict[str, str]:
    """The sweep the thresholds were chosen from (bench/selection_tuning.json only)."""
    from app.selection.taxonomy import category_vectors, phrase_table, sensitive_match

    data = json.loads(TUNING.read_text())
    ids, owners, phrases = phrase_table()
    cats = category_vectors(ids, owners, embedder.embed(phrases))
    sens, ordinary = embedder.embed(data["sensitive"]), embedder.embed(data["ordinary"])
    sensitive_ids = settings.selection_sensitive_categories
    rows = []
    for threshold in (0.26, 0.28, 0.30, 0.32, 0.34, 0.38, 0.42):
        flagged = sum(sensitive_match(v, cats, sensitive_ids, threshold) is not None for v in sens)
        wrong = sum(sensitive_match(v, cats, sensitive_ids, threshold) is not None for v in ordinary)
        rows.append([f"{threshold:.2f}", f"{flagged}/{len(sens)}", f"{wrong}/{len(ordinary)}"])
    emit("")
    common.text_table(emit, ["sensitive threshold", "sensitive flagged", "ordinary flagged"], rows)
    relevant, irrelevant = [], []
    items = data["relevance"]
    query_vecs = embedder.embed([item["query"] for item in items])
    for i, item in enumerate(items):
        ads = embedder.embed(item["relevant"])
        relevant += list(ads @ query_vecs[i])
        others = np.delete(query_vecs, i, axis=0)
        irrelevant += list((others @ ads.T).ravel())
    rows = [
        [f"{t:.2f}", f"{np.mean(np.array(relevant) >= t):.3f}", f"{np.mean(np.array(irrelevant) >= t):.3f}"]
        for t in (0.15, 0.20, 0.25, 0.30, 0.35)
    ]
    emit("")
    common.text_table(emit, ["min relevance", "relevant kept", "other queries' ads admitted"], rows)
    return {
        "tuned_sensitive_threshold": f"{settings.selection_sensitive_threshold}",
        "tuned_min_relevance": f"{settings.selection_min_relevance}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,30000,100000")
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the embedder (0: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    import torch

    from app.selection.embedder import MiniLmEmbedder
    from app.settings import Settings

    if args.threads:
        torch.set_num_threads(args.threads)
    lines: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    settings = Settings(selection_sensitive=False)
    rng = np.random.default_rng(0)
    embedder = MiniLmEmbedder.load()
    texts = queries(args.queries)
    query_vecs, embed_ms = timed_embeddings(embedder, texts)
    base, _ = timed_embeddings(embedder, generated_texts(1000, rng))
    pairs = {
        "embed_p50_ms": f"{common.percentile(embed_ms, 0.5):.2f}",
        "embed_p99_ms": f"{common.percentile(embed_ms, 0.99):.2f}",
    }
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        vectors = base[:size] if size <= len(base) else scaled(base, size, rng)
        exact, _ = build_selector(embedder, vectors, 10**9, settings)
        ann, build_s = build_selector(embedder, vectors, 1, settings)
        for mode, selector in (("exact", exact), ("hnsw", ann)):
            times = time_selection(selector, texts, query_vecs, args.repeats)
            p50, p99 = common.percentile(times, 0.5), common.percentile(times, 0.99)
            pairs[f"select_{mode}_{size}_p50_ms"], pairs[f"select_{mode}_{size}_p99_ms"] = (
                f"{p50:.3f}",
                f"{p99:.3f}",
            )
            recall = recall_at(ann, exact, query_vecs, 10) if mode == "hnsw" else 1.0
            recall3 = recall_at(ann, exact, query_vecs, 3) if mode == "hnsw" else 1.0
            build = f"{build_s:.1f}" if mode == "hnsw" else "-"
            rows.append(
                [f"{size}", mode, f"{p50:.3f}", f"{p99:.3f}", f"{recall3:.3f}", f"{recall:.3f}", build]
            )
            if mode == "hnsw":
                pairs[f"recall3_{size}"], pairs[f"recall10_{size}"] = f"{recall3:.3f}", f"{recall:.3f}"
                pairs[f"hnsw_build_s_{size}"] = f"{build_s:.1f}"
        del exact, ann
    emit(
        f"# query embedding alone (all-MiniLM-L6-v2, {torch.get_num_threads()} torch thread(s), "
        f"{len(texts)} queries): "
        f"p50 {pairs['embed_p50_ms']} ms, p99 {pairs['embed_p99_ms']} ms"
    )
    header = ["campaigns", "index", "select p50 ms", "select p99 ms", "recall@3", "recall@10", "build s"]
    common.text_table(emit, header, rows)
    pairs.update(tuning_report(embedder, Settings(), emit))
    emit(" ".join(f"{name}={value}" for name, value in pairs.items()))
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
