"""The worker's HTTP server: the subset of vLLM's OpenAI-compatible API that MOSAIC uses, and the CLI
that runs it: assembles :mod:`workers.routes`, :mod:`workers.http_errors` and the engine, which it
configures from :mod:`workers.settings` (:class:`workers.engine.config.EngineConfig`). Imports those,
:mod:`workers.engine.core`, :mod:`workers.metrics`, :mod:`workers.auth` and :mod:`workers.queue_limit`;
never ``app``.

Routes (:mod:`workers.routes`; shapes: ``workers.protocol``, contract: ``docs/VLLM_PROTOCOL.md``)::

    GET  /health            200, empty body (the model is loaded before the app exists)
    GET  /v1/models         {"object": "list", "data": [{"id", "max_model_len", ...}]}
    POST /tokenize          chat form (messages, chat template) or plain form (prompt)
    POST /detokenize        {"tokens": [...]} → {"prompt": "..."}
    POST /v1/completions    generation (n samples, processed log-probs) and batched scoring
    GET  /metrics           Prometheus text, vLLM's metric names
    GET  /version           vLLM's {"version"} + mosaic_engine (what bit-identity depends on)

Errors use vLLM's body ``{"error": {"message", "type", "param", "code"}}``; bad input is 400 (a
malformed body too, as vLLM does), an unknown model 404; never a 500 for the client's mistake.

Public API (the gateway embeds the worker in process through ``httpx.ASGITransport``)::

    load_engine(model, device="auto", dtype=None) -> Engine   # blocking: loads the model
    create_app(engine, served_model_name=None) -> FastAPI
    serve(model, host, port, device="auto", engine="transformers", dtype=None) -> None

``python -m workers.server --model tiny-random --port 8001`` runs one worker;
``--engine vllm`` execs ``vllm serve`` with the flags the contract needs instead.
See docs/DESIGN.md (the LLM worker) for the invariants and figures.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from workers.auth import BearerKeyMiddleware
from workers.engine.config import EngineConfig
from workers.engine.core import Engine
from workers.http_errors import install_error_handlers
from workers.identity import ENGINE_HEADER, engine_identity, identity_id
from workers.logging_setup import configure_logging
from workers.metrics import WorkerMetrics
from workers.queue_limit import TokenQueue
from workers.routes import Worker, router
from workers.settings import get_worker_settings
from workers.vllm_launch import exec_vllm

__all__ = ["Engine", "create_app", "load_engine", "serve"]

log = logging.getLogger(__name__)


def create_app(engine: Engine, served_model_name: str | None = None, api_key: str | None = None) -> FastAPI:
    """The worker's FastAPI app around an already loaded ``engine`` (no loading in the lifespan).

    With ``api_key``, requests to /v1 and /tokenize need ``Authorization: Bearer <api_key>``.
    """
    model_name = served_model_name or engine.name
    metrics = WorkerMetrics(model_name)
    app = FastAPI(title="MOSAIC worker (vLLM OpenAI-compatible subset)", version="0.1.0")
    queue = TokenQueue(get_worker_settings().worker_max_queued_tokens)
    identity = engine_identity(engine)
    app.state.worker = Worker(
        engine=engine,
        metrics=metrics,
        model_name=model_name,
        queue=queue,
        identity=identity,
        identity_id=identity_id(identity),
    )
    if api_key:
        app.add_middleware(BearerKeyMiddleware, api_key=api_key)
    install_error_handlers(app)
    app.middleware("http")(_observe)
    app.include_router(router)
    return app


async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Every request's latency by route, method and status; every answer names the engine that gave
    it (``X-Mosaic-Engine``: the digest of its identity, ``workers.identity``)."""
    start = time.perf_counter()
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        response.headers[ENGINE_HEADER] = request.app.state.worker.identity_id
        return response
    finally:
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics: WorkerMetrics = request.app.state.worker.metrics
        metrics.http_latency.labels(path, request.method, str(status)).observe(time.perf_counter() - start)


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
