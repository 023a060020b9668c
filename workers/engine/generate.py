"""Generation: :class:`Decoder`, the serial decode loops behind :meth:`Engine.complete` with
``max_tokens`` > 0 (legacy and fast), each step being :meth:`workers.engine.sampling.DecodeState.step`.
Imports torch, transformers' cache classes, :mod:`workers.engine.sampling`,
:mod:`workers.engine.fast_decode` and :mod:`workers.engine.types`. See docs/DESIGN.md (the worker engine).

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

from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from workers.engine.fast_decode import DecodeBatch, FastDecoder
from workers.engine.sampling import DecodeState, HostDraw, SamplingOptions, TextDecoder
from workers.engine.types import Sample


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


class Decoder:
    """The serial decode loops of one model (see the module docs); finished samples as :class:`Sample`."""

    def __init__(
        self,
        model: PreTrainedModel,
        device: torch.device,
        fast: FastDecoder | None,
        eos_token_ids: frozenset[int],
        text: TextDecoder,
        on_forward: Callable[[], None],
    ) -> None:
        self.model = model
        self.device = device
        self.fast = fast  # None: the legacy loop (WORKER_DECODE=legacy, or a model it cannot run)
        self.eos_token_ids = eos_token_ids
        self.text = text
        self.on_forward = on_forward

    def new_state(self, opts: SamplingOptions, generators: list[torch.Generator]) -> DecodeState:
        return DecodeState(opts, self.eos_token_ids, generators, self.text)

    def generate(
        self,
        prompt: list[int],
        opts: SamplingOptions,
        generators: list[torch.Generator],
        first_logits: torch.Tensor | None = None,
    ) -> list[Sample]:
        """``opts.n`` samples of ``prompt``; ``first_logits``: the scoring pass's logits after it."""
        if first_logits is not None and opts.max_tokens == 1:
            return self.first_token(first_logits, opts, generators)
        if self.fast is None:
            return self._generate_legacy(prompt, opts, generators)
        return self._generate_fast(prompt, opts, generators)

    def first_token(
        self, first_logits: torch.Tensor, opts: SamplingOptions, generators: list[torch.Generator]
    ) -> list[Sample]:
        """A scoring request's one sampled token, drawn from its scoring pass's logits (no forward)."""
        state = self.new_state(opts, generators)
        state.step(first_logits[None, :].expand(opts.n, -1), _no_rows_dropped)
        return state.samples()

    def _forward_last(self, input_ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        self.on_forward()
        return out.logits[:, -1, :].float()

    def _generate_legacy(
        self, prompt: list[int], opts: SamplingOptions, generators: list[torch.Generator]
    ) -> list[Sample]:
        """The transformers loop: ``DynamicCache`` with preallocated layers, finished rows dropped."""
        cache = _decode_cache(self.model.config, len(prompt) + opts.max_tokens)
        logits = self._forward_last(torch.tensor([prompt], dtype=torch.long, device=self.device), cache)
        if opts.n > 1:
            cache.batch_repeat_interleave(opts.n)
            logits = logits.expand(opts.n, -1)

        def drop_rows(kept: list[int]) -> None:
            cache.batch_select_indices(torch.tensor(kept, dtype=torch.long, device=self.device))

        state = self.new_state(opts, generators)
        while (tokens := state.step(logits, drop_rows)) is not None:
            logits = self._forward_last(tokens[:, None], cache)
        return state.samples()

    def _generate_fast(
        self, prompt: list[int], opts: SamplingOptions, generators: list[torch.Generator]
    ) -> list[Sample]:
        """Static-cache decoding (:mod:`workers.engine.fast_decode`), the same steps as the legacy loop."""
        assert self.fast is not None
        batch = self.fast.begin(len(prompt), opts.n, opts.max_tokens)
        logits = batch.prefill(prompt)
        if opts.n > 1:
            logits = logits.expand(opts.n, -1)
        state = self.new_state(opts, generators)
        if not batch.compact:
            assert isinstance(batch, DecodeBatch)
            return _decode_overlapped(batch, state, logits)
        while (tokens := state.step(logits, batch.keep)) is not None:
            batch.launch(tokens)
            logits = batch.logits(count=len(state.active))
        return state.samples()


def _no_rows_dropped(kept: list[int]) -> None:
    """A one-step decode has no cache to compact."""


def _decode_overlapped(batch: DecodeBatch, state: DecodeState, logits: torch.Tensor) -> list[Sample]:
    """The fast loop with ``overlap`` (CUDA): step t+1 is queued before the tokens of step t are read
    back (the copies to the host complete first, the forward runs while Python does the bookkeeping),
    and finished rows stay in the batch; the draws are still :meth:`DecodeState.draw` /
    :meth:`DecodeState.take`, one per unfinished row per step, so a seed gives the same samples."""
    opts = state.opts
    active_rows: torch.Tensor | None = None  # device index of the unfinished rows
    while True:
        drawn, chosen, top = state.draw(logits)
        host, ready = _start_readback([drawn, chosen, *(top or ())])
        if state.steps < opts.max_tokens - 1:
            batch.launch(drawn, active_rows)  # queued behind the copies: runs while we read them
        if ready is not None:
            ready.synchronize()
        read: HostDraw = (
            host[0].tolist(),
            host[1].tolist(),
            (host[2].tolist(), host[3].tolist()) if top else ([], []),
        )
        before = len(state.active)
        kept = state.take(read)
        if kept is None:
            return state.samples()
        if len(kept) < before:
            active_rows = torch.tensor(state.active, dtype=torch.long, device=logits.device)
        logits = batch.logits(active_rows, count=opts.n)
