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

HNSW_M = 32  # links per node: recall ≥ 0.99 at efSearch 64 on the bench's 100k (docs/results/selection.txt)
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64


def top_n(matrix: np.ndarray, query_vec: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cosines) of the n largest inner products, largest first (exact)."""
    if matrix.shape[0] == 0 or n <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    scores = matrix @ query_vec
    if n < scores.shape[0]:
        rows = np.argpartition(-scores, n - 1)[:n]
        rows = rows[np.argsort(-scores[rows], kind="stable")]
    else:
        rows = np.argsort(-scores, kind="stable")
    return rows, scores[rows]


@dataclass(frozen=True)
class _Snapshot:
    ids: tuple[str, ...] = ()
    matrix: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))
    ann: Any = None  # faiss.IndexHNSWFlat over `matrix`, or None (exact)
    delta_ids: tuple[str, ...] = ()
    delta: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))
    tombstones: frozenset[str] = frozenset()

    @property
    def size(self) -> int:
        return len(self.ids) - len(self.tombstones & set(self.ids)) + len(self.delta_ids)


def _hnsw(matrix: np.ndarray) -> Any:
    import faiss  # only past ann_min: a small registry never loads it

    index = faiss.IndexHNSWFlat(matrix.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(np.ascontiguousarray(matrix, dtype=np.float32))
    return index


class CampaignIndex:
    """Campaign id → unit vector, searchable by cosine (module docstring)."""

    def __init__(self, dim: int, ann_min: int, rebuild_at: int = 1024) -> None:
        self.dim = dim
        self.ann_min = ann_min
        self.rebuild_at = rebuild_at
        self._snapshot = _Snapshot(
            matrix=np.empty((0, dim), np.float32), delta=np.empty((0, dim), np.float32)
        )
        self._vectors: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def uses_ann(self) -> bool:
        return self._snapshot.ann is not None

    def __len__(self) -> int:
        return len(self._vectors)

    def replace_all(self, vectors: Mapping[str, np.ndarray]) -> None:
        """The index holds exactly `vectors` (a full build)."""
        with self._lock:
            self._vectors = {cid: np.asarray(v, dtype=np.float32) for cid, v in vectors.items()}
            self._snapshot = self._build()

    def update(self, upserts: Mapping[str, np.ndarray], removals: set[str]) -> None:
        """Add or replace `upserts`, drop `removals`: a cheap delta on an HNSW base, else a rebuild."""
        with self._lock:
            for cid in removals:
                self._vectors.pop(cid, None)
            for cid, vector in upserts.items():
                self._vectors[cid] = np.asarray(vector, dtype=np.float32)
            old = self._snapshot
            changed = set(upserts) | removals
            delta_ids = tuple(sorted((set(old.delta_ids) - removals) | set(upserts)))
            if old.ann is None or len(delta_ids) >= self.rebuild_at or len(self._vectors) < self.ann_min:
                self._snapshot = self._build()
                return
            delta = np.stack([self._vectors[cid] for cid in delta_ids]) if delta_ids else old.delta[:0]
            self._snapshot = _Snapshot(
                ids=old.ids,
                matrix=old.matrix,
                ann=old.ann,
                delta_ids=delta_ids,
                delta=delta,
                tombstones=old.tombstones | (changed & set(old.ids)),
            )

    def _build(self) -> _Snapshot:
        ids = tuple(sorted(self._vectors))
        matrix = (
            np.stack([self._vectors[cid] for cid in ids])
            if ids
            else np.empty((0, self.dim), dtype=np.float32)
        )
        ann = _hnsw(matrix) if len(ids) >= self.ann_min else None
        return _Snapshot(ids=ids, matrix=matrix, ann=ann, delta=np.empty((0, self.dim), np.float32))

    def search(self, query_vec: np.ndarray, n: int) -> list[tuple[str, float]]:
        """The n campaigns most similar to the query: (id, cosine), most similar first."""
        snap = self._snapshot  # one snapshot for the whole search
        query = np.asarray(query_vec, dtype=np.float32)
        found: dict[str, float] = {}
        if snap.ann is not None:
            found.update(self._ann_search(snap, query, n + len(snap.tombstones)))
        else:
            rows, scores = top_n(snap.matrix, query, n)
            found.update((snap.ids[r], float(s)) for r, s in zip(rows, scores, strict=True))
        rows, scores = top_n(snap.delta, query, n)
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
        return -1.0 if vector is None else float(vector @ np.asarray(query_vec, dtype=np.float32))
