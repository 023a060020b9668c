"""The transformers engine: :class:`Engine`, one loaded model serving batched sampling with a KV cache
and batched teacher-forced scoring, and :func:`load_engine`. Engine's public surface (tokenization,
request checks, ``complete`` / ``score`` and their async forms) is here; its generation methods come
from :mod:`workers.engine.generate` (with :mod:`workers.engine.sampling`), its scoring methods from
:mod:`workers.engine.score`. Imports those modules, :mod:`workers.models` and
:mod:`workers.settings`; never ``app``.

Concurrency
    One model, one lock: every model call runs under ``Engine.lock``. The async API runs the work on
    the engine's own single worker thread, so an asyncio loop (the worker's server, or a gateway that
    embeds it in process) is never blocked. On the CPU batch-invariant path (bf16/fp16 on CPU, the
    default here) :meth:`Engine.acomplete` goes through :class:`workers.engine.batching.BatchLoop`:
    concurrent requests share each forward step (continuous batching) with bit-identical results;
    every other path (fp32, legacy, CUDA with graphs) serves one request at a time in arrival order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from workers.engine import fast_decode, llama
from workers.engine.batching import BatchLoop
from workers.engine.generate import GenerateMixin, Sample
from workers.engine.sampling import SamplingOptions, sample_generators
from workers.engine.score import PromptScores, ScoreMixin
from workers.models import LoadedModel, load_model
from workers.settings import get_worker_settings

log = logging.getLogger(__name__)

DECODE_MODES = ("fast", "eager", "legacy")
DecodeMode = Literal["fast", "eager", "legacy"]


class EngineInputError(ValueError):
    """A request the engine cannot serve (too long, bad token id ...): HTTP 400."""


@dataclass
class PromptResult:
    prompt_ids: list[int]
    scores: PromptScores | None
    samples: list[Sample] = field(default_factory=list)


@dataclass
class EngineStats:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    forward_passes: int = 0


class Engine(GenerateMixin, ScoreMixin):
    """One loaded model serving generation and scoring requests (thread safe, see module docs)."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_model_len: int | None = None,
        score_token_budget: int | None = None,
        max_logprobs: int | None = None,
        prefix_sharing: bool = True,
        min_shared_prefix: int = 16,
        decode: DecodeMode | None = None,
        force_ignore_eos: bool | None = None,
        batching: bool | None = None,
    ) -> None:
        settings = get_worker_settings()
        if max_logprobs is None:
            max_logprobs = settings.worker_max_logprobs
        if batching is None:
            batching = settings.worker_batching
        if max_model_len is None or score_token_budget is None or decode is None or force_ignore_eos is None:
            max_model_len = max_model_len if max_model_len is not None else settings.worker_max_model_len
            score_token_budget = (
                score_token_budget if score_token_budget is not None else settings.worker_score_token_budget
            )
            decode = decode if decode is not None else settings.worker_decode
            force_ignore_eos = (
                force_ignore_eos if force_ignore_eos is not None else settings.worker_force_ignore_eos
            )
        if decode not in DECODE_MODES:
            raise ValueError(f"unknown decode mode {decode!r} (one of {', '.join(DECODE_MODES)})")
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.name = loaded.name
        self.max_model_len = min(max_model_len, loaded.max_position_embeddings)
        self.score_token_budget = score_token_budget
        self.max_logprobs = max_logprobs
        self.prefix_sharing = prefix_sharing
        self.min_shared_prefix = max(1, min_shared_prefix)
        self.eos_token_ids = loaded.eos_token_ids
        self.vocab_size = loaded.vocab_size
        self.lock = threading.Lock()
        self._tok_lock = threading.RLock()  # the Rust tokenizer is not safe to share across threads
        self.stats = EngineStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mosaic-engine")
        if self.device.type == "cuda":
            # cuDNN's SDPA backend rebuilds its graph for every new KV length: ~1 ms of CPU per layer
            # per decode step (measured on an H100, 7B shapes), more than the GPU work. Flash /
            # memory-efficient SDPA kernels have no such cost.
            torch.backends.cuda.enable_cudnn_sdp(False)
        self._decoder = self.model.get_decoder()
        self._lm_head = self.model.get_output_embeddings()
        self._softcap: float | None = getattr(self.model.config, "final_logit_softcapping", None)
        self._token_text: dict[int, str] = {}
        self.force_ignore_eos = bool(force_ignore_eos)
        self.fast: fast_decode.FastDecoder | None = None
        self.fast_path_reason: str | None = None  # why generation runs the legacy loop (None: it does not)
        if decode == "legacy":
            self.fast_path_reason = "WORKER_DECODE=legacy"
        else:
            self.fast_path_reason = llama.unsupported_reason(self.model)
        if self.fast_path_reason is None:
            self.fast = fast_decode.FastDecoder(
                self.model,
                graphs=decode == "fast" and self.device.type == "cuda",
                on_forward=self._count_forward,
            )
        else:
            log.info("generation uses the transformers loop: %s", self.fast_path_reason)
        self.decode_mode: str = decode if self.fast is not None else "legacy"
        # bf16/fp16 on CPU: decoding and scoring share one batch-invariant forward (invariant.py).
        self.invariant = self.fast.invariant if self.fast is not None else None
        # ... and concurrent requests share its steps (continuous batching, batching.py).
        self.batching: BatchLoop | None = None
        if self.invariant is not None and batching:
            budget = max(settings.worker_batch_token_budget, settings.worker_batch_max_rows)
            self.batching = BatchLoop(self, self.invariant, budget, settings.worker_batch_max_rows)

    def _count_forward(self) -> None:
        self.stats.forward_passes += 1

    # ------------------------------------------------------------------------------ tokenization
    def tokenize_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        add_special_tokens: bool = False,
    ) -> list[int]:
        if self.tokenizer.chat_template is None:
            raise EngineInputError("this model's tokenizer has no chat template")
        with self._tok_lock:
            text = self.tokenizer.apply_chat_template(
                list(messages),
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tokenize=False,
            )
        assert isinstance(text, str)
        return self.tokenize_text(text, add_special_tokens=add_special_tokens)

    def tokenize_text(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        with self._tok_lock:
            return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def detokenize(self, token_ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        self.check_token_ids(token_ids)
        return self.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        with self._tok_lock:
            return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens))

    def token_text(self, token_id: int) -> str:
        """The text of one token (cached); what vLLM puts in ``decoded_token`` / ``tokens``."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self.decode([token_id])
            self._token_text[token_id] = text
        return text

    def token_texts(self, token_ids: Sequence[int]) -> list[str]:
        missing = sorted({t for t in token_ids if t not in self._token_text})
        if missing:
            with self._tok_lock:
                decoded = self.tokenizer.batch_decode([[t] for t in missing])
            for tid, text in zip(missing, decoded, strict=True):
                self._token_text[tid] = str(text)
        return [self._token_text[t] for t in token_ids]

    def check_token_ids(self, token_ids: Sequence[int]) -> None:
        for t in token_ids:
            if not 0 <= t < self.vocab_size:
                raise EngineInputError(f"Token id {t} is out of vocabulary (size {self.vocab_size}).")

    def check_request(self, prompts: Sequence[Sequence[int]], options: SamplingOptions) -> int:
        """Validate lengths and ids the way vLLM does; returns the effective ``max_tokens``."""
        if options.logprobs is not None and options.logprobs > self.max_logprobs:
            raise EngineInputError(
                f"Requested sample logprobs of {options.logprobs}, which is greater than max allowed: "
                f"{self.max_logprobs}"
            )
        self.check_token_ids(options.stop_token_ids)
        for prompt in prompts:
            if len(prompt) == 0:
                raise EngineInputError("The prompt cannot be empty.")
            self.check_token_ids(prompt)
            total = len(prompt) + options.max_tokens
            if len(prompt) >= self.max_model_len or total > self.max_model_len:
                raise EngineInputError(
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                    f"requested {total} tokens ({len(prompt)} in the messages, {options.max_tokens} in "
                    "the completion). Please reduce the length of the messages or completion."
                )
        return options.max_tokens

    # ---------------------------------------------------------------------------------- public API
    def complete(
        self,
        prompts: Sequence[Sequence[int]],
        options: SamplingOptions,
        prompt_logprobs: int | None = None,
    ) -> list[PromptResult]:
        """Serve one ``/v1/completions`` request (blocking; takes the engine lock; alone, never batched)."""
        prompt_lists, options, seed = self._prepare(prompts, options, prompt_logprobs)
        with self.lock, torch.inference_mode():
            results = [PromptResult(prompt_ids=p, scores=None) for p in prompt_lists]
            last: list[torch.Tensor | None] = [None] * len(prompt_lists)
            if prompt_logprobs is not None:
                scored = self._score(prompt_lists, top_k=prompt_logprobs, keep_last=options.max_tokens == 1)
                for result, item, k in zip(results, scored, range(len(scored)), strict=True):
                    result.scores = item.scores
                    last[k] = item.first_logits
            self.stats.prompt_tokens += sum(len(p) for p in prompt_lists)
            if options.max_tokens > 0:
                for k, result in enumerate(results):
                    # Per-sample generators, fresh per prompt: a prompt's samples are the same whatever
                    # else the request holds and whatever n is (sample k is seeded by (seed, k)).
                    generators = sample_generators(seed, options.n, self.device)
                    result.samples = self._generate(result.prompt_ids, options, generators, last[k])
                    self.stats.generation_tokens += sum(len(s.token_ids) for s in result.samples)
            return results

    def _prepare(
        self, prompts: Sequence[Sequence[int]], options: SamplingOptions, prompt_logprobs: int | None
    ) -> tuple[list[list[int]], SamplingOptions, int]:
        """A request's checks; its prompts, effective options and seed."""
        prompt_lists = [list(p) for p in prompts]
        self.check_request(prompt_lists, options)
        if prompt_logprobs is not None and prompt_logprobs > self.max_logprobs:
            raise EngineInputError(
                f"Requested prompt logprobs of {prompt_logprobs}, which is greater than max allowed: "
                f"{self.max_logprobs}"
            )
        seed = options.seed if options.seed is not None else secrets.randbits(63)
        if self.force_ignore_eos and not options.ignore_eos:
            options = replace(options, ignore_eos=True)
        return prompt_lists, options, seed

    def score(self, prompts: Sequence[Sequence[int]], top_k: int = 0) -> list[PromptScores]:
        """Prompt log-probs of every prompt (blocking; takes the engine lock)."""
        prompt_lists = [list(p) for p in prompts]
        for p in prompt_lists:
            self.check_token_ids(p)
        with self.lock, torch.inference_mode():
            return [s.scores for s in self._score(prompt_lists, top_k=top_k, keep_last=False)]

    async def acomplete(
        self,
        prompts: Sequence[Sequence[int]],
        options: SamplingOptions,
        prompt_logprobs: int | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> list[PromptResult]:
        """:meth:`complete` without blocking the event loop: through the continuous-batching loop when
        the engine has one (the same results, bit for bit), else on the engine's own thread.
        ``on_start``: called (on the engine's thread) when the request's first model work begins."""
        if self.batching is not None:
            prompt_lists, options, seed = self._prepare(prompts, options, prompt_logprobs)
            return await self.batching.acomplete(prompt_lists, options, prompt_logprobs, seed, on_start)

        def run() -> list[PromptResult]:
            if on_start is not None:
                on_start()
            return self.complete(prompts, options, prompt_logprobs)

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, run)

    async def arun(self, fn: Any, *args: Any) -> Any:
        """Run any blocking engine helper on the engine thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def close(self) -> None:
        if self.batching is not None:
            self.batching.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def in_passing_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on a thread that ends when it returns.

    Why: libgomp keeps one OpenMP pool per host thread for that thread's life, and once the pools'
    threads outnumber the cores it stops spinning between parallel regions (it throttles): every
    product then waits for its workers to wake. Measured here (2 cores, bf16, 8x576 by 576x1536): 55 us
    per ``F.linear`` on the one thread that ever ran parallel torch work, 115 us on a second thread
    while the first is alive (idle or not), 55 us again once the first has ended. So heavy torch work
    runs on one long-lived thread per engine (its batch loop or its executor) and the load, which is
    parallel too, on a thread that is gone before serving begins.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mosaic-load") as once:
        return once.submit(fn, *args).result()  # the pool's thread ends at the block's exit


def load_engine(
    model: str, device: str = "auto", dtype: str | None = None, max_logprobs: int | None = None
) -> Engine:
    """Load ``model`` (see :mod:`workers.models`) and wrap it in an :class:`Engine` (blocking; on a
    passing thread, see :func:`in_passing_thread`). ``dtype`` / ``max_logprobs`` None: the
    WORKER_DTYPE / WORKER_MAX_LOGPROBS settings."""
    if dtype is None:
        dtype = get_worker_settings().worker_dtype
    chosen = dtype

    def build() -> Engine:
        return Engine(load_model(model, device, chosen), max_logprobs=max_logprobs)

    engine: Engine = in_passing_thread(build)
    return engine
