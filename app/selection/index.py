"""The in-process index of campaign vectors: exact search, or faiss HNSW past `ann_min` campaigns.

`CampaignIndex.search(query_vec, n)` answers the n campaigns of largest cosine (vectors are unit rows,
so inner product). Below `ann_min` campaigns it is exact: one matrix-vector product and an
argpartition. From `ann_min` on it is faiss's ``IndexHNSWFlat`` (inner product; faiss: a well-kept
library, HNSW needs no training, adds vectors incrementally and searches one query in well under a
millisecond at 100k; hnswlib was the alternative, faiss also gives IVF/PQ should the registry outgrow
memory). HNSW removes nothing, so a change after a build goes to a small exact *delta* (new and changed
vectors, searched exactly) and a *tombstone* set (base rows no longer current, filtered out); the base
is rebuilt once the delta passes `rebuild_at` rows. Every state is an immutable `_Snapshot` swapped in
one assignment: a search reads one snapshot from start to end, whatever a refresh does meanwhile (safe
from several threads; writers take a lock). Imports numpy and (from `ann_min` on) faiss; see
docs/DESIGN.md § Selection.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# recall@10 0.965 against exact on the bench's 100k (1k real texts × 100 noisy copies: the hard case of
# near-ties), 0.8 ms a query; M 32 / efConstruction 80 / efSearch 64 gave 0.69 (docs/results/selection.txt).
HNSW_M = 48
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 256


def top_n(matrix: np.ndarray, query_vec: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cosines) of the n largest inner products, largest first (exact). The products are numpy's
    own single-threaded loop (einsum), not BLAS: a multi-threaded BLAS matvec on a busy 2-core machine
    took 10 ms at 10k rows against 0.7 ms (bench/selection.py)."""
    if matrix.shape[0] == 0 or n <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    scores = np.einsum("ij,j->i", matrix, query_vec)
    if n < scores.shape[0]:
        rows = np.argpartition(-scores, n - 1)[:n]
        rows = rows[np.argsort(-scores[rows], kind="stable")]
    else:
        rows = np.argsort(-scores, kind="stable")
    return rows, scores[rows]


def _empty(dim: int) -> np.ndarray:
    return np.empty((0, dim), dtype=np.float32)


@dataclass(frozen=True)
class _Snapshot:
    """A base (exact matrix, or the same rows in HNSW), a delta searched exactly, tombstoned base ids."""

    ids: tuple[str, ...]
    matrix: np.ndarray
    ann: Any = None  # faiss.IndexHNSWFlat over `matrix`, or None (exact)
    delta_ids: tuple[str, ...] = ()
    delta: np.ndarray | None = None
    tombstones: frozenset[str] = frozenset()
    base_ids: frozenset[str] = field(default_factory=frozenset)


def _hnsw(matrix: np.ndarray) -> Any:
    import faiss  # only past ann_min: a small registry never loads it

    index = faiss.IndexHNSWFlat(matrix.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(np.ascontiguousarray(matrix, dtype=np.float32))
    return index


class CampaignIndex:
    """Campaign id → unit vector, searchable by cosine (module docstring)."""

    def __init__(self, dim: int, ann_min: int, rebuild_at: int = 256) -> None:
        self.dim = dim
        self.ann_min = ann_min
        self.rebuild_at = rebuild_at
        self._snapshot = _Snapshot(ids=(), matrix=_empty(dim))
        self._vectors: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._builder: threading.Thread | None = None
        self._changed_during_build: set[str] = set()

    @property
    def uses_ann(self) -> bool:
        return self._snapshot.ann is not None

    def __len__(self) -> int:
        return len(self._vectors)

    def vector(self, campaign_id: str) -> np.ndarray | None:
        return self._vectors.get(campaign_id)

    def ids(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._vectors)

    def replace_all(self, vectors: Mapping[str, np.ndarray]) -> None:
        """The index holds exactly `vectors` (a full build, in the caller's thread)."""
        with self._lock:
            self._vectors = {cid: np.asarray(v, dtype=np.float32) for cid, v in vectors.items()}
            self._snapshot = self._built(dict(self._vectors))

    def update(self, upserts: Mapping[str, np.ndarray], removals: set[str]) -> None:
        """Add or replace `upserts`, drop `removals`: at once as delta and tombstones on the base; the
        base is rebuilt once the delta reaches `rebuild_at` (or the size crosses `ann_min`): exact bases
        at once, HNSW ones in a background thread while searches go on with the delta."""
        with self._lock:
            for cid in removals:
                self._vectors.pop(cid, None)
            for cid, vector in upserts.items():
                self._vectors[cid] = np.asarray(vector, dtype=np.float32)
            changed = set(upserts) | removals
            if self._builder is not None:
                self._changed_during_build |= changed
            old = self._snapshot
            delta_ids = (set(old.delta_ids) | changed) & self._vectors.keys()
            self._snapshot = self._with_delta(old, delta_ids, old.tombstones | (changed & old.base_ids))
            wants_ann = len(self._vectors) >= self.ann_min
            if len(delta_ids) < self.rebuild_at and wants_ann == (old.ann is not None):
                return
            if not wants_ann:
                self._snapshot = self._built(dict(self._vectors))
            elif self._builder is None:
                self._changed_during_build = set()
                self._builder = threading.Thread(
                    target=self._rebuild,
                    args=(dict(self._vectors),),
                    name="campaign-index-build",
                    daemon=True,
                )
                self._builder.start()

    def _rebuild(self, vectors: dict[str, np.ndarray]) -> None:
        """Build a new base in the background; changes made meanwhile stay as delta and tombstones."""
        try:
            base = self._built(vectors)
            with self._lock:
                changed = self._changed_during_build
                delta_ids = changed & self._vectors.keys()
                self._snapshot = self._with_delta(base, delta_ids, frozenset(changed & base.base_ids))
        finally:
            with self._lock:
                self._builder = None

    def wait_for_build(self, timeout_s: float | None = None) -> None:
        """Block until a background build (if any) has been swapped in (tests, the bench)."""
        builder = self._builder
        if builder is not None:
            builder.join(timeout_s)

    def _with_delta(self, base: _Snapshot, delta_ids: set[str], tombstones: frozenset[str]) -> _Snapshot:
        ordered = tuple(sorted(delta_ids))
        delta = np.stack([self._vectors[cid] for cid in ordered]) if ordered else _empty(self.dim)
        return _Snapshot(base.ids, base.matrix, base.ann, ordered, delta, tombstones, base.base_ids)

    def _built(self, vectors: dict[str, np.ndarray]) -> _Snapshot:
        ids = tuple(sorted(vectors))
        matrix = np.stack([vectors[cid] for cid in ids]) if ids else _empty(self.dim)
        if len(ids) < self.ann_min:
            return _Snapshot(ids=ids, matrix=matrix, base_ids=frozenset(ids))
        # faiss keeps its own copy of the rows: the matrix is not kept beside it (150 MB at 100k)
        return _Snapshot(ids=ids, matrix=_empty(self.dim), ann=_hnsw(matrix), base_ids=frozenset(ids))

    def search(self, query_vec: np.ndarray, n: int) -> list[tuple[str, float]]:
        """The n campaigns most similar to the query: (id, cosine), most similar first."""
        snap = self._snapshot  # one snapshot for the whole search
        query = np.asarray(query_vec, dtype=np.float32)
        found: dict[str, float] = {}
        if snap.ann is not None:
            found.update(self._ann_search(snap, query, n + len(snap.tombstones)))
        else:
            rows, scores = top_n(snap.matrix, query, n + len(snap.tombstones))
            found.update(
                (snap.ids[r], float(s))
                for r, s in zip(rows, scores, strict=True)
                if snap.ids[r] not in snap.tombstones
            )
        rows, scores = top_n(snap.delta if snap.delta is not None else _empty(self.dim), query, n)
        found.update((snap.delta_ids[r], float(s)) for r, s in zip(rows, scores, strict=True))
        ranked = sorted(found.items(), key=lambda item: (-item[1], item[0]))
        return ranked[:n]

    @staticmethod
    def _ann_search(snap: _Snapshot, query: np.ndarray, n: int) -> list[tuple[str, float]]:
        import faiss

        depth = min(n, len(snap.ids))
        params = faiss.SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH, depth))  # type: ignore[attr-defined]
        scores, rows = snap.ann.search(query.reshape(1, -1), depth, params=params)
        return [
            (snap.ids[r], float(s))
            for r, s in zip(rows[0], scores[0], strict=True)
            if r >= 0 and snap.ids[r] not in snap.tombstones
        ]

    def similarity(self, campaign_id: str, query_vec: np.ndarray) -> float:
        """The cosine of one campaign (a keyword hit outside the searched depth); -1 when unknown."""
        vector = self._vectors.get(campaign_id)
        return -1.0 if vector is None else float(np.dot(vector, np.asarray(query_vec, dtype=np.float32)))
