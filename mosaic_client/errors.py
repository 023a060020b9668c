"""The client's exceptions: one class per HTTP status the MOSAIC API answers, all `MosaicError`.

Each carries the status, the API's own message (`detail`: a string, or the list of field errors of a
422/413) and the response. `error_for(response)` picks the class. Imports httpx only.
See docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from typing import Any

import httpx


class MosaicError(Exception):
    """Any failed call: `status` (None for a transport failure), `detail` (the API's message)."""

    status: int | None = None

    def __init__(self, message: str, *, detail: Any = None, response: httpx.Response | None = None) -> None:
        super().__init__(message)
        self.detail = detail
        self.response = response
        if response is not None:
            self.status = response.status_code


class TransportError(MosaicError):
    """No answer: the connection failed or timed out (after the retries)."""


class AuthenticationError(MosaicError):
    """401: missing or invalid API key."""


class PermissionDeniedError(MosaicError):
    """403: the key's scope does not allow this (an advertiser key on a platform route)."""


class NotFoundError(MosaicError):
    """404: unknown (or expired, or not this advertiser's) auction, or unknown route."""


class ConflictError(MosaicError):
    """409: the body conflicts with the resource's state (a what-if naming an advertiser the auction
    did not have; an Idempotency-Key reused with another body)."""


class PayloadTooLargeError(MosaicError):
    """413: the body is over MAX_BODY_BYTES."""


class InvalidRequestError(MosaicError):
    """422: invalid input or over a limit; `errors` lists {loc, msg, type} naming each field."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        return self.detail if isinstance(self.detail, list) else []


class RateLimitedError(MosaicError):
    """429: too many auctions at once; `retry_after_s` is the server's advice."""

    @property
    def retry_after_s(self) -> float | None:
        return retry_after(self.response)


class ServerError(MosaicError):
    """500 (or another 5xx): an internal error, naming its cause. Nothing was billed."""


class WorkerError(ServerError):
    """502: an LLM worker refused the request. Nothing was billed."""


class UnavailableError(ServerError):
    """503: workers, Redis or the billing ledger unavailable. Nothing was billed."""


class DeadlineError(ServerError):
    """504: the auction deadline passed. Nothing was billed."""


_BY_STATUS: dict[int, type[MosaicError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: RateLimitedError,
    502: WorkerError,
    503: UnavailableError,
    504: DeadlineError,
}


def retry_after(response: httpx.Response | None) -> float | None:
    """The Retry-After header in seconds (the delta form), or None."""
    if response is None:
        return None
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _message(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(part) for part in entry.get('loc', []))}: {entry.get('msg', '')}"
            if isinstance(entry, dict)
            else str(entry)
            for entry in detail
        )
    return str(detail)


def error_for(response: httpx.Response) -> MosaicError:
    """The exception for a non-2xx answer, with the API's message."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = response.text[:500]
    status = response.status_code
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else MosaicError)
    return kind(f"HTTP {status}: {_message(detail)}", detail=detail, response=response)
