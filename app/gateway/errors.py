"""How failures become HTTP answers: each known fault a clear 5xx naming its cause.

Workers down → 503, a worker refusing → 502, `select` without a selector → 503, the deadline (or
`tmax_ms`) → 504, billing or Redis unavailable → 503, an admission limit → 429 with Retry-After,
an Idempotency-Key still running → 409, reused with other parameters → 422 naming
it, anything else → 500 with the exception's type (`fault_answer`, also what a key stores).
Nothing is billed for any of them: billing is the last step of an auction. `add_error_handlers`
registers them in groups (the fault table, backpressure, billing and Redis, the last resort). Imports
the exception types of the auction, the ledger and the contract's limits, the metrics and the strict
JSON decoder's depth bound (docs/DESIGN.md § Errors and limits).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect

from app.archive.store import ArchiveUnavailableError
from app.auction.admission import AdmissionRefusedError
from app.auction.engine_client import WorkerRequestError
from app.auction.sampler import PromptTooLongError
from app.auction.selection_hook import SelectionUnavailableError
from app.auction.service import AuctionDeadlineError
from app.auction.worker_dispatch import WorkersBusyError, WorkersUnavailableError
from app.campaigns.spend import BudgetReservationError
from app.contract.limits import LimitExceededError
from app.gateway.metrics import GatewayMetrics
from app.gateway.strict_json import MAX_JSON_DEPTH, nesting
from app.ledger.idempotency import (
    HEADER,
    IdempotencyInProgressError,
    IdempotencyLostError,
    IdempotencyMismatchError,
    IdempotencyOutcomeError,
)
from app.ledger.producer import BillingUnavailableError
from app.ledger.redis_health import RedisUnwritableError

logger = logging.getLogger(__name__)


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message})


# exception type -> (status, the metrics outcome or None, how the message starts)
_FAULTS: tuple[tuple[type[Exception], int, str | None, str], ...] = (
    (WorkersUnavailableError, 503, "workers_unavailable", "LLM workers unavailable: "),
    (WorkerRequestError, 502, "worker_error", "LLM worker error: "),
    (WorkersBusyError, 429, "refused_workers_busy", "LLM workers at their queue limits, retry later: "),
    (AuctionDeadlineError, 504, None, ""),
    (
        BillingUnavailableError,
        503,
        "billing_unavailable",
        "billing ledger unavailable, auction not served and not billed: ",
    ),
    (
        BudgetReservationError,
        503,
        "budget_unavailable",
        "campaign budgets could not be reserved, auction not served and not billed: ",
    ),
    (SelectionUnavailableError, 503, "selection_unavailable", ""),
    (IdempotencyInProgressError, 409, None, ""),
    (IdempotencyLostError, 409, "idempotency_lost", ""),
    (ArchiveUnavailableError, 503, None, ""),  # issue 36: an archived record could not be read
    (IdempotencyOutcomeError, 500, None, ""),  # issue 36: by reference
)


def fault_answer(error: Exception) -> tuple[int, dict[str, Any]]:
    """The status and JSON body a failure is answered with (the handlers below and the
    Idempotency-Key's stored outcome use this one function, so a replay is the same answer)."""
    if isinstance(error, PromptTooLongError):
        detail = [
            {"type": "limit_exceeded", "loc": ["body", *loc], "msg": message, "ctx": {"limit": error.limit}}
            for loc, message in error.problems
        ]
        return 422, {"detail": detail}
    if isinstance(error, IdempotencyMismatchError):
        mismatch = {"type": "idempotency_mismatch", "loc": ["header", HEADER], "msg": str(error)}
        return 422, {"detail": [mismatch]}
    for kind, status, _outcome, prefix in _FAULTS:
        if isinstance(error, kind):
            return status, {"detail": f"{prefix}{error}"}
    if isinstance(error, RedisError):
        return 503, {"detail": f"Redis unavailable: {type(error).__name__}: {error}"}
    return 500, {"detail": f"internal error: {type(error).__name__}: {error}"}


def add_error_handlers(app: FastAPI, metrics: GatewayMetrics) -> None:
    """Every failure's handler (a later registration for the same type replaces an earlier one: the
    fault table's generic handler first, then the types that answer more than the table says)."""
    add_validation_handler(app)
    _add_fault_table_handlers(app, metrics)
    _add_backpressure_handlers(app, metrics)
    _add_billing_and_redis_handlers(app, metrics)
    _add_last_resort_handlers(app, metrics)


def _answer(error: Exception) -> JSONResponse:
    status, body = fault_answer(error)
    return JSONResponse(status_code=status, content=body)


def _add_fault_table_handlers(app: FastAPI, metrics: GatewayMetrics) -> None:
    """One handler per `_FAULTS` type: count its outcome, answer `fault_answer`'s status and body."""
    for kind, _status, outcome, _prefix in _FAULTS:

        async def handler(request: Request, error: Exception, outcome: str | None = outcome) -> JSONResponse:
            if outcome is not None:
                metrics.auctions.labels(outcome, "unknown").inc()
            return _answer(error)

        app.add_exception_handler(kind, handler)


def _add_backpressure_handlers(app: FastAPI, metrics: GatewayMetrics) -> None:
    """429s with Retry-After (admission, busy workers) and the 422s found after validation (a prompt
    too long once tokenized, an Idempotency-Key reused with another body)."""

    @app.exception_handler(AdmissionRefusedError)
    async def _refused(request: Request, error: AdmissionRefusedError) -> JSONResponse:
        # Before any model work and before an Idempotency-Key is claimed: never stored, nothing billed.
        metrics.auctions.labels(f"refused_{error.reason}", "unknown").inc()
        response = error_response(429, str(error))
        response.headers["Retry-After"] = str(error.retry_after_s)
        return response

    @app.exception_handler(WorkersBusyError)
    async def _workers_busy(request: Request, error: WorkersBusyError) -> JSONResponse:
        # Every worker refused 429 (WORKER_MAX_QUEUED_TOKENS): backpressure, not a fault; nothing billed.
        # A 4xx: an Idempotency-Key's claim is given back, not stored (app.gateway.auction_call).
        metrics.auctions.labels("refused_workers_busy", "unknown").inc()
        response = _answer(error)
        response.headers["Retry-After"] = str(error.retry_after_s)
        return response

    @app.exception_handler(PromptTooLongError)
    async def _prompt_too_long(request: Request, error: PromptTooLongError) -> JSONResponse:
        return _answer(error)

    @app.exception_handler(IdempotencyMismatchError)
    async def _reused(request: Request, error: IdempotencyMismatchError) -> JSONResponse:
        return _answer(error)


def _add_billing_and_redis_handlers(app: FastAPI, metrics: GatewayMetrics) -> None:
    """503s of the ledger's Redis: a failed billing write (also marks Redis unhealthy), an unwritable
    Redis (with Retry-After), any other Redis error."""

    @app.exception_handler(BillingUnavailableError)
    async def _billing_down(request: Request, error: BillingUnavailableError) -> JSONResponse:
        metrics.auctions.labels("billing_unavailable", "unknown").inc()
        redis_health = getattr(request.app.state, "redis_health", None)
        if redis_health is not None:  # passive signal: refuse the next auctions early until a good probe
            redis_health.report_failure(f"the last billing write failed: {error}")
        return _answer(error)

    @app.exception_handler(RedisUnwritableError)
    async def _redis_unwritable(request: Request, error: RedisUnwritableError) -> JSONResponse:
        metrics.auctions.labels("redis_unwritable", "unknown").inc()
        response = error_response(503, f"Redis cannot take writes, auction not run and not billed: {error}")
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, error: RedisError) -> JSONResponse:
        return _answer(error)


def _add_last_resort_handlers(app: FastAPI, metrics: GatewayMetrics) -> None:
    """A client gone mid-body (400, not a fault) and any other exception (500 naming its type)."""

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, error: ClientDisconnect) -> JSONResponse:
        # The client left (or was cut off by the read timeout, app.gateway.http_limits) mid-body:
        # nobody reads this answer, nothing was run or billed; not a server fault.
        logger.info(
            "client disconnected before its request body was complete", extra={"path": request.url.path}
        )
        return error_response(400, "client disconnected before the request body was complete")

    @app.exception_handler(Exception)
    async def _fault(request: Request, error: Exception) -> JSONResponse:
        # Last resort: still a clear 5xx naming the cause (nothing was billed: billing is the last step).
        logger.exception("unhandled error", extra={"path": request.url.path})
        metrics.auctions.labels("internal_error", "unknown").inc()
        return _answer(error)


def _encodable(value: Any) -> bool:
    """Whether `value` writes as UTF-8 JSON, wherever the answer is rendered: nested no deeper than a
    body may be (an echo checked here at one stack depth must not overflow it at another)."""
    if nesting(value) > MAX_JSON_DEPTH:
        return False
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        return False
    return True


def safe_validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's 422 detail, minus whatever part of it cannot be written as UTF-8 JSON.

    The default handler echoes each error's ``input``; for a NaN, a lone surrogate or raw bytes that
    echo raised while the response was encoded (a 500 and a dropped connection). Here an input (or a
    context) that does not encode is left out; the type, location and message always stay.
    """
    safe: list[dict[str, Any]] = []
    for error in errors:
        entry = {key: error[key] for key in ("type", "loc", "msg") if key in error}
        entry["loc"] = [part if isinstance(part, int) else str(part) for part in entry.get("loc", ())]
        if not _encodable(entry):
            entry = {"type": str(error.get("type", "invalid")), "loc": ["body"], "msg": "invalid value"}
        for optional in ("input", "ctx"):
            if optional in error:
                with contextlib.suppress(Exception):
                    encoded = jsonable_encoder(error[optional])
                    if _encodable(encoded):
                        entry[optional] = encoded
        safe.append(entry)
    return safe


def add_validation_handler(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": safe_validation_errors(error.errors())})

    @app.exception_handler(LimitExceededError)
    async def _over_limit(request: Request, error: LimitExceededError) -> JSONResponse:
        # A configured limit (app.contract.limits): the same 422 as a field's static bound.
        return JSONResponse(status_code=422, content={"detail": safe_validation_errors(error.errors)})
