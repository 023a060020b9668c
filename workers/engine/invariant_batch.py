"""One request's decode rows on the batch-invariant CPU path: :class:`InvariantBatch`, the
:class:`workers.engine.fast_decode.DecodeBatch` interface over :class:`InvariantRunner` (its caches:
the prompt's K/V shared by every row up to the last whole block, each row's own after that). Imports
torch and :mod:`workers.engine.invariant` only.
"""

from __future__ import annotations

import torch

from workers.engine.invariant import BLOCK, DecodeGroup, InvariantRunner, RowCache, Span, align


class InvariantBatch:
    """One request's decode rows for :class:`workers.engine.generate.GenerateMixin` (the
    :class:`workers.engine.fast_decode.DecodeBatch` interface, CPU, rows dropped as they finish)."""

    compact = True

    def __init__(self, runner: InvariantRunner, n: int, max_tokens: int, on_forward: object) -> None:
        self.runner = runner
        self.n = n
        self.max_tokens = max_tokens
        self.on_forward = on_forward
        self.position = 0
        self.own: RowCache = []
        self.own_start = 0
        self.prefix: RowCache | None = None
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
        """Set up the rows' caches from the prefilled ``span``; fp32 logits [1, V] after the prompt."""
        inv = self.runner
        cache = span.cache
        length = len(span.ids)
        start = (length // BLOCK) * BLOCK
        self.own_start = start
        if start:
            self.prefix = [(k[:, :start].contiguous(), v[:, :start].contiguous()) for k, v in cache]
        capacity = align(length + self.max_tokens - start)
        shape = (self.n, inv.kv_heads, capacity, inv.head_dim)
        self.own = []
        for keys, values in cache:
            own_k = torch.empty(shape, dtype=torch.float32)
            own_v = torch.zeros(shape, dtype=torch.float32)
            own_k[:, :, : length - start] = keys[None, :, start:length]
            own_v[:, :, : length - start] = values[None, :, start:length]
            self.own.append((own_k, own_v))
        self.position = length
        return inv.logits(hidden[-1:])

    def step_group(self, tokens: torch.Tensor) -> DecodeGroup:
        """The next decode step of the first ``len(tokens)`` rows as a :class:`DecodeGroup` (for
        :meth:`InvariantRunner.decode_groups`; then hand its logits to :meth:`stepped`)."""
        count = tokens.shape[0]
        own = [(k[:count], v[:count]) for k, v in self.own]
        return DecodeGroup(tokens, [self.position] * count, own, self.own_start, self.prefix)

    def stepped(self, logits: torch.Tensor) -> None:
        self._logits = logits
        self.position += 1

    def launch(self, tokens: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """One decode step of the first ``len(tokens)`` rows."""
        group = self.step_group(tokens)
        hidden = self.runner.decode(group.ids, group.positions, group.own, group.own_start, group.prefix)
        self._count()
        self.stepped(self.runner.logits(hidden))

    def logits(self, rows: torch.Tensor | None = None, count: int | None = None) -> torch.Tensor:
        assert self._logits is not None
        return self._logits if rows is None else self._logits.index_select(0, rows)

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (ascending): they move to the front."""
        index = torch.tensor(rows, dtype=torch.long)
        self.own = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.own]
