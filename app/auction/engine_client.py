"""The gateway's client of LLM workers (vLLM's OpenAI-compatible dialect, VLLM_PROTOCOL.md).

One pooled httpx.AsyncClient per worker. Completions carry vLLM's ``priority`` of the auction
(`app.auction.worker_dispatch.auction_priority`, set from admission's fair share; WORKER_PRIORITY).
Requests are parsed with the worker's own pydantic models (`workers.protocol`), so the gateway reads
exactly the shapes that the worker (and vLLM) emit.
Which worker, how long to wait, hedging and retries are `app.auction.worker_dispatch`'s; each worker's
circuit breaker is `app.auction.worker_health`'s (fed here: a timeout, connect error or 5xx is a
failure, an answer a success). A failed request (connection error, timeout, 5xx) goes to the next
healthy worker; a worker 4xx is the worker refusing our request, answered 502 with its message; all
workers failed → 503. Every answer is tied to the engine that gave it (`app.auction.engine_identity`:
the worker's X-Mosaic-Engine, its identity read once from GET /version): generated candidates and
scoring chunks carry it, for the record's `engine` (issue 35). Value types and answer parsing:
`app.auction.engine_answers`.
See docs/DESIGN.md § Faults: workers, Redis, slow clients; § Verifiable auctions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from app.auction.engine_answers import (
    DrawParams,
    GeneratedCandidate,
    ScoredChunk,
    WorkerCallStats,
    WorkerRequestError,
    candidate_from_choice,
    derive_seed,
    error_message,
    sequence_logprob_sums,
    split_evenly,
)
from app.auction.engine_identity import ENGINE_HEADER, EngineIdentities
from app.auction.observers import NoopWorkerObserver, WorkerObserver
from app.auction.worker_dispatch import (
    BusyWorkerError,
    RetryableWorkerError,
    WorkerDispatcher,
    current_priority,
)
from app.auction.worker_health import WorkerHealth
from app.prompts import ChatMessage
from app.settings import Settings
from workers.protocol import (
    CompletionRequest,
    CompletionResponseView,
    ModelList,
    TokenizeChatRequest,
    TokenizeResponse,
)

logger = logging.getLogger(__name__)

# The value types live in `app.auction.engine_answers`; importable from here as before.
__all__ = [
    "DrawParams",
    "EngineClient",
    "GeneratedCandidate",
    "ScoredChunk",
    "WorkerCallStats",
    "WorkerRequestError",
    "derive_seed",
    "split_evenly",
]

ResponseModel = TypeVar("ResponseModel", bound=BaseModel)


class EngineClient:
    def __init__(
        self,
        settings: Settings,
        worker_urls: Sequence[str],
        transports: dict[str, httpx.AsyncBaseTransport] | None = None,
        observer: WorkerObserver | None = None,
    ) -> None:
        if not worker_urls:
            raise ValueError("at least one worker URL is needed")
        self.settings = settings
        self.worker_urls = list(worker_urls)
        timeout = httpx.Timeout(settings.worker_timeout_s, connect=settings.worker_connect_timeout_s)
        limits = httpx.Limits(
            max_connections=settings.worker_max_connections,
            max_keepalive_connections=settings.worker_max_connections,
        )
        transports = transports or {}
        # The workers' key (vLLM's --api-key); the in-process worker has none and needs none.
        headers = {"Authorization": f"Bearer {settings.worker_api_key}"} if settings.worker_api_key else {}
        self._clients = {
            url: httpx.AsyncClient(
                base_url=url, timeout=timeout, limits=limits, transport=transports.get(url), headers=headers
            )
            for url in self.worker_urls
        }
        self._model_name: str | None = settings.served_model_name
        self.observer = observer or NoopWorkerObserver()
        self.worker_health = WorkerHealth(settings, self.worker_urls, self.observer)
        self.dispatcher = WorkerDispatcher(settings, self.worker_health, self.observer)
        self.identities = EngineIdentities()  # which engine answered: the record's `engine` (issue 35)

    async def run_health_probes(self, stop: asyncio.Event) -> None:
        """The active probe of every worker, until `stop` (a background task of the gateway)."""
        await self.worker_health.run(self._clients, stop)

    @property
    def clients(self) -> dict[str, httpx.AsyncClient]:
        return self._clients

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self._clients.values()))

    # --- transport with retry on another worker ---------------------------------------------------

    async def _answer(
        self,
        method: str,
        path: str,
        payload: BaseModel | None,
        response_model: type[ResponseModel],
        first_worker: int = 0,
        stats: WorkerCallStats | None = None,
        tokens: int = 0,
        kind: str | None = None,
    ) -> tuple[ResponseModel, str]:
        """The parsed answer and the id of the engine that gave it (`app.auction.engine_identity`)."""
        body = payload.model_dump(mode="json", exclude_none=True) if payload is not None else None
        health = self.worker_health

        async def attempt(url: str, read_timeout: float) -> tuple[ResponseModel, str, str | None]:
            connect = min(read_timeout, self.settings.worker_connect_timeout_s)
            timeout = httpx.Timeout(read_timeout, connect=connect)
            started = time.perf_counter()
            try:
                response = await self._clients[url].request(method, path, json=body, timeout=timeout)
            except httpx.HTTPError as error:
                self._record_error(url, type(error).__name__)
                health.record_failure(url, type(error).__name__)
                raise RetryableWorkerError(f"{url}{path}: {type(error).__name__} {error}".strip()) from error
            finally:
                if stats is not None:
                    stats.add(started, time.perf_counter())
            if response.status_code >= 500:
                self._record_error(url, f"http_{response.status_code}")
                health.record_failure(url, f"http_{response.status_code}")
                message = error_message(response)
                raise RetryableWorkerError(f"{url}{path}: HTTP {response.status_code} {message}")
            health.record_success(url)  # it answered: a 4xx is our request refused, not a sick worker
            if response.status_code == 429:  # its queue is full: busy, not sick; another may take it
                self._record_error(url, "http_429")
                retry = int(response.headers.get("retry-after", "1") or 1)
                raise BusyWorkerError(f"{url}{path}: HTTP 429 {error_message(response)}", retry)
            if response.status_code >= 400:
                self._record_error(url, f"http_{response.status_code}")
                raise WorkerRequestError(url, f"HTTP {response.status_code}: {error_message(response)}")
            try:
                parsed = response_model.model_validate_json(response.content)
            except ValidationError as error:
                self._record_error(url, "bad_response")
                raise WorkerRequestError(url, f"response breaks the worker contract: {error}") from error
            return parsed, url, response.headers.get(ENGINE_HEADER)

        parsed, url, header = await self.dispatcher.call(kind or path, tokens, first_worker, attempt)
        return parsed, await self.identities.engine_id(self._clients[url], header)

    def _record_error(self, url: str, kind: str) -> None:
        logger.warning("worker request failed", extra={"worker": url, "error": kind})
        self.observer.worker_request_failed(url, kind)

    # --- the contract ----------------------------------------------------------------------------

    def _priority(self) -> int:
        """vLLM's ``priority`` of the auction being served (`auction_priority`); 0 (vLLM's default, the
        only value a worker without ``--scheduling-policy priority`` takes) when WORKER_PRIORITY is off."""
        return current_priority() if self.settings.worker_priority else 0

    async def model_name(self) -> str:
        if self._model_name is None:
            models, _ = await self._answer("GET", "/v1/models", None, ModelList)
            if not models.data:
                raise WorkerRequestError(self.worker_urls[0], "GET /v1/models listed no model")
            self._model_name = models.data[0].id
        return self._model_name

    async def tokenize_chat(
        self, messages: list[ChatMessage], first_worker: int = 0, stats: WorkerCallStats | None = None
    ) -> list[int]:
        request = TokenizeChatRequest(
            model=await self.model_name(),
            messages=[dict(message) for message in messages],
            add_generation_prompt=True,
            add_special_tokens=False,
        )
        response, _ = await self._answer(
            "POST", "/tokenize", request, TokenizeResponse, first_worker, stats, kind="tokenize"
        )
        return list(response.tokens)

    async def generate(
        self,
        prompt_ids: list[int],
        num_candidates: int,
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        ignore_eos: bool = False,
        stats: WorkerCallStats | None = None,
    ) -> list[GeneratedCandidate]:
        """M candidates, split across all workers, all requests in parallel; order is deterministic.

        Share k (of `split_evenly(M, workers)`) is drawn with seed `derive_seed(seed, k)`, whichever
        worker answers it: a re-score replays it by `generate_share` (`app.verification.rescore`)."""
        shares = split_evenly(num_candidates, len(self.worker_urls))
        params = DrawParams(max_tokens, temperature, top_p, ignore_eos)
        requests = [
            self.generate_share(
                prompt_ids, share, worker_index, derive_seed(seed, worker_index), params, stats
            )
            for worker_index, share in enumerate(shares)
            if share
        ]
        return [candidate for share in await asyncio.gather(*requests) for candidate in share]

    async def generate_share(
        self,
        prompt_ids: list[int],
        count: int,
        share: int,
        seed: int,
        params: DrawParams,
        stats: WorkerCallStats | None = None,
    ) -> list[GeneratedCandidate]:
        """One generation request: `count` samples with this `seed`, first sent to worker `share`."""
        request = CompletionRequest(
            model=await self.model_name(),
            prompt=prompt_ids,
            n=count,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=seed,
            logprobs=0,
            return_tokens_as_token_ids=True,
            return_token_ids=True,
            ignore_eos=params.ignore_eos,
            priority=self._priority(),
        )
        # The seed is the share's, not the worker's: any worker, hedged or not, gives the same
        # candidates for this share.
        tokens = len(prompt_ids) + count * params.max_tokens
        response, engine_id = await self._answer(
            "POST", "/v1/completions", request, CompletionResponseView, share, stats, tokens, "generate"
        )
        return [
            candidate_from_choice(choice, engine_id, share)
            for choice in sorted(response.choices, key=lambda choice: choice.index)
        ]

    async def score(
        self,
        sequences: list[list[int]],
        prompt_lengths: list[int],
        stats: WorkerCallStats | None = None,
        groups: int = 1,
    ) -> list[float]:
        """`score_chunks`' log-probs alone."""
        scores, _ = await self.score_chunks(sequences, prompt_lengths, stats, groups)
        return scores

    async def score_chunks(
        self,
        sequences: list[list[int]],
        prompt_lengths: list[int],
        stats: WorkerCallStats | None = None,
        groups: int = 1,
        chunks: list[tuple[int, int]] | None = None,
    ) -> tuple[list[float], list[ScoredChunk]]:
        """log-prob of each sequence's tail after its prompt (teacher forcing, temperature 1).

        `groups`: how many context prompts the (group-contiguous) batch holds. The batch is cut into
        W·⌈groups/W⌉ contiguous chunks for W workers, dealt round-robin, all requests in parallel:
        contiguous keeps the sequences of one context together (the worker prefills that prompt once),
        and several chunks per worker let the gateway parse one answer while the worker computes the next.
        `chunks` ([start, stop) ranges): send exactly these requests instead (a re-score replays the
        auction's). Also returns each request's range and the engine that scored it.
        """
        if len(sequences) != len(prompt_lengths):
            raise ValueError("one prompt length per sequence")
        model = await self.model_name()
        num_workers = len(self.worker_urls)
        num_chunks = num_workers * -(-max(1, groups) // num_workers)

        async def score_chunk(chunk_index: int, start: int, stop: int) -> tuple[list[float], ScoredChunk]:
            request = CompletionRequest(
                model=model,
                prompt=sequences[start:stop],
                max_tokens=1,
                temperature=1.0,
                prompt_logprobs=0,
                return_token_ids=True,
                priority=self._priority(),
            )
            tokens = sum(len(sequence) for sequence in sequences[start:stop])
            response, engine_id = await self._answer(
                "POST",
                "/v1/completions",
                request,
                CompletionResponseView,
                chunk_index % num_workers,
                stats,
                tokens,
                "score",
            )
            sums = sequence_logprob_sums(response, sequences, prompt_lengths, offset=start)
            return sums, ScoredChunk(start, stop, engine_id)

        if chunks is None:
            chunks, start = [], 0
            for share in split_evenly(len(sequences), num_chunks):
                if share:
                    chunks.append((start, start + share))
                start += share
        answers = await asyncio.gather(*(score_chunk(i, a, b) for i, (a, b) in enumerate(chunks)))
        return [score for sums, _ in answers for score in sums], [chunk for _, chunk in answers]

    def health(self) -> dict[str, bool]:
        """Which workers are up now (the breakers' state, kept current by the probe task; no I/O)."""
        return self.worker_health.healthy()
