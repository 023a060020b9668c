"""Generation: the decode loops behind :meth:`Engine.complete` with ``max_tokens`` > 0, as the methods
of :class:`GenerateMixin` (part of :class:`workers.engine.core.Engine`), and each sample's bookkeeping
(tokens, log-probs, stop rules, text). Imports torch, transformers' cache classes and
:mod:`workers.engine.sampling` / :mod:`workers.engine.fast_decode`; never :mod:`workers.engine.core`
(only for type checking).

Generation (:meth:`Engine.complete` with ``max_tokens`` > 0)
    The prompt is prefilled once (batch 1); its KV cache is shared by the ``n`` samples, which then
    decode together, one forward pass per step for the whole batch. A sample stops on any EOS id of
    the model (unless ``ignore_eos``), on ``stop_token_ids`` / ``stop`` strings, or at ``max_tokens``.
    A request with several prompts decodes them one after the other (each prompt's n samples
    batched); a scoring request's single sampled token (``max_tokens: 1``) reuses the scoring pass.

    Decode modes (``WORKER_DECODE``; the random streams are the same in all three, one per sample):

    * ``fast`` (default): :mod:`workers.engine.fast_decode` — a static KV cache (one pool, reused across
      requests), a functional forward of Llama-family models and, on CUDA, one CUDA-graph replay per
      decode step; the next step is queued before the sampled tokens are read back, so the GPU never
      waits for Python. On CPU finished samples are dropped from the batch; on CUDA they keep
      decoding (ignored) so every step has the captured shape.
    * ``eager``: the same without CUDA graphs.
    * ``legacy``: the transformers forward with a preallocated ``DynamicCache``, finished samples
      dropped (``batch_select_indices``); also used for models the fast path does not support.

    ``WORKER_FORCE_IGNORE_EOS`` (benchmarks only) makes every generation request decode exactly
    ``max_tokens`` tokens, as if it had sent vLLM's ``ignore_eos: true``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from workers.engine.fast_decode import FastDecoder
from workers.engine.sampling import SamplingMixin, SamplingOptions

if TYPE_CHECKING:
    from workers.engine.core import EngineStats


@dataclass
class Sample:
    """One generated continuation."""

    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]] | None
    finish_reason: str
    stop_reason: int | str | None
    text: str = ""
    # perf_counter() when each token was drawn (the worker's TTFT / inter-token latency metrics)
    token_times: list[float] = field(default_factory=list)


class _DecodeState:
    """Per-sample bookkeeping of one generation request (the same for every decode loop)."""

    def __init__(self, engine: GenerateMixin, opts: SamplingOptions) -> None:
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
        self.times: list[list[float]] = [[] for _ in range(n)]
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
        now = time.perf_counter()
        for row, seq in enumerate(self.active):
            tok = int(drawn[row])
            value = float(chosen[row])
            self.tokens[seq].append(tok)
            self.times[seq].append(now)
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
                token_times=self.times[seq],
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


class GenerateMixin(SamplingMixin):
    """The generation methods of :class:`workers.engine.core.Engine` (which sets these attributes)."""

    model: PreTrainedModel
    device: torch.device
    eos_token_ids: frozenset[int]
    stats: EngineStats
    fast: FastDecoder | None
    decode: Callable[..., str]  # Engine.decode (token ids -> text)

    def _forward_last(self, input_ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        self.stats.forward_passes += 1
        return out.logits[:, -1, :].float()

    def _generate(
        self,
        prompt: list[int],
        opts: SamplingOptions,
        generators: list[torch.Generator],
        first_logits: torch.Tensor | None = None,
    ) -> list[Sample]:
        if self.fast is None or (first_logits is not None and opts.max_tokens == 1):
            return self._generate_legacy(prompt, opts, generators, first_logits)
        return self._generate_fast(prompt, opts, generators)

    def _generate_legacy(
        self,
        prompt: list[int],
        opts: SamplingOptions,
        generators: list[torch.Generator],
        first_logits: torch.Tensor | None = None,
    ) -> list[Sample]:
        """The transformers loop: ``DynamicCache`` with preallocated layers, finished rows dropped."""
        n = opts.n
        max_tokens = opts.max_tokens
        cache = _decode_cache(self.model.config, len(prompt) + max_tokens)
        if first_logits is not None and max_tokens == 1:
            logits = first_logits[None, :].expand(n, -1)
        else:
            ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
            logits = self._forward_last(ids, cache)
            if n > 1:
                cache.batch_repeat_interleave(n)
                logits = logits.expand(n, -1)
        state = _DecodeState(self, opts)
        for step in range(max_tokens):
            drawn, chosen, top = self._sample_step(
                logits, opts, [generators[s] for s in state.active], state.banned(step)
            )
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
        self, prompt: list[int], opts: SamplingOptions, generators: list[torch.Generator]
    ) -> list[Sample]:
        """Static-cache decoding (:mod:`workers.engine.fast_decode`), the same sampling as the legacy loop.

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
            drawn, chosen, top = self._sample_step(
                logits, opts, [generators[s] for s in state.active], state.banned(step)
            )
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
