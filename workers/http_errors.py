"""The worker's HTTP errors: vLLM's error body for every failure (``{"error": {"message", "type",
"param", "code"}}``) and the app's exception handlers. Imports FastAPI, :mod:`workers.protocol`,
:mod:`workers.dialect`, :mod:`workers.queue_limit` and :mod:`workers.engine.types`; never ``app``.
Bad input is 400 (a malformed body too, as vLLM does), an unknown model 404; never a 500 for the
client's mistake (docs/DESIGN.md, the vLLM dialect).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from workers.dialect import DialectError
from workers.engine.types import EngineInputError
from workers.protocol import ErrorResponse
from workers.queue_limit import QueueFullError

log = logging.getLogger(__name__)

_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    413: "BadRequestError",
    429: "TooManyRequestsError",
}


def error_response(
    message: str, code: int = 400, type_: str | None = None, param: str | None = None
) -> JSONResponse:
    error_type = type_ or _ERROR_TYPES.get(code, "InternalServerError" if code >= 500 else "BadRequestError")
    body = ErrorResponse.build(message=message, code=code, type=error_type, param=param)
    return JSONResponse(status_code=code, content=body.model_dump(mode="json"))


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = []
    params: list[str] = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc)
        if loc:
            params.append(loc[0])
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return error_response("; ".join(parts) or "invalid request", 400, param=params[0] if params else None)


async def _pydantic(request: Request, exc: ValidationError) -> JSONResponse:
    return error_response(str(exc), 400)


async def _engine_input(request: Request, exc: EngineInputError) -> JSONResponse:
    return error_response(str(exc), 400, param=exc.param if isinstance(exc, DialectError) else None)


async def _queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
    response = error_response(str(exc), 429)
    response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(str(exc.detail), exc.status_code)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s", request.url.path)
    return error_response(f"internal error: {type(exc).__name__}: {exc}", 500, "InternalServerError")


def install_error_handlers(app: FastAPI) -> None:
    """Every error of ``app`` in vLLM's body."""
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(ValidationError, _pydantic)  # type: ignore[arg-type]
    app.add_exception_handler(EngineInputError, _engine_input)  # type: ignore[arg-type]
    app.add_exception_handler(QueueFullError, _queue_full)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal)
