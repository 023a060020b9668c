"""The gateway's client of LLM workers (vLLM's OpenAI-compatible dialect, VLLM_PROTOCOL.md).

One pooled httpx.AsyncClient per worker. Completions carry vLLM's ``priority`` of the auction
(`app.auction.worker_dispatch.auction_priority`, set from admission's fair share; WORKER_PRIORITY).
Requests are parsed with the worker's own pydantic models (`workers.protocol`), so the gateway reads
exactly the shapes that the worker (and vLLM) emit.
Which worker, how long to wait, hedging and retries are `app.auction.worker_dispatch`'s; each worker's
circuit breaker is `app.auction.worker_health`'s (fed here: a timeout, connect error or 5xx is a
failure, an answer a success). A failed request (connection error, timeout, 5xx) goes to the next
healthy worker; a worker 4xx is the worker refusing our request, answered 502 with its message; all
workers failed → 503.
See docs/DESIGN.md § Faults: workers, Redis, slow clients.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

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

ResponseModel = TypeVar("ResponseModel", bound=BaseModel)


class WorkerRequestError(Exception):
    """A worker refused a request (4xx) or answered something that is not the contract: 502."""

    def __init__(self, worker_url: str, message: str) -> None:
        super().__init__(f"worker {worker_url}: {message}")
        self.worker_url = worker_url


@dataclass(frozen=True)
class GeneratedCandidate:
    token_ids: list[int]
    text: str
    finish_reason: str | None
    log_proposal: float  # Σ of the sampled tokens' processed log-probs: log q(y)
    engine_id: str = ""  # the engine that drew it (`app.auction.engine_identity`)
    share: int = 0  # the generation request of its pool that drew it (its seed: derive_seed(seed, share))


@dataclass(frozen=True)
class ScoredChunk:
    """One scoring request: sequences [start, stop) of the batch, scored by engine `engine_id`."""

    start: int
    stop: int
    engine_id: str


@dataclass
class WorkerCallStats:
    """When worker requests were in flight, for the gateway-overhead figure (total − time in workers)."""

    intervals: list[tuple[float, float]] = field(default_factory=list)

    def add(self, started: float, ended: float) -> None:
        self.intervals.append((started, ended))

    def busy_seconds(self) -> float:
        """Length of the union of the intervals: wall time with at least one request in flight."""
        total = 0.0
        current_start = current_end = None
        for start, end in sorted(self.intervals):
            if current_end is None or start > current_end:
                if current_end is not None and current_start is not None:
                    total += current_end - current_start
                current_start, current_end = start, end
            else:
                current_end = max(current_end, end)
        if current_end is not None and current_start is not None:
            total += current_end - current_start
        return total


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` items over `parts` workers as evenly as possible, larger shares first."""
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


def derive_seed(seed: int, stream: int) -> int:
    """Independent, reproducible per-request seeds from one auction seed (SplitMix64 step)."""
    value = (seed + 0x9E3779B97F4A7C15 * (stream + 1)) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (value ^ (value >> 31)) & 0x7FFFFFFFFFFFFFFF


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

    async def _call(
        self,
        method: str,
        path: str,
        payload: BaseModel | None,
        response_model: type[ResponseModel],
        first_worker: int = 0,
        stats: WorkerCallStats | None = None,
        tokens: int = 0,
        kind: str | None = None,
    ) -> ResponseModel:
        answer = await self._answer(method, path, payload, response_model, first_worker, stats, tokens, kind)
        return answer[0]

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
                message = _error_message(response)
                raise RetryableWorkerError(f"{url}{path}: HTTP {response.status_code} {message}")
            health.record_success(url)  # it answered: a 4xx is our request refused, not a sick worker
            if response.status_code == 429:  # its queue is full: busy, not sick; another may take it
                self._record_error(url, "http_429")
                retry = int(response.headers.get("retry-after", "1") or 1)
                raise BusyWorkerError(f"{url}{path}: HTTP 429 {_error_message(response)}", retry)
            if response.status_code >= 400:
                self._record_error(url, f"http_{response.status_code}")
                raise WorkerRequestError(url, f"HTTP {response.status_code}: {_error_message(response)}")
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
            models = await self._call("GET", "/v1/models", None, ModelList)
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
        response = await self._call(
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
        requests = [
            self.generate_share(
                prompt_ids,
                share,
                worker_index,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=derive_seed(seed, worker_index),
                ignore_eos=ignore_eos,
                stats=stats,
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
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        ignore_eos: bool = False,
        stats: WorkerCallStats | None = None,
    ) -> list[GeneratedCandidate]:
        """One generation request: `count` samples with this `seed`, first sent to worker `share`."""
        request = CompletionRequest(
            model=await self.model_name(),
            prompt=prompt_ids,
            n=count,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            logprobs=0,
            return_tokens_as_token_ids=True,
            return_token_ids=True,
            ignore_eos=ignore_eos,
            priority=self._priority(),
        )
        # The seed is the share's, not the worker's: any worker, hedged or not, gives the same
        # candidates for this share.
        tokens = len(prompt_ids) + count * max_tokens
        response, engine_id = await self._answer(
            "POST", "/v1/completions", request, CompletionResponseView, share, stats, tokens, "generate"
        )
        return [
            _candidate_from_choice(choice, engine_id, share)
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
            sums = _sequence_logprob_sums(response, sequences, prompt_lengths, offset=start)
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


def _error_message(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body["error"]))
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:500]
    return str(body)[:500]


def _candidate_from_choice(choice: Any, engine_id: str = "", share: int = 0) -> GeneratedCandidate:
    if choice.token_ids is None or choice.logprobs is None:
        raise WorkerRequestError("worker", "generation choice without token_ids/logprobs")
    token_logprobs = choice.logprobs.token_logprobs
    if len(token_logprobs) != len(choice.token_ids) or any(value is None for value in token_logprobs):
        raise WorkerRequestError("worker", "one sampled log-prob per generated token expected")
    return GeneratedCandidate(
        token_ids=list(choice.token_ids),
        text=choice.text,
        finish_reason=choice.finish_reason,
        log_proposal=float(sum(token_logprobs)),
        engine_id=engine_id,
        share=share,
    )


def _sequence_logprob_sums(
    response: CompletionResponseView, sequences: list[list[int]], prompt_lengths: list[int], offset: int
) -> list[float]:
    choices = sorted(response.choices, key=lambda choice: choice.index)
    sums: list[float] = []
    for local_index, choice in enumerate(choices):
        sequence = sequences[offset + local_index]
        prompt_length = prompt_lengths[offset + local_index]
        entries = choice.prompt_logprobs
        if entries is None or len(entries) != len(sequence):
            raise WorkerRequestError("worker", "prompt_logprobs missing or of the wrong length")
        total = 0.0
        for position in range(prompt_length, len(sequence)):
            entry = entries[position]
            token_key = str(sequence[position])
            if entry is None or token_key not in entry:
                raise WorkerRequestError("worker", f"no prompt log-prob for token {token_key} at {position}")
            total += float(entry[token_key]["logprob"])
        sums.append(total)
    return sums
