"""Batch-invariant scoring: teacher-forced prompt log-probs through
:class:`workers.engine.invariant.InvariantRunner` (the arithmetic decoding uses), as an
:class:`InvariantScoreJob` per request. Imports torch, :mod:`workers.engine.invariant`,
:mod:`workers.engine.prompt_logprobs` and :mod:`workers.engine.types`. See docs/DESIGN.md.

Invariant: every position's log-prob is a function of the sequence's tokens up to it alone: the same
bits whatever else is in the request, in which order, chunked how, shared prefix or not, and the same
bits the decode loop reports when it samples that token (``tests/integration/test_invariance.py``).
Prompts sharing a long prefix still compute it once (the prefix's K/V are copied into each member's
cache).

A job's units (a plain prompt, or a prefix group: its prefix and then its members' suffixes) each run
as two waves of spans (plain prompts and prefixes, then suffixes). The serial path
(:func:`score_invariant`) runs every unit's waves in budgeted chunks; the continuous-batching loop
(:mod:`workers.engine.batching`) runs the units it plans with other requests' spans in the same
:meth:`InvariantRunner.forward_spans` calls. Spans do not affect one another's bits, so both agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from workers.engine.invariant import InvariantRunner, RowCache, Span
from workers.engine.prompt_logprobs import Flat, LogprobHead, SharedPrefix, chunks, scored
from workers.engine.types import Scored


def score_invariant(job: InvariantScoreJob, budget: int, on_forward: Callable[[], None]) -> list[Scored]:
    """Every unit of ``job`` alone, in chunks of at most ``budget`` tokens (the serial path)."""
    for chunk in chunks(list(range(len(job.units))), job.costs, 0, budget):
        for first, stop in _runs(sorted(chunk)):
            job.run(range(first, stop), on_forward)
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
    shared: SharedPrefix | None = None


class InvariantScoreJob:
    """One request's batch-invariant scoring, unit by unit (see the module docs); ``groups``: its
    prompts' prefix groups (:func:`workers.engine.prompt_logprobs.prefix_groups`), or none."""

    def __init__(
        self,
        head: LogprobHead,
        inv: InvariantRunner,
        prompts: list[list[int]],
        groups: list[tuple[int, list[int]]],
        top_k: int,
        keep_last: bool,
    ) -> None:
        self.head, self.inv, self.prompts, self.top_k, self.keep_last = head, inv, prompts, top_k, keep_last
        grouped = {i for _, members in groups for i in members}
        self.units = [_Unit([i], 0) for i in range(len(prompts)) if i not in grouped]
        self.units += [_Unit(members, prefix_len) for prefix_len, members in groups]
        self.out: dict[int, Scored] = {}

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
                self._finish(i, self.head.flat(h[:-1], self.prompts[i][1:], self.top_k), h[-1])
            elif wave == 0:
                prefix = self.prompts[unit.members[0]][: unit.prefix_len]
                unit.shared = SharedPrefix.of(self.head, next(it), prefix, self.top_k)
            elif unit.prefix_len:
                for i in unit.members:
                    self._suffix(unit, i, next(it))
                unit.cache = None

    def run(self, units: range, on_forward: Callable[[], None]) -> None:
        """Both waves of ``units`` alone (the serial path)."""
        for wave in (0, 1):
            spans = self.spans(units, wave)
            if spans:
                on_forward()
                self.took(units, wave, self.inv.forward_spans(spans))

    def _suffix(self, unit: _Unit, i: int, hidden: torch.Tensor) -> None:
        assert unit.shared is not None
        prompt, prefix_len = self.prompts[i], unit.prefix_len
        suffix = self.head.flat(hidden[:-1], prompt[prefix_len + 1 :], self.top_k)
        self._finish(i, unit.shared.member(prompt[prefix_len], suffix), hidden[-1])

    def _finish(self, i: int, flat: Flat, last_hidden: torch.Tensor) -> None:
        # Raw fp32 logits, as the decode loop's prefill gives them: sampling normalises them itself,
        # so the sampled token's log-prob has the decode loop's bits (log-probs normalised again
        # would differ in the last bit).
        last = self.inv.logits(last_hidden[None])[0] if self.keep_last else None
        self.out[i] = scored(self.prompts[i], flat, last)

    def results(self) -> list[Scored]:
        return [self.out[i] for i in range(len(self.prompts))]
