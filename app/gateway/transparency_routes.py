"""The transparency log's HTTP routes: the latest signed tree head, consistency and inclusion proofs.

`GET /transparency/head`, `GET /transparency/consistency?first=&second=` and
`GET /auctions/{id}/proof` over the gateway's `TransparencyLog` (app.transparency.sequencer, on
``app.state.transparency``; started by app.gateway.app). Auth as the records: any key reads the heads
and consistency proofs (they hold only sizes and hashes); an advertiser key gets the proof of an
auction she took part in, others answer 404 as if absent. A proof of an auction not yet covered by a
head waits up to TRANSPARENCY_PROOF_WAIT_S for the next head (the sequencer signs at most one per
TRANSPARENCY_HEAD_INTERVAL_S: a caller cannot make the service sign), then answers 409 with
Retry-After. Imports FastAPI, pydantic, app.auction.run_control (the record's key), app.gateway
(security, openapi) and app.transparency. See docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from app.archive.reader import RecordReader
from app.gateway.deps import RecordsDep
from app.gateway.openapi import error_responses
from app.gateway.security import Principal, require_api_key
from app.transparency.heads import HEAD_TYPE, SignedTreeHead
from app.transparency.sequencer import LogTamperedError, TransparencyLog

router = APIRouter(tags=["transparency"])

POLL_S = 0.1


class TreeHead(BaseModel):
    """A signed tree head (RFC 9162 §4.10 in this service's JSON): Ed25519 over the RFC 8785 canonical
    JSON of every field but `signature`, with the key `kid` of `/.well-known/mosaic-keys`."""

    type: str = Field(HEAD_TYPE, description="Separates a head's signature from a statement's.")
    tree_size: int = Field(description="Leaves (auctions) the head covers.")
    root_hash: str = Field(description="RFC 9162 §2.1 Merkle tree hash of those leaves, 64 hex.")
    timestamp_ms: int = Field(description="When it was signed (ms since the epoch; never decreases).")
    kid: str = Field(description="The signing key's id.")
    signature: str = Field(description="Ed25519 signature, base64url without padding.")


class InclusionProof(BaseModel):
    """An auction's leaf and its RFC 9162 §2.1.3 audit path to the head's root."""

    auction_id: str
    leaf_index: int = Field(description="The auction's leaf, counted from 0.")
    leaf_hash: str = Field(description="SHA-256(0x00 || canonical statement), 64 hex.")
    tree_size: int = Field(description="The head's size (the path is for this tree).")
    audit_path: list[str] = Field(description="Sibling hashes bottom-up, 64 hex each.")
    head: TreeHead


class ConsistencyProof(BaseModel):
    """RFC 9162 §2.1.4 PROOF(first, D[second]): the tree of `second` leaves extends that of `first`."""

    first: int
    second: int
    consistency_path: list[str] = Field(description="64 hex each (empty when first == second).")


async def _log(request: Request) -> TransparencyLog:
    log: TransparencyLog | None = getattr(request.app.state, "transparency", None)
    if log is None:
        raise HTTPException(status_code=503, detail="the transparency log is not running (gateway starting)")
    return log


LogDep = Annotated[TransparencyLog, Depends(_log)]


def _checked(error: LogTamperedError) -> HTTPException:
    return HTTPException(status_code=503, detail=f"the transparency log is halted ({error.kind}): {error}")


async def _latest(log: TransparencyLog) -> SignedTreeHead:
    head = await log.store.latest_head()
    if head is None:
        raise HTTPException(  # 404: nothing to serve yet (a signing gateway signs one within a period)
            status_code=404,
            detail="no tree head signed yet (a gateway with a signing key signs one within "
            "TRANSPARENCY_HEAD_INTERVAL_S of its start)",
            headers={"Retry-After": str(math.ceil(log.settings.transparency_head_interval_s))},
        )
    return head


@router.get(
    "/transparency/head",
    response_model=TreeHead,
    summary="The transparency log's latest signed tree head",
    responses=error_responses(401, 404, 503),
)
async def get_tree_head(*, _principal: Principal = Depends(require_api_key), log: LogDep) -> dict[str, Any]:
    return (await _latest(log)).as_dict()


@router.get(
    "/transparency/consistency",
    response_model=ConsistencyProof,
    summary="A consistency proof between two tree sizes (the later one at most the latest head's)",
    responses=error_responses(401, 404, 409, 422, 503),
)
async def get_consistency_proof(
    *,
    _principal: Principal = Depends(require_api_key),
    log: LogDep,
    first: Annotated[int, Query(ge=1, le=2**53 - 1, description="The older head's tree_size.")],
    second: Annotated[int, Query(ge=1, le=2**53 - 1, description="The newer head's tree_size.")],
) -> dict[str, Any]:
    head = await _latest(log)
    if first > second:  # a rule between two fields: the schema cannot say it
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "first"), "msg": f"must not exceed second ({second})",
              "input": first}]
        )  # fmt: skip
    if second > head.tree_size:  # a fact of the log's state, not of the request: 409, as a proof's
        raise HTTPException(
            status_code=409,
            detail=f"second ({second}) exceeds the latest signed tree_size ({head.tree_size}): no head "
            "that large is signed yet",
        )
    try:
        await log.at_least(head)
    except LogTamperedError as error:
        raise _checked(error) from error
    path = log.consistency_path(first, second)
    return {"first": first, "second": second, "consistency_path": [digest.hex() for digest in path]}


async def _may_read(records: RecordReader, auction_id: str, principal: Principal) -> None:
    """404 unless the caller may read this auction: an advertiser key only the auctions she took part in
    (her record must still be stored: in Redis, AUDIT_TTL_S, or archived); a platform key any auction."""
    if principal.scope != "advertiser":
        return
    record = await records.record(auction_id)
    bidders = {row.get("id") for row in (record or {}).get("advertisers", [])}
    if record is None or principal.advertiser_id not in bidders:
        raise HTTPException(status_code=404, detail=f"auction {auction_id!r} not found (or expired)")


async def _head_covering(log: TransparencyLog, index: int, auction_id: str) -> SignedTreeHead:
    deadline = time.monotonic() + log.settings.transparency_proof_wait_s
    while True:
        try:
            head = await log.covering_head(index)
        except LogTamperedError as error:
            raise _checked(error) from error
        if head is not None:
            return head
        if time.monotonic() >= deadline:
            retry = math.ceil(log.settings.transparency_head_interval_s)
            raise HTTPException(
                status_code=409,
                detail=f"auction {auction_id!r} (leaf {index}) is not yet covered by a signed tree head: "
                f"retry after {retry} s",
                headers={"Retry-After": str(retry)},
            )
        await asyncio.sleep(POLL_S)


@router.get(
    "/auctions/{auction_id}/proof",
    response_model=InclusionProof,
    tags=["auction"],
    summary="The auction's inclusion proof in the transparency log, against the latest signed tree head",
    responses=error_responses(401, 404, 409, 503),
)
async def get_auction_proof(
    auction_id: str, records: RecordsDep, *, principal: Principal = Depends(require_api_key), log: LogDep
) -> dict[str, Any]:
    if len(auction_id) > 64 or not auction_id.isalnum():
        raise HTTPException(status_code=404, detail=f"auction {auction_id!r} not found")
    await _may_read(records, auction_id, principal)
    index = await log.store.leaf_index(auction_id)
    if index is None:
        raise HTTPException(status_code=404, detail=f"auction {auction_id!r} is not in the transparency log")
    head = await _head_covering(log, index, auction_id)
    return {
        "auction_id": auction_id,
        "leaf_index": index,
        "leaf_hash": log.tree.leaf(index).hex(),
        "tree_size": head.tree_size,
        "audit_path": [digest.hex() for digest in log.inclusion_path(index, head.tree_size)],
        "head": head.as_dict(),
    }
