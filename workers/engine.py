"""The transformers engine: batched sampling with a KV cache and batched teacher-forced scoring.

Generation (:meth:`Engine.complete` with ``max_tokens`` > 0)
    The prompt is prefilled once (batch 1); its KV cache is shared by the ``n`` samples, which then
    decode together, one forward pass per step for the whole batch. A sample stops on any EOS id of
    the model (unless ``ignore_eos``), on ``stop_token_ids`` / ``stop`` strings, or at ``max_tokens``.
    A request with several prompts decodes them one after the other (each prompt's n samples
    batched); a scoring request's single sampled token (``max_tokens: 1``) reuses the scoring pass.

    Decode modes (``WORKER_DECODE``; the numbers and the random stream are the same in all three):

    * ``fast`` (default): :mod:`workers.fast_decode` — a static KV cache (one pool, reused across
      requests), a functional forward of Llama-family models and, on CUDA, one CUDA-graph replay per
      decode step; the next step is queued before the sampled tokens are read back, so the GPU never
      waits for Python. On CPU finished samples are dropped from the batch; on CUDA they keep
      decoding (ignored) so every step has the captured shape.
    * ``eager``: the same without CUDA graphs.
    * ``legacy``: the transformers forward with a preallocated ``DynamicCache``, finished samples
      dropped (``batch_select_indices``); also used for models the fast path does not support.

    ``WORKER_FORCE_IGNORE_EOS`` (benchmarks only) makes every generation request decode exactly
    ``max_tokens`` tokens, as if it had sent vLLM's ``ignore_eos: true``.

Sampling and the returned log-probs (vLLM ``--logprobs-mode processed_logprobs``)
    ``logits / T`` → top-p filter (vLLM's rule: sort ascending, drop the tokens whose cumulative
    probability is ≤ 1 − p, always keep the most likely) → ``log_softmax``. The token is drawn from
    that distribution with the request's ``torch.Generator`` and its log-prob under it is returned,
    so ``sum(token_logprobs)`` is log q(y) of the reply under the distribution it was sampled from.
    Temperature < 1e-5 means greedy (argmax); as in vLLM, the temperature is then taken as 1 for the
    log-probs (top-p still applied). The sampled EOS token is part of ``token_ids`` and of the
    log-probs; the text leaves it out.

Scoring (``prompt_logprobs``)
    All prompts of a request go through padded forward passes (right padding, attention mask,
    positions 0..len-1), chunked so each pass holds at most ``score_token_budget`` padded tokens.
    Prompts that share a long common prefix (MOSAIC: every candidate reply under one context) are
    grouped: the prefix is prefilled once and its KV cache is repeated over the group's suffixes
    (same numbers, prompt + M·reply tokens instead of M·(prompt + reply)). Log-probs are
    full-distribution (temperature 1) ``log_softmax`` values, as vLLM's prompt log-probs.

Concurrency
    One model, one lock: every model call runs under ``Engine.lock``. The async API runs the work on
    the engine's own single worker thread, so an asyncio loop (the worker's server, or a gateway that
    embeds it in process) is never blocked and requests are served one at a time in arrival order.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import secrets
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from workers import fast_decode
from workers.models import LoadedModel, load_model

log = logging.getLogger(__name__)

SAMPLING_EPS = 1e-5
DECODE_MODES = ("fast", "eager", "legacy")
DecodeMode = Literal["fast", "eager", "legacy"]
# Scoring's lm_head: (rows per matrix product, rows per log-softmax/gather/rank slice). On CPU the
# product wants many rows (the [vocab, H] weight is streamed once per product: 256 rows take 20% less
# time than 4 x 64), while a [16, vocab] fp32 slice (3 MB) stays in cache through conversion,
# log-softmax, gather and rank (half the time of 64-row slices). On CUDA: fewer, larger launches.
_LM_HEAD_ROWS = {"cpu": (256, 16), "cuda": (512, 512)}


class EngineInputError(ValueError):
    """A request the engine cannot serve (too long, bad token id ...): HTTP 400."""


@dataclass(frozen=True)
class SamplingOptions:
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS


@dataclass
class Sample:
    """One generated continuation."""

    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]] | None
    finish_reason: str
    stop_reason: int | str | None
    text: str = ""


@dataclass
class PromptScores:
    """Per-position log-prob of each prompt token given the tokens before it (position 0: None)."""

    token_logprobs: list[float | None]
    ranks: list[int | None]
    top: list[list[tuple[int, float]]] | None = None


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


@dataclass
class _Scored:
    scores: PromptScores
    last_logprobs: torch.Tensor | None  # [V] full-distribution log-probs after the prompt


class _DecodeState:
    """Per-sample bookkeeping of one generation request (the same for every decode loop)."""

    def __init__(self, engine: Engine, opts: SamplingOptions) -> None:
        self.engine = engine
        self.opts = opts
        n = opts.n
        self.stop_ids = set(opts.stop_token_ids)
        self.eos_ids = set() if opts.ignore_eos else set(engine.eos_token_ids)
        self.ending_ids = self.eos_ids | self.stop_ids
        self.min_banned = sorted(
            (set(engine.eos_token_ids) | self.stop_ids) if opts.min_tokens > 0 else set()
        )
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.lps: list[list[float]] = [[] for _ in range(n)]
        self.tops: list[list[list[tuple[int, float]]]] = [[] for _ in range(n)]
        self.finish: list[tuple[str, int | str | None]] = [("length", None)] * n
        self.active = list(range(n))  # sample index of each row being decoded
        self.step = 0

    def banned(self, step: int) -> list[int]:
        return self.min_banned if step < self.opts.min_tokens else []

    def record(
        self, drawn: list[int], chosen: list[float], top: tuple[list[list[float]], list[list[int]]]
    ) -> list[int]:
        """One step's tokens of the active rows; returns the rows (positions in ``active``) that go on."""
        opts = self.opts
        top_vals, top_ids = top
        still: list[int] = []
        for row, seq in enumerate(self.active):
            tok = int(drawn[row])
            value = float(chosen[row])
            self.tokens[seq].append(tok)
            self.lps[seq].append(value)
            if opts.logprobs is not None:
                entry = [(tok, value)]
                if top_ids:
                    entry += [(i, v) for i, v in zip(top_ids[row], top_vals[row], strict=True) if i != tok]
                self.tops[seq].append(entry)
            if tok in self.ending_ids:
                self.finish[seq] = ("stop", tok if tok in self.stop_ids and tok not in self.eos_ids else None)
            elif opts.stop and (hit := self.engine._stop_string_hit(self.tokens[seq], opts)) is not None:
                self.finish[seq] = ("stop", hit)
            else:
                still.append(row)
        return still

    def keep(self, rows: list[int]) -> None:
        self.active = [self.active[r] for r in rows]

    def samples(self) -> list[Sample]:
        out: list[Sample] = []
        for seq in range(self.opts.n):
            reason, stop_reason = self.finish[seq]
            sample = Sample(
                token_ids=self.tokens[seq],
                logprobs=self.lps[seq],
                top_logprobs=self.tops[seq] if self.opts.logprobs is not None else None,
                finish_reason=reason,
                stop_reason=stop_reason,
            )
            sample.text = self.engine._sample_text(sample, self.opts)
            out.append(sample)
        return out


def _host_top(
    top: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[list[list[float]], list[list[int]]]:
    if top is None:
        return [], []
    return top[0].tolist(), top[1].tolist()


def _start_readback(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.cuda.Event | None]:
    """Copy device tensors to (pinned) host memory without waiting; the event marks their arrival."""
    if not tensors or tensors[0].device.type != "cuda":
        return tensors, None
    host = [t.to("cpu", non_blocking=True) for t in tensors]
    event = torch.cuda.Event()
    event.record()
    return host, event


class _PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` that writes into a preallocated buffer instead of ``torch.cat`` per step.

    Decoding with the stock layer copies the whole cache at every step (O(n·L²) memory traffic); here
    the buffer holds ``capacity`` positions (prompt + max_tokens) and grows only if exceeded.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self._k is None or self._v is None or end > self._k.shape[-2]:
            self._grow(key_states, value_states, max(end, self.capacity))
        assert self._k is not None and self._v is not None
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self._publish()
        return self._k[:, :, :end], self._v[:, :, :end]

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, capacity: int) -> None:
        batch, heads, _, _ = key_states.shape
        k = key_states.new_empty((batch, heads, capacity, key_states.shape[-1]))
        v = value_states.new_empty((batch, heads, capacity, value_states.shape[-1]))
        if self._k is not None and self._v is not None and self.length:
            k[:, :, : self.length] = self._k[:, :, : self.length]
            v[:, :, : self.length] = self._v[:, :, : self.length]
        self._k, self._v = k, v

    def _publish(self) -> None:
        assert self._k is not None and self._v is not None
        self.keys = self._k[:, :, : self.length]
        self.values = self._v[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._k is not None and self._v is not None:
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)
            self._publish()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._k is not None and self._v is not None:
            self._k = self._k[indices]
            self._v = self._v[indices]
            self._publish()


def _decode_cache(config: Any, capacity: int) -> DynamicCache:
    """A ``DynamicCache`` whose full-attention layers are preallocated for ``capacity`` positions."""
    cache = DynamicCache(config=config)
    cache.layers = [
        _PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers
    ]
    return cache


SAMPLE_BLOCK = 256  # tokens per block of the two-level CDF (about √vocab for 50k-token vocabularies)


def inverse_cdf_sample(
    probs: torch.Tensor, uniforms: torch.Tensor, block: int = SAMPLE_BLOCK
) -> torch.Tensor:
    """Token ``j`` per row with ``CDF[j-1] <= u·total < CDF[j]``: ``probs`` [rows, V] (unnormalised,
    ≥ 0, positive total), ``uniforms`` [rows] in [0, 1), float64 arithmetic.

    Two levels, the same token as one float64 cumulative sum over the whole vocabulary: the block
    whose cumulative mass passes ``u·total`` (float64 sums of ``block`` tokens, a cumulative sum over
    V/block of them), then the token inside that block (a cumulative sum of ``block`` values). Why:
    a float64 cumulative sum over 49k tokens runs sequentially per row (3.1 ms for 8 rows on a
    2-core CPU, 0.5 ms this way). A token of probability 0 is never drawn (its interval is empty;
    rounding at the ends of an interval is clamped into it).
    """
    rows, vocab = probs.shape
    pad = (-vocab) % block
    padded = F.pad(probs, (0, pad)) if pad else probs
    blocks = padded.reshape(rows, -1, block)
    block_cdf = blocks.sum(dim=-1, dtype=torch.float64).cumsum(dim=-1)  # [rows, V / block]
    total = block_cdf[:, -1:]
    zero = torch.zeros_like(total)
    target = torch.minimum(uniforms.to(torch.float64)[:, None] * total, torch.nextafter(total, zero))
    chosen_block = torch.searchsorted(block_cdf, target, right=True)  # [rows, 1]: its mass passes target
    before = torch.where(chosen_block > 0, block_cdf.gather(1, (chosen_block - 1).clamp(min=0)), zero)
    inner = blocks.gather(1, chosen_block[:, :, None].expand(-1, -1, block))[:, 0]
    inner_cdf = inner.cumsum(dim=-1, dtype=torch.float64)  # [rows, block]
    inner_total = inner_cdf[:, -1:]
    rest = torch.minimum((target - before).clamp(min=0.0), torch.nextafter(inner_total, zero))
    within = torch.searchsorted(inner_cdf, rest, right=True)
    return (chosen_block * block + within)[:, 0]


class Engine:
    """One loaded model serving generation and scoring requests (thread safe, see module docs)."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_model_len: int | None = None,
        score_token_budget: int | None = None,
        max_logprobs: int = 20,
        prefix_sharing: bool = True,
        min_shared_prefix: int = 16,
        decode: DecodeMode | None = None,
        force_ignore_eos: bool | None = None,
    ) -> None:
        if max_model_len is None or score_token_budget is None or decode is None or force_ignore_eos is None:
            from app.settings import get_settings

            settings = get_settings()
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
            self.fast_path_reason = fast_decode.unsupported_reason(self.model)
        if self.fast_path_reason is None:
            self.fast = fast_decode.FastDecoder(
                self.model,
                graphs=decode == "fast" and self.device.type == "cuda",
                on_forward=self._count_forward,
            )
        else:
            log.info("generation uses the transformers loop: %s", self.fast_path_reason)
        self.decode_mode: str = decode if self.fast is not None else "legacy"

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
        """Serve one ``/v1/completions`` request (blocking; takes the engine lock)."""
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
        with self.lock, torch.inference_mode():
            generator = torch.Generator(device=self.device).manual_seed(seed % (2**63))
            results = [PromptResult(prompt_ids=p, scores=None) for p in prompt_lists]
            last: list[torch.Tensor | None] = [None] * len(prompt_lists)
            if prompt_logprobs is not None:
                scored = self._score(prompt_lists, top_k=prompt_logprobs, keep_last=options.max_tokens == 1)
                for result, item, k in zip(results, scored, range(len(scored)), strict=True):
                    result.scores = item.scores
                    last[k] = item.last_logprobs
            self.stats.prompt_tokens += sum(len(p) for p in prompt_lists)
            if options.max_tokens > 0:
                for k, result in enumerate(results):
                    result.samples = self._generate(result.prompt_ids, options, generator, last[k])
                    self.stats.generation_tokens += sum(len(s.token_ids) for s in result.samples)
            return results

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
    ) -> list[PromptResult]:
        """:meth:`complete` on the engine's own thread (never blocks the event loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(self.complete, prompts, options, prompt_logprobs)
        )

    async def arun(self, fn: Any, *args: Any) -> Any:
        """Run any blocking engine helper on the engine thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --------------------------------------------------------------------------------- sampling
    def processed_logprobs(
        self, logits: torch.Tensor, temperature: float, top_p: float, banned: Sequence[int] = ()
    ) -> torch.Tensor:
        """vLLM's processed log-probs of ``logits`` [B, V]: ``log_softmax(top_p(logits / T))``."""
        logits = logits.float()
        if banned:
            logits = logits.clone()
            logits[:, list(banned)] = float("-inf")
        temp = temperature if temperature >= SAMPLING_EPS else 1.0
        if temp != 1.0:
            logits = logits / temp
        if top_p < 1.0:
            logits = self._top_p_filter(logits, top_p)
        return torch.log_softmax(logits, dim=-1)

    @staticmethod
    def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
        """Keep the most likely tokens whose preceding mass is < p (vLLM's nucleus), mask the rest.

        Equivalent to vLLM's ascending sort + ``cumsum <= 1 - p`` mask, but looks only at the top-k
        candidates (k grows until they hold mass ≥ p in every row), avoiding a full-vocabulary sort.
        """
        vocab = logits.shape[-1]
        probs = logits.softmax(dim=-1)
        k = min(vocab, 256)
        while True:
            top_probs, top_idx = probs.topk(k, dim=-1)  # sorted, most likely first
            if k == vocab or bool((top_probs.sum(dim=-1) >= top_p).all()):
                break
            k = min(vocab, k * 8)
        keep_top = (top_probs.cumsum(dim=-1) - top_probs) < top_p
        keep_top[:, 0] = True
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, top_idx, keep_top)
        return logits.masked_fill(~keep, float("-inf"))

    @staticmethod
    def _draw(logprobs: torch.Tensor, greedy: bool, generator: torch.Generator) -> torch.Tensor:
        """One token per row from ``exp(logprobs)``: argmax when greedy, else inverse-CDF sampling.

        One uniform draw per row from the request's generator (cheap and reproducible), inverted
        through the float64 CDF by :func:`inverse_cdf_sample` (no token's probability is distorted by
        rounding).
        """
        best = logprobs.argmax(dim=-1)
        if greedy:
            return best
        uniforms = torch.rand(
            (logprobs.shape[0],), generator=generator, device=logprobs.device, dtype=torch.float64
        )
        drawn = inverse_cdf_sample(logprobs.exp(), uniforms)
        return torch.where(drawn >= logprobs.shape[-1], best, drawn)  # NaN rows (a broken model)

    def _forward_last(self, input_ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        self.stats.forward_passes += 1
        return out.logits[:, -1, :].float()

    def _generate(
        self,
        prompt: list[int],
        opts: SamplingOptions,
        generator: torch.Generator,
        first_logprobs: torch.Tensor | None = None,
    ) -> list[Sample]:
        if self.fast is None or (first_logprobs is not None and opts.max_tokens == 1):
            return self._generate_legacy(prompt, opts, generator, first_logprobs)
        return self._generate_fast(prompt, opts, generator)

    def _generate_legacy(
        self,
        prompt: list[int],
        opts: SamplingOptions,
        generator: torch.Generator,
        first_logprobs: torch.Tensor | None = None,
    ) -> list[Sample]:
        """The transformers loop: ``DynamicCache`` with preallocated layers, finished rows dropped."""
        n = opts.n
        max_tokens = opts.max_tokens
        cache = _decode_cache(self.model.config, len(prompt) + max_tokens)
        if first_logprobs is not None and max_tokens == 1:
            logits = first_logprobs[None, :].expand(n, -1)
        else:
            ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
            logits = self._forward_last(ids, cache)
            if n > 1:
                cache.batch_repeat_interleave(n)
                logits = logits.expand(n, -1)
        state = _DecodeState(self, opts)
        for step in range(max_tokens):
            drawn, chosen, top = self._sample_step(logits, opts, generator, state.banned(step))
            still = state.record(drawn.tolist(), chosen.tolist(), _host_top(top))
            if not still or step == max_tokens - 1:
                break
            if len(still) < len(state.active):
                index = torch.tensor(still, dtype=torch.long, device=self.device)
                cache.batch_select_indices(index)
                drawn = drawn[index]
                state.keep(still)
            logits = self._forward_last(drawn[:, None], cache)
        return state.samples()

    def _generate_fast(
        self, prompt: list[int], opts: SamplingOptions, generator: torch.Generator
    ) -> list[Sample]:
        """Static-cache decoding (:mod:`workers.fast_decode`), the same sampling as the legacy loop.

        With ``overlap`` (CUDA) step t+1 is queued before the tokens of step t are read back (the
        copies to the host complete first, the forward runs while Python does the bookkeeping), and
        finished rows stay in the batch; the random draws are still one per unfinished row per step,
        in row order, as in the legacy loop, so a seed gives the same samples either way.
        """
        assert self.fast is not None
        n, max_tokens = opts.n, opts.max_tokens
        batch = self.fast.begin(len(prompt), n, max_tokens)
        logits = batch.prefill(prompt)
        if n > 1:
            logits = logits.expand(n, -1)
        state = _DecodeState(self, opts)
        active_rows: torch.Tensor | None = None  # device index of the unfinished rows (overlap mode)
        for step in range(max_tokens):
            drawn, chosen, top = self._sample_step(logits, opts, generator, state.banned(step))
            last = step == max_tokens - 1
            if batch.compact:
                still = state.record(drawn.tolist(), chosen.tolist(), _host_top(top))
                if not still or last:
                    break
                if len(still) < len(state.active):
                    batch.keep(still)
                    drawn = drawn[torch.tensor(still, dtype=torch.long, device=self.device)]
                    state.keep(still)
                batch.launch(drawn)
                logits = batch.logits(count=len(state.active))
                continue
            host, ready = _start_readback([drawn, chosen, *(top or ())])
            if not last:
                batch.launch(drawn, active_rows)  # queued behind the copies: runs while we read them
            if ready is not None:
                ready.synchronize()
            still = state.record(
                host[0].tolist(), host[1].tolist(), (host[2].tolist(), host[3].tolist()) if top else ([], [])
            )
            if not still or last:
                break
            if len(still) < len(state.active):
                state.keep(still)
                active_rows = torch.tensor(state.active, dtype=torch.long, device=self.device)
            logits = batch.logits(active_rows, count=n)
        return state.samples()

    def _sample_step(
        self, logits: torch.Tensor, opts: SamplingOptions, generator: torch.Generator, banned: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Draw one token per row: (token ids, their processed log-probs, top-k values and ids)."""
        logprobs = self.processed_logprobs(logits, opts.temperature, opts.top_p, banned)
        drawn = self._draw(logprobs, opts.greedy, generator)
        chosen = logprobs.gather(1, drawn[:, None])[:, 0]
        k = opts.logprobs or 0
        top = None
        if opts.logprobs is not None and k > 0:
            values, ids = torch.topk(logprobs, k, dim=-1)
            top = (values, ids)
        return drawn, chosen, top

    def _stop_string_hit(self, token_ids: list[int], opts: SamplingOptions) -> str | None:
        # Only the tail can contain a new match: decode a short window.
        tail = self.decode(token_ids[-8:], skip_special_tokens=opts.skip_special_tokens)
        for stop in opts.stop:
            if stop and stop in tail:
                full = self.decode(token_ids, skip_special_tokens=opts.skip_special_tokens)
                if stop in full:
                    return stop
        return None

    def _sample_text(self, sample: Sample, opts: SamplingOptions) -> str:
        ids = sample.token_ids
        if sample.finish_reason == "stop" and not isinstance(sample.stop_reason, str) and ids:
            ids = ids[:-1]  # the EOS / stop token is returned in token_ids but not in the text
        text = self.decode(ids, skip_special_tokens=opts.skip_special_tokens)
        if isinstance(sample.stop_reason, str):
            cut = text.find(sample.stop_reason)
            if cut >= 0:
                text = text[: cut + (len(sample.stop_reason) if opts.include_stop_str_in_output else 0)]
        return text

    # ---------------------------------------------------------------------------------- scoring
    def _score(self, prompts: list[list[int]], *, top_k: int, keep_last: bool) -> list[_Scored]:
        out: list[_Scored | None] = [None] * len(prompts)
        groups = self._prefix_groups(prompts) if self.prefix_sharing else []
        grouped = {i for _, members in groups for i in members}
        plain = [i for i in range(len(prompts)) if i not in grouped]
        for chunk in self._chunks(plain, [len(prompts[i]) for i in plain], extra=0):
            for i, item in zip(chunk, self._score_plain(prompts, chunk, top_k, keep_last), strict=True):
                out[i] = item
        for prefix_len, members in groups:
            for i, item in zip(
                members, self._score_group(prompts, members, prefix_len, top_k, keep_last), strict=True
            ):
                out[i] = item
        assert all(item is not None for item in out)
        return [item for item in out if item is not None]

    def _chunks(self, indices: list[int], lengths: list[int], extra: int) -> list[list[int]]:
        """Split ``indices`` (longest first) into padded batches of ≤ ``score_token_budget`` tokens."""
        order = sorted(range(len(indices)), key=lambda j: -lengths[j])
        chunks: list[list[int]] = []
        current: list[int] = []
        width = 0
        for j in order:
            new_width = max(width, lengths[j])
            fits = (len(current) + 1) * new_width <= self.score_token_budget
            fits = fits and (len(current) + 1) * extra <= 4 * self.score_token_budget
            if current and not fits:
                chunks.append(current)
                current, new_width = [], lengths[j]
            current.append(indices[j])
            width = new_width
        if current:
            chunks.append(current)
        return chunks

    def _prefix_groups(self, prompts: list[list[int]]) -> list[tuple[int, list[int]]]:
        """Groups of prompts sharing a prefix worth computing once: ``(prefix_len, members)``."""
        if len(prompts) < 2:
            return []
        order = sorted(range(len(prompts)), key=lambda i: prompts[i])

        def lcp(a: list[int], b: list[int]) -> int:
            m = min(len(a), len(b))
            i = 0
            while i < m and a[i] == b[i]:
                i += 1
            return i

        groups: list[tuple[int, list[int]]] = []
        members = [order[0]]
        shared = len(prompts[order[0]]) - 1
        for i in order[1:]:
            common = min(shared, lcp(prompts[members[-1]], prompts[i]), len(prompts[i]) - 1)
            # Extend while the tokens saved do not shrink: m·common ≥ (m−1)·shared.
            if common >= self.min_shared_prefix and len(members) * common >= (len(members) - 1) * shared:
                members.append(i)
                shared = common
            else:
                if len(members) > 1:
                    groups.append((shared, members))
                members = [i]
                shared = len(prompts[i]) - 1
        if len(members) > 1:
            groups.append((shared, members))
        return groups

    def _hidden(self, **kwargs: Any) -> torch.Tensor:
        out = self._decoder(**kwargs)
        self.stats.forward_passes += 1
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    def _rows_logprobs(
        self, hidden: torch.Tensor, targets: torch.Tensor, top_k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """For hidden rows [N, H] and target ids [N]: log-prob, rank, top-k values and ids."""
        if hidden.shape[0] == 0:
            empty = torch.zeros((0,), device=hidden.device)
            top_empty = torch.zeros((0, top_k), device=hidden.device) if top_k > 0 else None
            return empty, empty.long(), top_empty, top_empty.long() if top_empty is not None else None
        lp_parts, rank_parts, tv_parts, ti_parts = [], [], [], []
        product_rows, slice_rows = _LM_HEAD_ROWS.get(hidden.device.type, (512, 512))
        for start in range(0, hidden.shape[0], product_rows):
            logits = self._lm_head(hidden[start : start + product_rows])
            for offset in range(0, logits.shape[0], slice_rows):
                logprobs = self._normalise(logits[offset : offset + slice_rows])
                first = start + offset
                lp = logprobs.gather(1, targets[first : first + logprobs.shape[0], None])[:, 0]
                lp_parts.append(lp)
                rank_parts.append(torch.count_nonzero(logprobs > lp[:, None], dim=-1) + 1)
                if top_k > 0:
                    tv, ti = torch.topk(logprobs, top_k, dim=-1)
                    tv_parts.append(tv)
                    ti_parts.append(ti)
        return (
            torch.cat(lp_parts),
            torch.cat(rank_parts),
            torch.cat(tv_parts) if top_k > 0 else None,
            torch.cat(ti_parts) if top_k > 0 else None,
        )

    def _logprobs_of(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._normalise(self._lm_head(hidden))

    def _normalise(self, logits: torch.Tensor) -> torch.Tensor:
        """Full-distribution fp32 log-probs of raw lm_head rows (softcap first, as the model does)."""
        logits = logits.float()
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return torch.log_softmax(logits, dim=-1)

    def _assemble(
        self,
        prompt: list[int],
        lp: list[float],
        rank: list[int],
        top: tuple[list[list[float]], list[list[int]]] | None,
    ) -> PromptScores:
        """Positions 1..L-1 of ``prompt`` from flat per-position lists (index t-1 ↔ position t)."""
        token_logprobs: list[float | None] = [None, *lp]
        ranks: list[int | None] = [None, *rank]
        top_entries: list[list[tuple[int, float]]] | None = None
        if top is not None:
            values, ids = top
            top_entries = [[]] + [list(zip(ids[t], values[t], strict=True)) for t in range(len(prompt) - 1)]
        return PromptScores(token_logprobs=token_logprobs, ranks=ranks, top=top_entries)

    def _chunk_rows(
        self,
        hidden: torch.Tensor,
        prompts: list[list[int]],
        chunk: list[int],
        offset: int,
        top_k: int,
        keep_last: bool,
    ) -> tuple[
        list[float],
        list[int],
        list[list[float]] | None,
        list[list[int]] | None,
        list[tuple[int, int]],
        torch.Tensor | None,
    ]:
        """Log-probs of a forward pass over ``prompts[i][offset:]`` for each ``i`` in ``chunk`` (row b of
        ``hidden`` holds member b from position ``offset``): flat per-position lists, each member's span
        in them, and (``keep_last``) the full log-prob rows after each member's last token."""
        rows, targets, spans = [], [], []
        start = 0
        for b, i in enumerate(chunk):
            length = len(prompts[i]) - offset
            rows.append(hidden[b, : length - 1])
            targets.extend(prompts[i][offset + 1 :])
            spans.append((start, start + length - 1))
            start += length - 1
        flat = torch.cat(rows) if rows else hidden.new_zeros((0, hidden.shape[-1]))
        lp_t, rank_t, tv_t, ti_t = self._rows_logprobs(
            flat, torch.tensor(targets, dtype=torch.long, device=self.device), top_k
        )
        last_rows = None
        if keep_last:
            last_rows = self._logprobs_of(
                torch.stack([hidden[b, len(prompts[i]) - offset - 1] for b, i in enumerate(chunk)])
            )
        return (
            lp_t.tolist(),
            rank_t.tolist(),
            tv_t.tolist() if tv_t is not None else None,
            ti_t.tolist() if ti_t is not None else None,
            spans,
            last_rows,
        )

    def _score_plain(
        self, prompts: list[list[int]], chunk: list[int], top_k: int, keep_last: bool
    ) -> list[_Scored]:
        width = max(len(prompts[i]) for i in chunk)
        pad = int(self.tokenizer.pad_token_id or 0)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, i in enumerate(chunk):
            ids[b, : len(prompts[i])] = torch.tensor(prompts[i])
            mask[b, : len(prompts[i])] = 1
        positions = torch.arange(width, dtype=torch.long)[None, :].expand(len(chunk), -1)
        hidden = self._hidden(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=False,
        )
        lp, rank, tv, ti, spans, last_rows = self._chunk_rows(hidden, prompts, chunk, 0, top_k, keep_last)
        out = []
        for b, i in enumerate(chunk):
            s, e = spans[b]
            top = (tv[s:e], ti[s:e]) if tv is not None and ti is not None else None
            out.append(
                _Scored(
                    scores=self._assemble(prompts[i], lp[s:e], rank[s:e], top),
                    last_logprobs=last_rows[b] if last_rows is not None else None,
                )
            )
        return out

    def _score_group(
        self, prompts: list[list[int]], members: list[int], prefix_len: int, top_k: int, keep_last: bool
    ) -> list[_Scored]:
        prefix = prompts[members[0]][:prefix_len]
        cache = DynamicCache(config=self.model.config)
        prefix_hidden = self._hidden(
            input_ids=torch.tensor([prefix], dtype=torch.long, device=self.device),
            past_key_values=cache,
            use_cache=True,
        )[0]
        # Positions 1..P-1 are shared; row P-1 predicts each member's first suffix token.
        shared_lp, shared_rank, shared_tv, shared_ti = self._rows_logprobs(
            prefix_hidden[: prefix_len - 1],
            torch.tensor(prefix[1:], dtype=torch.long, device=self.device),
            top_k,
        )
        boundary = self._logprobs_of(prefix_hidden[prefix_len - 1 : prefix_len])[0]
        shared = (
            shared_lp.tolist(),
            shared_rank.tolist(),
            shared_tv.tolist() if shared_tv is not None else None,
            shared_ti.tolist() if shared_ti is not None else None,
        )
        boundary_top = torch.topk(boundary, top_k) if top_k > 0 else None
        out: dict[int, _Scored] = {}
        lengths = [len(prompts[i]) - prefix_len for i in members]
        for chunk in self._chunks(members, lengths, extra=prefix_len):
            width = max(len(prompts[i]) - prefix_len for i in chunk)
            pad = int(self.tokenizer.pad_token_id or 0)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), prefix_len + width), dtype=torch.long)
            mask[:, :prefix_len] = 1
            for b, i in enumerate(chunk):
                suffix = prompts[i][prefix_len:]
                ids[b, : len(suffix)] = torch.tensor(suffix)
                mask[b, prefix_len : prefix_len + len(suffix)] = 1
            positions = torch.arange(prefix_len, prefix_len + width, dtype=torch.long)[None, :]
            chunk_cache = copy.deepcopy(cache)
            chunk_cache.batch_repeat_interleave(len(chunk))
            hidden = self._hidden(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.expand(len(chunk), -1).to(self.device),
                past_key_values=chunk_cache,
                use_cache=True,
            )
            del chunk_cache
            lp, rank, tv, ti, spans, last_rows = self._chunk_rows(
                hidden, prompts, chunk, prefix_len, top_k, keep_last
            )
            for b, i in enumerate(chunk):
                s, e = spans[b]
                first = prompts[i][prefix_len]
                first_lp = float(boundary[first])
                first_rank = int((boundary > boundary[first]).sum()) + 1
                member_lp = [*shared[0], first_lp, *lp[s:e]]
                member_rank = [*shared[1], first_rank, *rank[s:e]]
                top = None
                if top_k > 0 and shared[2] is not None and shared[3] is not None:
                    assert boundary_top is not None
                    top = (
                        [*shared[2], boundary_top.values.tolist(), *(tv[s:e] if tv is not None else [])],
                        [*shared[3], boundary_top.indices.tolist(), *(ti[s:e] if ti is not None else [])],
                    )
                out[i] = _Scored(
                    scores=self._assemble(prompts[i], member_lp, member_rank, top),
                    last_logprobs=last_rows[b] if last_rows is not None else None,
                )
        return [out[i] for i in members]


def load_engine(model: str, device: str = "auto", dtype: str | None = None) -> Engine:
    """Load ``model`` (see :mod:`workers.models`) and wrap it in an :class:`Engine` (blocking).
    ``dtype`` None: the WORKER_DTYPE setting."""
    if dtype is None:
        from app.settings import get_settings

        dtype = get_settings().worker_dtype
    return Engine(load_model(model, device, dtype))
