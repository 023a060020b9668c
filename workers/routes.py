"""The worker's routes (the subset of vLLM's OpenAI-compatible API that MOSAIC uses), each a function
of its body and typed dependencies (:data:`WorkerDep`: the app's :class:`Worker`). Imports FastAPI,
:mod:`workers.engine.core` (the engine type), :mod:`workers.completions`, :mod:`workers.dialect`,
:mod:`workers.metrics`, :mod:`workers.queue_limit` and :mod:`workers.protocol`; :mod:`workers.server`
assembles them. Shapes: ``workers.protocol``; contract: ``docs/VLLM_PROTOCOL.md``.
See docs/DESIGN.md (the LLM worker) for the invariants and figures.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from workers.completions import build_choices, prompt_lists, sampling_options
from workers.dialect import check_request
from workers.engine.core import Engine
from workers.engine.sampling import SamplingOptions
from workers.engine.types import PromptResult
from workers.identity import package_version
from workers.metrics import WorkerMetrics
from workers.protocol import (
    CompletionRequest,
    CompletionResponse,
    CompletionUsage,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
    VersionResponse,
)
from workers.queue_limit import TokenQueue, request_cost


@dataclass
class Worker:
    """What the routes of one worker app serve with."""

    engine: Engine
    metrics: WorkerMetrics
    model_name: str  # the name answered (served name, else the engine's)
    queue: TokenQueue  # accepted work, bounded (429 beyond)
    identity: dict[str, Any] = field(default_factory=dict)  # workers.identity.engine_identity
    identity_id: str = ""  # its digest, sent as X-Mosaic-Engine on every answer

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested not in (self.model_name, self.engine.name):
            raise StarletteHTTPException(404, f"The model `{requested}` does not exist.")


def _worker(request: Request) -> Worker:
    worker: Worker = request.app.state.worker
    return worker


WorkerDep = Annotated[Worker, Depends(_worker)]

router = APIRouter()


# No docstrings on the route functions: FastAPI would publish them in the OpenAPI document.
@router.get("/health")
async def health() -> Response:
    return Response(status_code=200)


@router.get("/v1/models", response_model=ModelList)
async def models(worker: WorkerDep) -> ModelList:
    engine = worker.engine
    card = ModelCard(
        id=worker.model_name, root=engine.name, owned_by="mosaic", max_model_len=engine.max_model_len
    )
    return ModelList(data=[card])


@router.get("/version", response_model=VersionResponse)
async def version(worker: WorkerDep) -> VersionResponse:
    # vLLM's route ({"version": ...}) plus what bit-identity of the log-probs depends on (issue 35)
    return VersionResponse(
        version=package_version(), mosaic_engine=worker.identity, mosaic_engine_id=worker.identity_id
    )


@router.post("/tokenize", response_model=TokenizeResponse, response_model_exclude_none=True)
async def tokenize(
    body: TokenizeChatRequest | TokenizeCompletionRequest, worker: WorkerDep
) -> TokenizeResponse:
    worker.check_model(body.model)
    engine = worker.engine
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


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, worker: WorkerDep) -> DetokenizeResponse:
    worker.check_model(body.model)
    return DetokenizeResponse(prompt=await asyncio.to_thread(worker.engine.detokenize, body.tokens))


@router.post("/v1/completions", response_model=CompletionResponse, response_model_exclude_none=True)
async def completions(body: CompletionRequest, worker: WorkerDep) -> CompletionResponse:
    worker.check_model(body.model)
    engine = worker.engine
    check_request(body, engine.max_logprobs)
    start = time.perf_counter()
    prompts = await asyncio.to_thread(prompt_lists, engine, body)
    options = sampling_options(engine, body, prompts)
    engine.check_request(prompts, options)
    results = await _run_admitted(worker, prompts, options, body.prompt_logprobs, start, body.priority)
    choices = await asyncio.to_thread(build_choices, engine, body, results)
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(s.token_ids) for r in results for s in r.samples)
    worker.metrics.finished(
        start, time.perf_counter(), prompt_tokens, [s for r in results for s in r.samples]
    )
    return CompletionResponse(
        id=f"cmpl-{uuid.uuid4().hex}",
        model=worker.model_name,
        choices=choices,
        usage=CompletionUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
    )


@router.get("/metrics")
async def metrics_endpoint(worker: WorkerDep) -> Response:
    return Response(generate_latest(worker.metrics.registry), media_type=CONTENT_TYPE_LATEST)


class _Phase:
    """A request's waiting → running gauges; ``on_start`` runs on the engine's thread."""

    def __init__(self, metrics: WorkerMetrics, start: float) -> None:
        self.metrics, self.start = metrics, start
        self.running = metrics.running.labels(*metrics.label_values)
        self.waiting = metrics.waiting.labels(*metrics.label_values)
        self.started: bool | None = False  # None: the request left
        self._lock = threading.Lock()

    def on_start(self) -> None:
        with self._lock:
            if self.started is None:  # the request already left (its client went away)
                return
            self.started = True
        self.waiting.dec()
        self.metrics.queue_time.labels(*self.metrics.label_values).observe(time.perf_counter() - self.start)
        self.running.inc()

    def left(self) -> None:
        with self._lock:
            was, self.started = self.started, None
        (self.running if was else self.waiting).dec()


async def _run_admitted(
    worker: Worker,
    prompts: list[list[int]],
    options: SamplingOptions,
    prompt_logprobs: int | None,
    start: float,
    priority: int,
) -> list[PromptResult]:
    """The request's model work once the queue admits it (429 before any model work otherwise);
    ``priority`` (vLLM's, lower first) orders it among the waiting work of the batch loop."""
    cost = request_cost([len(p) for p in prompts], options.n, options.max_tokens)
    phase = _Phase(worker.metrics, start)
    with worker.queue.hold(cost):
        phase.waiting.inc()
        try:
            results = await worker.engine.acomplete(
                prompts, options, prompt_logprobs, phase.on_start, priority
            )
        finally:
            phase.left()
    worker.queue.observe(cost, time.perf_counter() - start)
    return results
