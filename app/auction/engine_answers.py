"""The engine client's value types and the parsing of worker answers (docs/VLLM_PROTOCOL.md).

Job: what `app.auction.engine_client` takes and hands back (`DrawParams`, `GeneratedCandidate`,
`ScoredChunk`), the per-auction `WorkerCallStats`, the seeds and shares of generation (`derive_seed`,
`split_evenly`) and the reading of a completion's choices (`candidate_from_choice`,
`sequence_logprob_sums`, `error_message`); a broken answer is `WorkerRequestError` (502). Pure:
imports httpx (a response's body) and the worker's wire models only. See docs/DESIGN.md § The path
of one auction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from workers.protocol import CompletionResponseView


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
class DrawParams:
    """How one generation request samples (the auction's reply length, temperature, top-p)."""

    max_tokens: int
    temperature: float
    top_p: float
    ignore_eos: bool = False


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


def error_message(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body["error"]))
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:500]
    return str(body)[:500]


def candidate_from_choice(choice: Any, engine_id: str = "", share: int = 0) -> GeneratedCandidate:
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


def sequence_logprob_sums(
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
