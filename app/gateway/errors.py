"""How failures become HTTP answers: each known fault a clear 5xx naming its cause.

Workers down → 503, a worker refusing → 502, the deadline → 504, billing or Redis unavailable → 503,
anything else → 500 with the exception's type. Nothing is billed for any of them: billing is the last
step of an auction. Imports the exception types of the auction and the ledger, and the metrics.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from app.auction.engine_client import WorkerRequestError, WorkersUnavailableError
from app.auction.service import AuctionDeadlineError
from app.billing import BillingUnavailableError
from app.gateway.metrics import GatewayMetrics

logger = logging.getLogger(__name__)


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message})


def add_error_handlers(app: FastAPI, metrics: GatewayMetrics) -> None:
    def count_failure(outcome: str) -> None:
        metrics.auctions.labels(outcome, "unknown").inc()

    @app.exception_handler(WorkersUnavailableError)
    async def _workers_down(request: Request, error: WorkersUnavailableError) -> JSONResponse:
        count_failure("workers_unavailable")
        return error_response(503, f"LLM workers unavailable: {error}")

    @app.exception_handler(WorkerRequestError)
    async def _worker_refused(request: Request, error: WorkerRequestError) -> JSONResponse:
        count_failure("worker_error")
        return error_response(502, f"LLM worker error: {error}")

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
