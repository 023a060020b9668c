"""The engine facade: :class:`Engine`, one loaded model serving generation and scoring requests —
tokenization, request checks, ``complete`` / ``score`` and their async forms — built from an
:class:`workers.engine.config.EngineConfig` and delegating to its parts: the
:class:`workers.engine.generate.Decoder`, the :class:`workers.engine.score.Scorer` and (CPU bf16/fp16)
the :class:`workers.engine.batching.BatchLoop`. Imports those modules and the ones below them,
:mod:`workers.models` (the loaded model); never the settings. See docs/DESIGN.md (the worker engine).

Concurrency
    One model, one lock: every model call runs under ``Engine.lock``. The async API runs the work on
    the engine's own single worker thread, so an asyncio loop (the worker's server, or a gateway that
    embeds it in process) is never blocked. On the CPU batch-invariant path (bf16/fp16 on CPU, the
    default here) :meth:`Engine.acomplete` goes through the batch loop: concurrent requests share
    each forward step (continuous batching) with bit-identical results; every other path (fp32,
    legacy, CUDA with graphs) serves one request at a time in arrival order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import torch

from workers.engine import fast_decode, llama
from workers.engine.batching import BatchLoop
from workers.engine.config import EngineConfig
from workers.engine.generate import Decoder
from workers.engine.sampling import SamplingOptions, sample_generators
from workers.engine.scheduler import Scheduler
from workers.engine.score import Scorer
from workers.engine.types import EngineInputError, EngineStats, PromptResult, PromptScores
from workers.models import LoadedModel, load_model

log = logging.getLogger(__name__)


class Engine:
    """One loaded model serving generation and scoring requests (thread safe, see module docs), as
    ``config`` says (:class:`EngineConfig`; built from WorkerSettings by ``workers.server``)."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        config = config or EngineConfig()
        self.config = config
        self._load_model(loaded)
        self.max_model_len = min(config.max_model_len, loaded.max_position_embeddings)
        self.max_logprobs = config.max_logprobs
        self.force_ignore_eos = config.force_ignore_eos
        self.lock = threading.Lock()
        self._tok_lock = threading.RLock()  # the Rust tokenizer is not safe to share across threads
        self._token_text: dict[int, str] = {}
        self.stats = EngineStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mosaic-engine")
        self.decoder = Decoder(
            self.model,
            self.device,
            self._fast_decoder(config),
            self.eos_token_ids,
            self.decode,
            self._count_forward,
        )
        self.decode_mode: str = config.decode if self.decoder.fast is not None else "legacy"
        # bf16/fp16 on CPU: decoding and scoring share one batch-invariant forward (invariant.py).
        self.invariant = self.decoder.fast.invariant if self.decoder.fast is not None else None
        self.scorer = self._scorer(config)
        # ... and concurrent requests share its steps (continuous batching, batching.py).
        self.batching: BatchLoop | None = None
        if self.invariant is not None and config.batching:
            budget = max(config.batch_token_budget, config.batch_max_rows)
            scheduler = Scheduler(
                budget,
                config.batch_max_rows,
                config.priority_aging_steps,
                config.priority_fill_tokens,
                config.priority_pause_steps,
                config.priority_pause_gap,
            )
            self.batching = BatchLoop(self.decoder, self.scorer, self.lock, self.stats, scheduler)

    def _scorer(self, config: EngineConfig) -> Scorer:
        pad = int(self.tokenizer.pad_token_id or 0)
        sharing, min_shared = config.prefix_sharing, config.min_shared_prefix
        budget = config.score_token_budget
        return Scorer(
            self.model, self.device, pad, self.invariant, budget, sharing, min_shared, self._count_forward
        )

    def _load_model(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.name = loaded.name
        self.eos_token_ids = loaded.eos_token_ids
        self.vocab_size = loaded.vocab_size
        if self.device.type == "cuda":
            # cuDNN's SDPA backend rebuilds its graph for every new KV length: ~1 ms of CPU per layer
            # per decode step (measured on an H100, 7B shapes), more than the GPU work. Flash /
            # memory-efficient SDPA kernels have no such cost.
            torch.backends.cuda.enable_cudnn_sdp(False)

    def _fast_decoder(self, config: EngineConfig) -> fast_decode.FastDecoder | None:
        """The static-cache decoder, or None (the legacy loop; ``fast_path_reason`` says why)."""
        self.fast_path_reason: str | None = (
            "WORKER_DECODE=legacy" if config.decode == "legacy" else llama.unsupported_reason(self.model)
        )
        if self.fast_path_reason is not None:
            log.info("generation uses the transformers loop: %s", self.fast_path_reason)
            return None
        graphs = config.decode == "fast" and self.device.type == "cuda"
        return fast_decode.FastDecoder(self.model, graphs=graphs, on_forward=self._count_forward)

    def _count_forward(self) -> None:
        self.stats.forward_passes += 1

    # ------------------------------------------------------------------------- the parts' knobs
    @property
    def fast(self) -> fast_decode.FastDecoder | None:
        """The decoder's static-cache path (None: the legacy loop); settable (tests swap variants)."""
        return self.decoder.fast

    @fast.setter
    def fast(self, fast: fast_decode.FastDecoder | None) -> None:
        self.decoder.fast = fast

    @property
    def score_token_budget(self) -> int:
        """Most padded tokens per scoring pass (settable between requests)."""
        return self.scorer.token_budget

    @score_token_budget.setter
    def score_token_budget(self, budget: int) -> None:
        self.scorer.token_budget = budget

    @property
    def prefix_sharing(self) -> bool:
        """Whether scoring shares long common prefixes (settable between requests)."""
        return self.scorer.prefix_sharing

    @prefix_sharing.setter
    def prefix_sharing(self, sharing: bool) -> None:
        self.scorer.prefix_sharing = sharing

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
                scored = self.scorer.score(
                    prompt_lists, top_k=prompt_logprobs, keep_last=options.max_tokens == 1
                )
                for result, item, k in zip(results, scored, range(len(scored)), strict=True):
                    result.scores = item.scores
                    last[k] = item.first_logits
            self.stats.prompt_tokens += sum(len(p) for p in prompt_lists)
            if options.max_tokens > 0:
                for k, result in enumerate(results):
                    # Per-sample generators, fresh per prompt: a prompt's samples are the same whatever
                    # else the request holds and whatever n is (sample k is seeded by (seed, k)).
                    generators = sample_generators(seed, options.n, self.device)
                    result.samples = self.decoder.generate(result.prompt_ids, options, generators, last[k])
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
            return [s.scores for s in self.scorer.score(prompt_lists, top_k=top_k, keep_last=False)]

    async def acomplete(
        self,
        prompts: Sequence[Sequence[int]],
        options: SamplingOptions,
        prompt_logprobs: int | None = None,
        on_start: Callable[[], None] | None = None,
        priority: int = 0,
    ) -> list[PromptResult]:
        """:meth:`complete` without blocking the event loop: through the continuous-batching loop when
        the engine has one (the same results, bit for bit), else on the engine's own thread.
        ``on_start``: called (on the engine's thread) when the request's first model work begins.
        ``priority`` (vLLM's: lower first) orders the batch loop's waiting work; the serial paths
        serve one request at a time in arrival order."""
        if self.batching is not None:
            prompt_lists, options, seed = self._prepare(prompts, options, prompt_logprobs)
            return await self.batching.acomplete(
                prompt_lists, options, prompt_logprobs, seed, on_start, priority
            )

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

    @classmethod
    def load(cls, model: str, device: str, dtype: str, config: EngineConfig) -> Engine:
        """Load ``model`` (see :mod:`workers.models`) and wrap it in an engine (blocking; on a passing
        thread, see :func:`in_passing_thread`)."""

        def build() -> Engine:
            return cls(load_model(model, device, dtype), config)

        engine: Engine = in_passing_thread(build)
        return engine


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
