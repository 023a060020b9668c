"""An auction's answer rebuilt from its stored record: Idempotency-Key outcomes by reference (issue 36).

Job: `answer_from_record(text, candidates)` turns a record's exact JSON text (as Redis or the PostgreSQL
archive holds it) into the answer `POST /auction` gave: the record is the answer plus the request, the
candidate table, the budgets, the engine and the attestation (`app.auction.result.auction_record`), so
the answer is its `AuctionResponse` fields (the candidate table only where the request asked for it)
dumped as the route dumps it (`exclude_none`). `RecordAnswers` is the idempotency store's
`AnswerSource` (app.ledger.idempotency): it reads the record through `RecordReader` (Redis, then the
archive) and rebuilds the answer. `outcome_write` decides how a stored auction's outcome is kept.

Invariant (byte-for-byte replays): a reference is written only when the record's text, the one this same
final write stores, rebuilds the first answer byte for byte (checked here, before the write); otherwise
the answer is copied as before. The reference also carries the answer's digest, which the replay checks,
so a replay is the first answer's bytes or a 500 naming the cause, never other bytes.
Imports app.contract, app.archive.reader and app.ledger.idempotency. See docs/DESIGN.md § Archive.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from app.archive.reader import RecordReader
from app.contract.result import AuctionResponse
from app.ledger.idempotency import (
    AnswerRef,
    IdempotencyClaim,
    IdempotencyStore,
    IdempotencyWrite,
    answer_digest,
)

logger = logging.getLogger(__name__)
_ANSWER_FIELDS = tuple(name for name in AuctionResponse.model_fields if name != "candidates")


def answer_from_record(text: str, candidates: bool) -> str:
    """The answer's JSON text rebuilt from the record's text (with the candidate table if `candidates`)."""
    record: dict[str, Any] = json.loads(text)
    fields = {name: record[name] for name in _ANSWER_FIELDS if name in record}
    if candidates:
        fields["candidates"] = record.get("candidates")
    return AuctionResponse.model_validate(fields).model_dump_json(exclude_none=True)


class RecordAnswers:
    """Answers rebuilt from the records `records` reads (Redis, then the archive)."""

    def __init__(self, records: RecordReader) -> None:
        self.records = records

    async def answer(self, ref: AnswerRef) -> str | None:
        text = await self.records.raw(ref.auction_id)
        return None if text is None else answer_from_record(text, ref.candidates)


def outcome_write(
    store: IdempotencyStore, claim: IdempotencyClaim, answer: AuctionResponse, body: str, record_text: str
) -> IdempotencyWrite:
    """The key's done value for a stored auction: by reference to its record when the store keeps
    outcomes by reference (ARCHIVE_DSN) and `record_text` rebuilds `body` exactly, else a copy."""
    if store.by_reference:
        candidates = answer.candidates is not None
        if answer_from_record(record_text, candidates) == body:
            ref = AnswerRef(answer.auction_id, candidates, answer_digest(body))
            return store.write_ref_for(claim, 200, ref)
        logger.warning("auction %s: its record does not rebuild its answer: answer copied", answer.auction_id)
    return store.write_for(claim, 200, body, answer.auction_id)
