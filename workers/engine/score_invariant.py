"""Batch-invariant scoring: teacher-forced prompt log-probs through
:class:`workers.engine.invariant.InvariantRunner` (the arithmetic decoding uses), as the method of
:class:`InvariantScoreMixin` (part of :class:`workers.engine.score.ScoreMixin`). Imports torch and
:mod:`workers.engine.invariant`; nothing else of ``workers``.

Every position's log-prob is a function of the sequence's tokens up to it alone: the same bits
whatever else is in the request, in which order, chunked how, shared prefix or not, and the same
bits the decode loop reports when it samples that token (``tests/unit/test_invariant.py``). Prompts
sharing a long prefix still compute it once (the prefix's K/V are copied into each member's cache).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from workers.engine.invariant import InvariantRunner, Span

Flat = tuple[list[float], list[int], list[list[float]] | None, list[list[int]] | None]


class InvariantScoreMixin:
    """``_score_invariant`` for :class:`workers.engine.score.ScoreMixin` (which provides the rest)."""

    _rows_logprobs: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]]
    _logprobs_of: Callable[[torch.Tensor], torch.Tensor]
    _assemble: Callable[..., Any]
    _chunks: Callable[[list[int], list[int], int], list[list[int]]]
    _prefix_groups: Callable[[list[list[int]]], list[tuple[int, list[int]]]]
    prefix_sharing: bool
    stats: Any

    def _flat(self, hidden: torch.Tensor, targets: list[int], top_k: int) -> Flat:
        lp, rank, tv, ti = self._rows_logprobs(hidden, torch.tensor(targets, dtype=torch.long), top_k)
        return (
            lp.tolist(),
            rank.tolist(),
            tv.tolist() if tv is not None else None,
            ti.tolist() if ti is not None else None,
        )

    def _score_invariant(
        self, inv: InvariantRunner, prompts: list[list[int]], top_k: int, keep_last: bool
    ) -> list[Any]:
        from workers.engine.score import _Scored  # the result type (score imports this module)

        out: dict[int, _Scored] = {}

        def finish(i: int, flat: Flat, last_hidden: torch.Tensor) -> None:
            lp, rank, tv, ti = flat
            top = (tv, ti) if tv is not None and ti is not None else None
            last = self._logprobs_of(last_hidden[None])[0] if keep_last else None
            out[i] = _Scored(scores=self._assemble(prompts[i], lp, rank, top), last_logprobs=last)

        groups = self._prefix_groups(prompts) if self.prefix_sharing else []
        grouped = {i for _, members in groups for i in members}
        plain = [i for i in range(len(prompts)) if i not in grouped]
        for chunk in self._chunks(plain, [len(prompts[i]) for i in plain], 0):
            spans = [Span(prompts[i], 0, inv.new_cache(len(prompts[i]))) for i in chunk]
            self.stats.forward_passes += 1
            for i, hidden in zip(chunk, inv.forward_spans(spans), strict=True):
                finish(i, self._flat(hidden[:-1], prompts[i][1:], top_k), hidden[-1])
        for prefix_len, members in groups:
            prefix = prompts[members[0]][:prefix_len]
            cache = inv.new_cache(max(len(prompts[i]) for i in members))
            self.stats.forward_passes += 1
            prefix_hidden = inv.forward_spans([Span(prefix, 0, cache)])[0]
            shared = self._flat(prefix_hidden[:-1], prefix[1:], top_k)
            boundary = self._logprobs_of(prefix_hidden[-1:])[0]
            boundary_top = torch.topk(boundary, top_k) if top_k > 0 else None
            lengths = [len(prompts[i]) - prefix_len for i in members]
            for chunk in self._chunks(members, lengths, prefix_len):
                spans = [
                    Span(
                        prompts[i][prefix_len:],
                        prefix_len,
                        inv.copy_cache(cache, prefix_len, len(prompts[i])),
                    )
                    for i in chunk
                ]
                self.stats.forward_passes += 1
                for i, hidden in zip(chunk, inv.forward_spans(spans), strict=True):
                    lp, rank, tv, ti = self._flat(hidden[:-1], prompts[i][prefix_len + 1 :], top_k)
                    first = prompts[i][prefix_len]
                    first_lp = float(boundary[first])
                    first_rank = int((boundary > boundary[first]).sum()) + 1
                    merged_tv = merged_ti = None
                    if boundary_top is not None and shared[2] is not None and shared[3] is not None:
                        merged_tv = [*shared[2], boundary_top.values.tolist(), *(tv or [])]
                        merged_ti = [*shared[3], boundary_top.indices.tolist(), *(ti or [])]
                    flat = (
                        [*shared[0], first_lp, *lp],
                        [*shared[1], first_rank, *rank],
                        merged_tv,
                        merged_ti,
                    )
                    finish(i, flat, hidden[-1])
        return [out[i] for i in range(len(prompts))]
