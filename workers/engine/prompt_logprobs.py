"""The arithmetic both scorers share: hidden rows to full-distribution log-probs, ranks and top-k
(:class:`LogprobHead`), per-prompt assembly, budgeted chunks and prefix groups. Imports torch and
:mod:`workers.engine.types`. See docs/DESIGN.md (the worker engine: scoring).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from workers.engine.types import PromptScores, Scored

# Scoring's lm_head: (rows per matrix product, rows per log-softmax/gather/rank slice). On CPU the
# product wants many rows (the [vocab, H] weight is streamed once per product: 256 rows take 20% less
# time than 4 x 64), while a [16, vocab] fp32 slice (3 MB) stays in cache through conversion,
# log-softmax, gather and rank (half the time of 64-row slices). On CUDA: fewer, larger launches.
_LM_HEAD_ROWS = {"cpu": (256, 16), "cuda": (512, 512)}

RowLogprobs = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]
Flat = tuple[list[float], list[int], list[list[float]] | None, list[list[int]] | None]


class LogprobHead:
    """The model's lm_head and softcap as log-probs of hidden rows (temperature 1, as vLLM's
    prompt log-probs); ``head``: raw logits of hidden rows (row-invariant tiles on the invariant path)."""

    def __init__(self, head: Callable[[torch.Tensor], torch.Tensor], softcap: float | None) -> None:
        self.head = head
        self.softcap = softcap

    def rows_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor, top_k: int) -> RowLogprobs:
        """For hidden rows [N, H] and target ids [N]: log-prob, rank, top-k values and ids."""
        if hidden.shape[0] == 0:
            empty = torch.zeros((0,), device=hidden.device)
            top_empty = torch.zeros((0, top_k), device=hidden.device) if top_k > 0 else None
            return empty, empty.long(), top_empty, top_empty.long() if top_empty is not None else None
        lp_parts, rank_parts, tv_parts, ti_parts = [], [], [], []
        product_rows, slice_rows = _LM_HEAD_ROWS.get(hidden.device.type, (512, 512))
        for start in range(0, hidden.shape[0], product_rows):
            logits = self.head(hidden[start : start + product_rows])
            for offset in range(0, logits.shape[0], slice_rows):
                logprobs = self.normalise(logits[offset : offset + slice_rows])
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

    def flat(self, hidden: torch.Tensor, targets: list[int], top_k: int) -> Flat:
        """:meth:`rows_logprobs` as host lists."""
        targets_t = torch.tensor(targets, dtype=torch.long, device=hidden.device)
        return to_host(self.rows_logprobs(hidden, targets_t, top_k))

    def logprobs_of(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.head(hidden))

    def normalise(self, logits: torch.Tensor) -> torch.Tensor:
        """Full-distribution fp32 log-probs of raw lm_head rows (softcap first, as the model does)."""
        logits = logits.float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return torch.log_softmax(logits, dim=-1)


def to_host(rows: RowLogprobs) -> Flat:
    lp, rank, tv, ti = rows
    return (
        lp.tolist(),
        rank.tolist(),
        tv.tolist() if tv is not None else None,
        ti.tolist() if ti is not None else None,
    )


def assemble(
    prompt: list[int], lp: list[float], rank: list[int], top: tuple[list[list[float]], list[list[int]]] | None
) -> PromptScores:
    """Positions 1..L-1 of ``prompt`` from flat per-position lists (index t-1 ↔ position t)."""
    token_logprobs: list[float | None] = [None, *lp]
    ranks: list[int | None] = [None, *rank]
    top_entries: list[list[tuple[int, float]]] | None = None
    if top is not None:
        values, ids = top
        top_entries = [[]] + [list(zip(ids[t], values[t], strict=True)) for t in range(len(prompt) - 1)]
    return PromptScores(token_logprobs=token_logprobs, ranks=ranks, top=top_entries)


@dataclass
class SharedPrefix:
    """A prefix group's shared part: its positions' flat lists and the log-probs after it."""

    flat: Flat
    boundary: torch.Tensor  # [V] log-probs of each member's first suffix token
    boundary_top: tuple[list[float], list[int]] | None  # their top-k (values, ids)

    @classmethod
    def of(cls, head: LogprobHead, hidden: torch.Tensor, prefix: list[int], top_k: int) -> SharedPrefix:
        """From the final hidden rows of the prefix's positions (row P-1 predicts the boundary)."""
        boundary = head.logprobs_of(hidden[-1:])[0]
        top = torch.topk(boundary, top_k) if top_k > 0 else None
        return cls(
            flat=head.flat(hidden[:-1], prefix[1:], top_k),
            boundary=boundary,
            boundary_top=(top.values.tolist(), top.indices.tolist()) if top is not None else None,
        )

    def member(self, first: int, suffix: Flat) -> Flat:
        """A member's flat lists: the prefix's, the boundary position (``first``: the member's first
        suffix token), then its ``suffix``'s."""
        shared, boundary = self.flat, self.boundary
        lp, rank, tv, ti = suffix
        first_lp = float(boundary[first])
        first_rank = int((boundary > boundary[first]).sum()) + 1
        merged_tv = merged_ti = None
        if self.boundary_top is not None and shared[2] is not None and shared[3] is not None:
            merged_tv = [*shared[2], self.boundary_top[0], *(tv or [])]
            merged_ti = [*shared[3], self.boundary_top[1], *(ti or [])]
        return [*shared[0], first_lp, *lp], [*shared[1], first_rank, *rank], merged_tv, merged_ti


def scored(prompt: list[int], flat: Flat, first_logits: torch.Tensor | None) -> Scored:
    """A prompt's :class:`Scored` from its flat per-position lists."""
    lp, rank, tv, ti = flat
    top = (tv, ti) if tv is not None and ti is not None else None
    return Scored(scores=assemble(prompt, lp, rank, top), first_logits=first_logits)


def chunks(indices: list[int], lengths: list[int], extra: int, budget: int) -> list[list[int]]:
    """Split ``indices`` (longest first) into padded batches of ≤ ``budget`` tokens."""
    order = sorted(range(len(indices)), key=lambda j: -lengths[j])
    out: list[list[int]] = []
    current: list[int] = []
    width = 0
    for j in order:
        new_width = max(width, lengths[j])
        fits = (len(current) + 1) * new_width <= budget
        fits = fits and (len(current) + 1) * extra <= 4 * budget
        if current and not fits:
            out.append(current)
            current, new_width = [], lengths[j]
        current.append(indices[j])
        width = new_width
    if current:
        out.append(current)
    return out


def _lcp(a: list[int], b: list[int]) -> int:
    m = min(len(a), len(b))
    i = 0
    while i < m and a[i] == b[i]:
        i += 1
    return i


def prefix_groups(prompts: list[list[int]], min_shared_prefix: int) -> list[tuple[int, list[int]]]:
    """Groups of prompts sharing a prefix worth computing once: ``(prefix_len, members)``."""
    if len(prompts) < 2:
        return []
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    groups: list[tuple[int, list[int]]] = []
    members = [order[0]]
    shared = len(prompts[order[0]]) - 1
    for i in order[1:]:
        common = min(shared, _lcp(prompts[members[-1]], prompts[i]), len(prompts[i]) - 1)
        # Extend while the tokens saved do not shrink: m·common ≥ (m−1)·shared.
        if common >= min_shared_prefix and len(members) * common >= (len(members) - 1) * shared:
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
