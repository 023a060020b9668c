"""Typed clients of the MOSAIC API on httpx: `MosaicClient` (sync) and `AsyncMosaicClient` (async).

They send and return the API's own pydantic models (`app.contract`), so
a request is validated before it leaves and an answer is parsed into the model the server declared.
Failures raise one exception per status (`mosaic_client.errors`).

Retries: a call is tried up to `retries + 1` times on a connection failure, a timeout, or an answer of
429/502/503/504 (none of those bills anything), waiting Retry-After when the server gives it, else an
exponential backoff. Every `POST /auction` carries an `Idempotency-Key` header (a fresh UUID per call,
the same on each retry of it; or the caller's), so a retry after a lost answer is answered from the
first attempt by a gateway that honours the key instead of running and billing a second auction.
`verify(auction_id)` checks a stored record's signature, commitments and payments (`app.verification`).
Imports httpx, the API's models, the errors and the pure verification (`app.verification`,
`app.attestation`).
See docs/DESIGN.md § Layout.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter

from app.attestation.keys import public_keys
from app.contract.attestation import KEYS_PATH
from app.contract.request import AdvertiserIn, AuctionRequest
from app.contract.result import AuctionRecord, AuctionResponse
from app.contract.sealed import SealedAuctionRecord, SealedWhatIfResponse
from app.contract.whatif import WhatIfRequest, WhatIfResponse
from app.contract.why import AuctionWhy
from app.verification.report import VerificationReport
from app.verification.verify import verify_document
from mosaic_client.errors import MosaicError, TransportError, error_for, retry_after

RETRY_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_TIMEOUT_S = 300.0
AdvertiserLike = AdvertiserIn | Mapping[str, Any] | str
# A platform key (or auth off) reads the full record; an advertiser key her sealed view (`view: sealed`).
AnyRecord = AuctionRecord | SealedAuctionRecord
AnyWhatIf = WhatIfResponse | SealedWhatIfResponse
_RECORD: TypeAdapter[AnyRecord] = TypeAdapter(AnyRecord)
_WHATIF: TypeAdapter[AnyWhatIf] = TypeAdapter(AnyWhatIf)


def _path(*parts: str) -> str:
    """`/auctions/<id>` with every part percent-encoded (an id can never add a path segment)."""
    return "/" + "/".join(quote(part, safe="") for part in parts)


def parse_advertiser(spec: str) -> dict[str, str]:
    """`id:Name:description` (the description may contain ':') as an advertiser's fields."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or not all(part.strip() for part in parts):
        raise ValueError(f"advertiser {spec!r} is not id:Name:description")
    advertiser_id, name, description = (part.strip() for part in parts)
    return {"id": advertiser_id, "name": name, "description": description}


def auction_request(
    query: str | AuctionRequest, advertisers: Iterable[AdvertiserLike] = (), **fields: Any
) -> AuctionRequest:
    """An `AuctionRequest` from a query, advertisers (models, dicts or `id:Name:description`) and fields."""
    if isinstance(query, AuctionRequest):
        return query
    rows = [
        parse_advertiser(a) if isinstance(a, str) else a.model_dump() if isinstance(a, AdvertiserIn) else a
        for a in advertisers
    ]
    given = {key: value for key, value in fields.items() if value is not None}
    return AuctionRequest.model_validate({"query": query, "advertisers": rows, **given})


def _whatif_body(
    tau: float, advertisers: Iterable[str] | None, value_scales: Mapping[str, float] | None
) -> dict[str, Any]:
    request = WhatIfRequest.model_validate(
        {
            "tau": tau,
            "advertisers": list(advertisers) if advertisers is not None else None,
            "value_scales": dict(value_scales) if value_scales is not None else None,
        }
    )
    return request.model_dump(mode="json", exclude_none=True)


class _Base:
    def __init__(self, api_key: str | None, retries: int, backoff_s: float, max_backoff_s: float) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        advised = retry_after(response)
        if advised is not None:
            return min(advised, self.max_backoff_s)
        return min(self.backoff_s * (2**attempt), self.max_backoff_s)

    @staticmethod
    def _check(response: httpx.Response) -> Any:
        if response.is_success:
            return response.json()
        raise error_for(response)

    @staticmethod
    def _auction_headers(idempotency_key: str | None) -> dict[str, str]:
        return {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}


class MosaicClient(_Base):
    """Synchronous client. `with MosaicClient(url, api_key=...) as mosaic: mosaic.auction(...)`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = 2,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, retries, backoff_s, max_backoff_s)
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s, transport=transport)

    def __enter__(self) -> MosaicClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, *, json: Any = None, headers: Mapping[str, str] = {}) -> Any:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.http.request(method, path, json=json, headers={**self.headers, **headers})
            except httpx.TransportError as error:
                if last:
                    raise TransportError(f"{method} {path}: {type(error).__name__}: {error}") from error
                time.sleep(self._delay(attempt, None))
                continue
            if response.status_code in RETRY_STATUSES and not last:
                time.sleep(self._delay(attempt, response))
                continue
            return self._check(response)
        raise MosaicError("unreachable")  # pragma: no cover

    def auction(
        self,
        query: str | AuctionRequest,
        advertisers: Iterable[AdvertiserLike] = (),
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> AuctionResponse:
        """Run one auction (`POST /auction`); `fields` are the request's other fields (tau, seed, ...)."""
        body = auction_request(query, advertisers, **fields).model_dump(mode="json", exclude_none=True)
        answer = self._call("POST", "/auction", json=body, headers=self._auction_headers(idempotency_key))
        return AuctionResponse.model_validate(answer)

    def get_auction(self, auction_id: str) -> AnyRecord:
        """The stored audit record, candidates included (`GET /auctions/{id}`): the full `AuctionRecord`
        for a platform key, her `SealedAuctionRecord` for an advertiser key (`resolve_own` recomputes
        her figures from it)."""
        return _RECORD.validate_python(self._call("GET", _path("auctions", auction_id)))

    def resolve(
        self,
        auction_id: str,
        tau: float,
        *,
        advertisers: Iterable[str] | None = None,
        value_scales: Mapping[str, float] | None = None,
    ) -> AnyWhatIf:
        """What-if on the stored candidates (`POST /auctions/{id}/resolve`): never billed. An advertiser
        key gets her own figures only (`SealedWhatIfResponse`) and may change only her own value scale."""
        body = _whatif_body(tau, advertisers, value_scales)
        return _WHATIF.validate_python(
            self._call("POST", _path("auctions", auction_id, "resolve"), json=body)
        )

    def why(self, auction_id: str) -> AuctionWhy:
        """Why the reply is sponsored (`GET /auctions/{id}/why`): each sponsor's reason, τ, M, the
        proposal; the figures of everyone (platform key) or hers alone (advertiser key, `view: sealed`)."""
        return AuctionWhy.model_validate(self._call("GET", _path("auctions", auction_id, "why")))

    def ledger_summary(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/ledger/summary")
        return result

    def verify(self, auction_id: str) -> VerificationReport:
        """Check the stored record (or, with an advertiser key, her sealed view) offline against its
        signed statement, with the keys the gateway serves: the signature, the digests, and the
        allocation and payments recomputed (`app.verification.verify.verify_document`)."""
        document = self.get_auction_json(auction_id)
        return verify_document(document, public_keys(self.signing_keys()))

    def get_auction_json(self, auction_id: str) -> dict[str, Any]:
        """The stored record (or her sealed view) as the JSON the gateway sent: what is verified."""
        result: dict[str, Any] = self._call("GET", _path("auctions", auction_id))
        return result

    def signing_keys(self) -> dict[str, Any]:
        """The JWK set of the keys that sign records (`GET /.well-known/mosaic-keys`)."""
        result: dict[str, Any] = self._call("GET", KEYS_PATH)
        return result

    def advertiser_account(self, advertiser_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", _path("ledger", "advertisers", advertiser_id))
        return result


class AsyncMosaicClient(_Base):
    """Asynchronous client: `async with AsyncMosaicClient(url) as mosaic: await mosaic.auction(...)`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = 2,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, retries, backoff_s, max_backoff_s)
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, transport=transport)

    async def __aenter__(self) -> AsyncMosaicClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(
        self, method: str, path: str, *, json: Any = None, headers: Mapping[str, str] = {}
    ) -> Any:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self.http.request(
                    method, path, json=json, headers={**self.headers, **headers}
                )
            except httpx.TransportError as error:
                if last:
                    raise TransportError(f"{method} {path}: {type(error).__name__}: {error}") from error
                await asyncio.sleep(self._delay(attempt, None))
                continue
            if response.status_code in RETRY_STATUSES and not last:
                await asyncio.sleep(self._delay(attempt, response))
                continue
            return self._check(response)
        raise MosaicError("unreachable")  # pragma: no cover

    async def auction(
        self,
        query: str | AuctionRequest,
        advertisers: Iterable[AdvertiserLike] = (),
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> AuctionResponse:
        """Run one auction (`POST /auction`); `fields` are the request's other fields (tau, seed, ...)."""
        body = auction_request(query, advertisers, **fields).model_dump(mode="json", exclude_none=True)
        answer = await self._call(
            "POST", "/auction", json=body, headers=self._auction_headers(idempotency_key)
        )
        return AuctionResponse.model_validate(answer)

    async def get_auction(self, auction_id: str) -> AnyRecord:
        return _RECORD.validate_python(await self._call("GET", _path("auctions", auction_id)))

    async def resolve(
        self,
        auction_id: str,
        tau: float,
        *,
        advertisers: Iterable[str] | None = None,
        value_scales: Mapping[str, float] | None = None,
    ) -> AnyWhatIf:
        body = _whatif_body(tau, advertisers, value_scales)
        answer = await self._call("POST", _path("auctions", auction_id, "resolve"), json=body)
        return _WHATIF.validate_python(answer)

    async def why(self, auction_id: str) -> AuctionWhy:
        return AuctionWhy.model_validate(await self._call("GET", _path("auctions", auction_id, "why")))

    async def verify(self, auction_id: str) -> VerificationReport:
        """`MosaicClient.verify`, asynchronously."""
        document = await self.get_auction_json(auction_id)
        return verify_document(document, public_keys(await self.signing_keys()))

    async def get_auction_json(self, auction_id: str) -> dict[str, Any]:
        """The stored record (or her sealed view) as the JSON the gateway sent: what is verified."""
        result: dict[str, Any] = await self._call("GET", _path("auctions", auction_id))
        return result

    async def signing_keys(self) -> dict[str, Any]:
        """The JWK set of the keys that sign records (`GET /.well-known/mosaic-keys`)."""
        result: dict[str, Any] = await self._call("GET", KEYS_PATH)
        return result

    async def inclusion_proof(self, auction_id: str) -> dict[str, Any]:
        """The auction's leaf, its audit path and the signed tree head it is checked against
        (`GET /auctions/{id}/proof`); `app.verification.log_checks.check_inclusion` checks it."""
        result: dict[str, Any] = await self._call("GET", _path("auctions", auction_id, "proof"))
        return result

    async def ledger_summary(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/ledger/summary")
        return result

    async def advertiser_account(self, advertiser_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", _path("ledger", "advertisers", advertiser_id))
        return result
