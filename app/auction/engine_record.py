"""The record's `engine` from a scored candidate set: which engines drew and scored what (issue 35).

Job: `engine_record(scored)` → `app.contract.engine.EngineRecord` (pure, no I/O): the identities of
the engines that took part, in order of first use, each generation request (engine, share, the
candidates it drew) and each scoring request (engine, the sequences it scored). Imports the
sampler's `ScoredCandidates` and `app.contract`; see docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

from app.auction.sampler import ScoredCandidates
from app.contract.engine import EngineIdentity, EngineRecord


def engine_record(scored: ScoredCandidates) -> EngineRecord:
    """Which engine drew and scored each part of `scored` (see the module docs)."""
    order: dict[str, int] = {}

    def index(engine_id: str) -> int:
        return order.setdefault(engine_id, len(order))

    candidates = scored.candidate_set.candidates
    sources = scored.candidate_set.sources
    generated: list[list[int]] = []
    for j, candidate in enumerate(candidates):
        engine = index(candidate.engine_id)
        last = generated[-1] if generated else None
        same_request = j > 0 and sources[j] == sources[j - 1] and candidate.share == candidates[j - 1].share
        if last is not None and same_request and last[0] == engine:
            last[3] = j + 1
        else:
            generated.append([engine, candidate.share, j, j + 1])
    scored_by = [[index(chunk.engine_id), chunk.start, chunk.stop] for chunk in scored.score_chunks]
    identities = [
        EngineIdentity(id=engine_id, identity=scored.identities.get(engine_id, {"unread": "not seen"}))
        for engine_id in order
    ]
    return EngineRecord(
        identities=identities, max_tokens=scored.max_tokens, generated=generated, scored=scored_by
    )
