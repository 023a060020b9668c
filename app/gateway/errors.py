"""How failures become HTTP answers: each known fault a clear 5xx naming its cause.

Workers down → 503, a worker refusing → 502, the deadline → 504, billing or Redis unavailable → 503,
anything else → 500 with the exception's type. Nothing is billed for any of them: billing is the last
step of an auction. Imports the exception types of the auction and the ledger, and the metrics.
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

from app.auction.admission import AdmissionRefusedError
from app.auction.engine_client import WorkerRequestError, WorkersUnavailableError
from app.auction.sampler import PromptTooLongError
from app.auction.service import AuctionDeadlineError
from app.gateway.metrics import GatewayMetrics
from app.ledger.producer import BillingUnavailableError

logger = logging.getLogger(__name__)


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message})


def add_error_handlers(app: FastAPI, metrics: GatewayMetrics) -> None:
    add_validation_handler(app)

    def count_failure(outcome: str) -> None:
        metrics.auctions.labels(outcome, "unknown").inc()

    @app.exception_handler(AdmissionRefusedError)
    async def _refused(request: Request, error: AdmissionRefusedError) -> JSONResponse:
        count_failure(f"refused_{error.reason}")
        response = error_response(429, str(error))
        response.headers["Retry-After"] = str(error.retry_after_s)
        return response

    @app.exception_handler(WorkersUnavailableError)
    async def _workers_down(request: Request, error: WorkersUnavailableError) -> JSONResponse:
        count_failure("workers_unavailable")
        return error_response(503, f"LLM workers unavailable: {error}")

    @app.exception_handler(WorkerRequestError)
    async def _worker_refused(request: Request, error: WorkerRequestError) -> JSONResponse:
        count_failure("worker_error")
        return error_response(502, f"LLM worker error: {error}")

    @app.exception_handler(PromptTooLongError)
    async def _prompt_too_long(request: Request, error: PromptTooLongError) -> JSONResponse:
        detail = [
            {"type": "limit_exceeded", "loc": ["body", *loc], "msg": message, "ctx": {"limit": error.limit}}
            for loc, message in error.problems
        ]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(AuctionDeadlineError)
    async def _deadline(request: Request, error: AuctionDeadlineError) -> JSONResponse:
        return error_response(504, str(error))

    @app.exception_handler(BillingUnavailableError)
    async def _billing_down(request: Request, error: BillingUnavailableError) -> JSONResponse:
        count_failure("billing_unavailable")
        return error_response(503, f"billing ledger unavailable, auction not served and not billed: {error}")

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, error: RedisError) -> JSONResponse:
        return error_response(503, f"Redis unavailable: {type(error).__name__}: {error}")

    @app.exception_handler(Exception)
    async def _fault(request: Request, error: Exception) -> JSONResponse:
        # Last resort: still a clear 5xx naming the cause (nothing was billed: billing is the last step).
        logger.exception("unhandled error", extra={"path": request.url.path})
        count_failure("internal_error")
        return error_response(500, f"internal error: {type(error).__name__}: {error}")


def _encodable(value: Any) -> bool:
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
