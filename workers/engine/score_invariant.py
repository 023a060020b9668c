"""Batch-invariant scoring: teacher-forced prompt log-probs through
:class:`workers.engine.invariant.InvariantRunner` (the arithmetic decoding uses), as the method of
:class:`InvariantScoreMixin` (part of :class:`workers.engine.score.ScoreMixin`). Imports torch and
:mod:`workers.engine.invariant`; nothing else of ``workers``.

Every position's log-prob is a function of the sequence's tokens up to it alone: the same bits
whatever else is in the request, in which order, chunked how, shared prefix or not, and the same
bits the decode loop reports when it samples that token (``tests/unit/test_invariant.py``). Prompts
sharing a long prefix still compute it once (the prefix's K/V are copied into each member's cache).

A request's scoring is an :class:`InvariantScoreJob`: units (a plain prompt, or a prefix group: its
prefix and then its members' suffixes), each run as two waves of spans (plain prompts and prefixes,
then suffixes). The serial path runs every unit's waves in budgeted chunks; the continuous-batching
loop (:mod:`workers.engine.batching`) runs the units it plans with other requests' spans in the same
:meth:`InvariantRunner.forward_spans` calls. Spans do not affect one another's bits, so both agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from workers.engine.invariant import InvariantRunner, RowCache, Span

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
        job = InvariantScoreJob(self, inv, prompts, top_k, keep_last)
        for chunk in self._chunks(list(range(len(job.units))), job.costs, 0):
            for first, stop in _runs(sorted(chunk)):
                job.run(range(first, stop))
        return job.results()


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Ascending ``indices`` as ``(first, stop)`` runs of consecutive values."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


@dataclass
class _Unit:
    members: list[int]  # prompt indices
    prefix_len: int  # 0: a plain prompt (one member)
    cache: RowCache | None = None  # a group's prefix K/V (after wave 0)
    shared: Flat | None = None
    boundary: torch.Tensor | None = None
    boundary_top: Any = None


class InvariantScoreJob:
    """One request's batch-invariant scoring, unit by unit (see the module docs)."""

    def __init__(
        self,
        mixin: InvariantScoreMixin,
        inv: InvariantRunner,
        prompts: list[list[int]],
        top_k: int,
        keep_last: bool,
    ) -> None:
        self.m, self.inv, self.prompts, self.top_k, self.keep_last = mixin, inv, prompts, top_k, keep_last
        groups = mixin._prefix_groups(prompts) if mixin.prefix_sharing else []
        grouped = {i for _, members in groups for i in members}
        self.units = [_Unit([i], 0) for i in range(len(prompts)) if i not in grouped]
        self.units += [_Unit(members, prefix_len) for prefix_len, members in groups]
        self.out: dict[int, Any] = {}

    @property
    def costs(self) -> list[int]:
        """Tokens each unit puts through the model."""
        return [
            u.prefix_len + sum(len(self.prompts[i]) - u.prefix_len for i in u.members) for u in self.units
        ]

    @property
    def done(self) -> bool:
        return len(self.out) == len(self.prompts)

    def spans(self, units: range, wave: int) -> list[Span]:
        """Wave 0: the plain prompts and the groups' prefixes of ``units``; wave 1: the suffixes."""
        prompts, inv = self.prompts, self.inv
        spans: list[Span] = []
        for unit in (self.units[u] for u in units):
            if wave == 0 and not unit.prefix_len:
                prompt = prompts[unit.members[0]]
                spans.append(Span(prompt, 0, inv.new_cache(len(prompt))))
            elif wave == 0:
                unit.cache = inv.new_cache(max(len(prompts[i]) for i in unit.members))
                spans.append(Span(prompts[unit.members[0]][: unit.prefix_len], 0, unit.cache))
            elif unit.prefix_len:
                assert unit.cache is not None
                n = unit.prefix_len
                longest = max(len(prompts[i]) for i in unit.members)  # one capacity: one attention batch
                for i in unit.members:
                    spans.append(Span(prompts[i][n:], n, inv.copy_cache(unit.cache, n, longest)))
        return spans

    def took(self, units: range, wave: int, hidden: list[torch.Tensor]) -> None:
        """The final-normed hidden of :meth:`spans` ``(units, wave)``, in order."""
        it = iter(hidden)
        for unit in (self.units[u] for u in units):
            if wave == 0 and not unit.prefix_len:
                i = unit.members[0]
                h = next(it)
                self._finish(i, self.m._flat(h[:-1], self.prompts[i][1:], self.top_k), h[-1])
            elif wave == 0:
                h = next(it)
                prefix = self.prompts[unit.members[0]][: unit.prefix_len]
                unit.shared = self.m._flat(h[:-1], prefix[1:], self.top_k)
                unit.boundary = self.m._logprobs_of(h[-1:])[0]
                unit.boundary_top = torch.topk(unit.boundary, self.top_k) if self.top_k > 0 else None
            elif unit.prefix_len:
                for i in unit.members:
                    self._suffix(unit, i, next(it))
                unit.cache = None

    def run(self, units: range) -> None:
        """Both waves of ``units`` alone (the serial path)."""
        for wave in (0, 1):
            spans = self.spans(units, wave)
            if spans:
                self.m.stats.forward_passes += 1
                self.took(units, wave, self.inv.forward_spans(spans))

    def _suffix(self, unit: _Unit, i: int, hidden: torch.Tensor) -> None:
        prefix_len, shared, boundary = unit.prefix_len, unit.shared, unit.boundary
        assert shared is not None and boundary is not None
        lp, rank, tv, ti = self.m._flat(hidden[:-1], self.prompts[i][prefix_len + 1 :], self.top_k)
        first = self.prompts[i][prefix_len]
        first_lp = float(boundary[first])
        first_rank = int((boundary > boundary[first]).sum()) + 1
        merged_tv = merged_ti = None
        if unit.boundary_top is not None and shared[2] is not None and shared[3] is not None:
            merged_tv = [*shared[2], unit.boundary_top.values.tolist(), *(tv or [])]
            merged_ti = [*shared[3], unit.boundary_top.indices.tolist(), *(ti or [])]
        flat = ([*shared[0], first_lp, *lp], [*shared[1], first_rank, *rank], merged_tv, merged_ti)
        self._finish(i, flat, hidden[-1])

    def _finish(self, i: int, flat: Flat, last_hidden: torch.Tensor) -> None:
        from workers.engine.score import _Scored  # the result type (score imports this module)

        lp, rank, tv, ti = flat
        top = (tv, ti) if tv is not None and ti is not None else None
        # Raw fp32 logits, as the decode loop's prefill gives them: sampling normalises them itself,
        # so the sampled token's log-prob has the decode loop's bits (log-probs normalised again
        # would differ in the last bit).
        last = self.inv.logits(last_hidden[None])[0] if self.keep_last else None
        self.out[i] = _Scored(scores=self.m._assemble(self.prompts[i], lp, rank, top), first_logits=last)

    def results(self) -> list[Any]:
        return [self.out[i] for i in range(len(self.prompts))]
