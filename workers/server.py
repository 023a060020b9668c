"""The worker's HTTP server: the subset of vLLM's OpenAI-compatible API that MOSAIC uses, and the CLI
that runs it. Imports :mod:`workers.engine`, :mod:`workers.completions` (the completion request and
response), :mod:`workers.protocol` and :mod:`workers.settings`; never ``app``.

Routes (shapes: ``workers.protocol``, contract: ``docs/VLLM_PROTOCOL.md``)::

    GET  /health            200, empty body (the model is loaded before the app exists)
    GET  /v1/models         {"object": "list", "data": [{"id", "max_model_len", ...}]}
    POST /tokenize          chat form (messages, chat template) or plain form (prompt)
    POST /detokenize        {"tokens": [...]} → {"prompt": "..."}
    POST /v1/completions    generation (n samples, processed log-probs) and batched scoring
    GET  /metrics           Prometheus text, vLLM's metric names

Errors use vLLM's body ``{"error": {"message", "type", "param", "code"}}``; bad input is 400 (a
malformed body too, as vLLM does), an unknown model 404; never a 500 for the client's mistake.

Public API (the gateway embeds the worker in process through ``httpx.ASGITransport``)::

    load_engine(model, device="auto", dtype=None) -> Engine   # blocking: loads the model
    create_app(engine, served_model_name=None) -> FastAPI
    serve(model, host, port, device="auto", engine="transformers", dtype=None) -> None

``python -m workers.server --model tiny-random --port 8001`` runs one worker;
``--engine vllm`` execs ``vllm serve`` with the flags the contract needs instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from workers.auth import BearerKeyMiddleware
from workers.completions import build_choices, prompt_lists, sampling_options
from workers.dialect import DialectError, check_request
from workers.engine.config import EngineConfig
from workers.engine.core import Engine
from workers.engine.types import EngineInputError
from workers.logging_setup import configure_logging
from workers.metrics import WorkerMetrics
from workers.protocol import (
    CompletionRequest,
    CompletionResponse,
    CompletionUsage,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
)
from workers.queue_limit import QueueFullError, TokenQueue, request_cost
from workers.settings import get_worker_settings
from workers.vllm_launch import exec_vllm

__all__ = ["Engine", "create_app", "load_engine", "serve"]

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


def create_app(engine: Engine, served_model_name: str | None = None, api_key: str | None = None) -> FastAPI:
    """The worker's FastAPI app around an already loaded ``engine`` (no loading in the lifespan).

    With ``api_key``, requests to /v1 and /tokenize need ``Authorization: Bearer <api_key>``.
    """
    model_name = served_model_name or engine.name
    metrics = WorkerMetrics(model_name)
    app = FastAPI(title="MOSAIC worker (vLLM OpenAI-compatible subset)", version="0.1.0")
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.model_name = model_name
    if api_key:
        app.add_middleware(BearerKeyMiddleware, api_key=api_key)
    queue = TokenQueue(get_worker_settings().worker_max_queued_tokens)

    # ------------------------------------------------------------------------------- errors
    @app.exception_handler(RequestValidationError)
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

    @app.exception_handler(ValidationError)
    async def _pydantic(request: Request, exc: ValidationError) -> JSONResponse:
        return error_response(str(exc), 400)

    @app.exception_handler(EngineInputError)
    async def _engine_input(request: Request, exc: EngineInputError) -> JSONResponse:
        return error_response(str(exc), 400, param=exc.param if isinstance(exc, DialectError) else None)

    @app.exception_handler(QueueFullError)
    async def _queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
        response = error_response(str(exc), 429)
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return error_response(f"internal error: {type(exc).__name__}: {exc}", 500, "InternalServerError")

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            metrics.http_latency.labels(path, request.method, str(status)).observe(
                time.perf_counter() - start
            )

    def check_model(requested: str | None) -> None:
        if requested is not None and requested not in (model_name, engine.name):
            raise StarletteHTTPException(404, f"The model `{requested}` does not exist.")

    # ------------------------------------------------------------------------------- routes
    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        card = ModelCard(
            id=model_name, root=engine.name, owned_by="mosaic", max_model_len=engine.max_model_len
        )
        return ModelList(data=[card])

    @app.post("/tokenize", response_model=TokenizeResponse, response_model_exclude_none=True)
    async def tokenize(body: TokenizeChatRequest | TokenizeCompletionRequest) -> TokenizeResponse:
        check_model(body.model)
        if isinstance(body, TokenizeChatRequest):
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            tokens = await asyncio.to_thread(
                engine.tokenize_chat,
                messages,
                add_generation_prompt=body.add_generation_prompt,
                continue_final_message=body.continue_final_message,
                add_special_tokens=body.add_special_tokens,
            )
        else:
            tokens = await asyncio.to_thread(
                engine.tokenize_text, body.prompt, add_special_tokens=body.add_special_tokens
            )
        strs = engine.tokenizer.convert_ids_to_tokens(tokens) if body.return_token_strs else None
        return TokenizeResponse(
            count=len(tokens), max_model_len=engine.max_model_len, tokens=tokens, token_strs=strs
        )

    @app.post("/detokenize", response_model=DetokenizeResponse)
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        check_model(body.model)
        return DetokenizeResponse(prompt=await asyncio.to_thread(engine.detokenize, body.tokens))

    @app.post("/v1/completions", response_model=CompletionResponse, response_model_exclude_none=True)
    async def completions(body: CompletionRequest) -> CompletionResponse:
        check_model(body.model)
        check_request(body, engine.max_logprobs)
        start = time.perf_counter()
        prompts = await asyncio.to_thread(prompt_lists, engine, body)
        options = sampling_options(engine, body, prompts)
        engine.check_request(prompts, options)
        running = metrics.running.labels(*metrics.label_values)
        waiting = metrics.waiting.labels(*metrics.label_values)
        started: bool | None = False
        state = threading.Lock()  # on_start runs on the engine's thread

        def on_start() -> None:
            nonlocal started
            with state:
                if started is None:  # the request already left (its client went away)
                    return
                started = True
            waiting.dec()
            metrics.queue_time.labels(*metrics.label_values).observe(time.perf_counter() - start)
            running.inc()

        cost = request_cost([len(p) for p in prompts], options.n, options.max_tokens)
        with queue.hold(cost):  # 429 here, before any model work, when the worker holds too much
            waiting.inc()
            try:
                results = await engine.acomplete(prompts, options, body.prompt_logprobs, on_start)
            finally:
                with state:
                    was, started = started, None
                (running if was else waiting).dec()
        queue.observe(cost, time.perf_counter() - start)
        choices = await asyncio.to_thread(build_choices, engine, body, results)
        prompt_tokens = sum(len(p) for p in prompts)
        completion_tokens = sum(len(s.token_ids) for r in results for s in r.samples)
        metrics.finished(start, time.perf_counter(), prompt_tokens, [s for r in results for s in r.samples])
        return CompletionResponse(
            id=f"cmpl-{uuid.uuid4().hex}",
            model=model_name,
            choices=choices,
            usage=CompletionUsage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


# ------------------------------------------------------------------------------------ running
def load_engine(
    model: str, device: str = "auto", dtype: str | None = None, max_logprobs: int | None = None
) -> Engine:
    """Load ``model`` into an :class:`Engine` configured from the worker's settings (blocking).
    ``dtype`` / ``max_logprobs`` None: the WORKER_DTYPE / WORKER_MAX_LOGPROBS settings."""
    settings = get_worker_settings()
    config = EngineConfig.from_settings(settings, max_logprobs=max_logprobs)
    return Engine.load(model, device, dtype if dtype is not None else settings.worker_dtype, config)


def _configure_threads() -> None:
    import torch

    # WORKER_TORCH_THREADS > 0 pins it; 0 keeps torch's default (all cores) for a standalone worker.
    threads = get_worker_settings().worker_torch_threads
    if threads:
        torch.set_num_threads(threads)


def serve(
    model: str,
    host: str,
    port: int,
    device: str = "auto",
    engine: str = "transformers",
    dtype: str | None = None,
    api_key: str | None = None,
    served_model_name: str | None = None,
    max_logprobs: int | None = None,
) -> None:
    """Run one worker until stopped. ``engine="vllm"`` replaces this process with ``vllm serve``.

    ``api_key`` (default WORKER_API_KEY): the bearer token required on /v1 (and /tokenize here);
    vLLM gets it as VLLM_API_KEY in its environment (not on its command line, visible in ps).
    ``served_model_name`` / ``max_logprobs`` (defaults WORKER_SERVED_MODEL_NAME / WORKER_MAX_LOGPROBS):
    vLLM's flags of the same names, for either engine.
    """
    settings = get_worker_settings()
    configure_logging(settings)
    api_key = api_key if api_key is not None else settings.worker_api_key
    served_model_name = served_model_name or settings.worker_served_model_name
    if engine == "vllm":  # vLLM: --max-logprobs 1 (VLLM_PROTOCOL.md) unless given explicitly
        exec_vllm(model, host, port, api_key, served_model_name, 1 if max_logprobs is None else max_logprobs)
    max_logprobs = max_logprobs if max_logprobs is not None else settings.worker_max_logprobs
    if engine != "transformers":
        raise ValueError(f"unknown engine {engine!r} (transformers or vllm)")
    import uvicorn

    _configure_threads()
    loaded = load_engine(model, device, dtype, max_logprobs=max_logprobs)
    app = create_app(loaded, served_model_name=served_model_name, api_key=api_key)
    gc.collect()
    gc.freeze()  # the model and modules live as long as the process: keep them out of GC scans
    log.info(
        "worker ready: model=%s device=%s dtype=%s on %s:%d",
        loaded.name,
        loaded.device,
        str(loaded.loaded.dtype).removeprefix("torch."),
        host,
        port,
    )
    # log_config=None: uvicorn's loggers propagate to the one JSON handler (workers.logging_setup)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers.server", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.environ.get("WORKER_MODEL", "smollm2"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--device", default=os.environ.get("WORKER_DEVICE", "auto"))
    parser.add_argument(
        "--dtype", default=None, choices=["auto", "float32", "bfloat16"], help="default: WORKER_DTYPE"
    )
    parser.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument(
        "--api-key", default=None, help="bearer token required on /v1 (default: WORKER_API_KEY)"
    )
    parser.add_argument("--served-model-name", default=None, help="default: WORKER_SERVED_MODEL_NAME")
    parser.add_argument("--max-logprobs", type=int, default=None, help="default: WORKER_MAX_LOGPROBS")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        serve(
            args.model,
            args.host,
            args.port,
            device=args.device,
            engine=args.engine,
            dtype=args.dtype,
            api_key=args.api_key,
            served_model_name=args.served_model_name,
            max_logprobs=args.max_logprobs,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
