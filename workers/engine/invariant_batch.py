"""One request's decode rows on the batch-invariant CPU path: :class:`InvariantBatch`, the
:class:`workers.engine.fast_decode.DecodeBatch` interface over :class:`InvariantRunner` (its rows'
K/V in slots of a :class:`workers.engine.kv_pool.KVPool`: the batch loop's, shared by every request
it runs, or a pool of its own on the serial path). Imports torch, :mod:`workers.engine.invariant`
and :mod:`workers.engine.kv_pool` only. See docs/DESIGN.md (the worker engine).
"""

from __future__ import annotations

import torch

from workers.engine.invariant import DecodeGroup, InvariantRunner, Span
from workers.engine.kv_pool import KVPool, PoolRows


class InvariantBatch:
    """One request's decode rows for :class:`workers.engine.generate.Decoder` and the batch loop (the
    :class:`workers.engine.fast_decode.DecodeBatch` interface, CPU, rows dropped as they finish).
    Its slots are freed when its last row finishes or is dropped (:meth:`keep`), or by
    :meth:`release` (a request that ends early)."""

    compact = True

    def __init__(
        self, runner: InvariantRunner, n: int, max_tokens: int, on_forward: object, pool: KVPool | None = None
    ) -> None:
        self.runner = runner
        self.n = n
        self.max_tokens = max_tokens
        self.on_forward = on_forward
        self.pool = pool if pool is not None else runner.new_pool()
        self.position = 0
        self.rows: PoolRows | None = None
        self._logits: torch.Tensor | None = None

    def _count(self) -> None:
        if callable(self.on_forward):
            self.on_forward()

    def prefill(self, prompt: list[int]) -> torch.Tensor:
        """The prompt's forward (the scoring arithmetic): fp32 logits [1, V] after its last token."""
        span = self.prefill_span(prompt)
        hidden = self.runner.forward_spans([span])[0]
        self._count()
        return self.prefilled(span, hidden)

    def prefill_span(self, prompt: list[int]) -> Span:
        """The prompt as a :class:`Span` for :meth:`InvariantRunner.forward_spans` (run it, possibly
        with other sequences' spans, then hand its hidden to :meth:`prefilled`)."""
        return Span(prompt, 0, self.runner.new_cache(len(prompt)))

    def prefilled(self, span: Span, hidden: torch.Tensor) -> torch.Tensor:
        """Give the rows slots holding the prefilled ``span``'s K/V; fp32 logits [1, V] after it."""
        length = len(span.ids)
        self.release()
        self.rows = self.pool.allocate(self.n, length + self.max_tokens)
        self.pool.write_prompt(self.rows, span.cache, length)
        self.position = length
        return self.runner.logits(hidden[-1:])

    def step_group(self, tokens: torch.Tensor) -> DecodeGroup:
        """The next decode step of the rows as a :class:`DecodeGroup` (one token each, for
        :meth:`InvariantRunner.decode_groups`; then hand its logits to :meth:`stepped`)."""
        assert self.rows is not None, "prefill first"
        return DecodeGroup(tokens, self.position, self.rows)

    def stepped(self, logits: torch.Tensor) -> None:
        self._logits = logits
        self.position += 1

    def launch(self, tokens: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """One decode step of the rows (one token each)."""
        hidden = self.runner.decode_groups([self.step_group(tokens)])[0]
        self._count()
        self.stepped(self.runner.logits(hidden))

    def logits(self, rows: torch.Tensor | None = None, count: int | None = None) -> torch.Tensor:
        assert self._logits is not None
        return self._logits if rows is None else self._logits.index_select(0, rows)

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (ascending), renumbered from 0; the others' slots are freed."""
        if self.rows is not None:
            self.pool.keep(self.rows, rows)

    def release(self) -> None:
        """Free every row's slot (the request is done or gone)."""
        if self.rows is not None:
            self.pool.release(self.rows)
            self.rows = None
