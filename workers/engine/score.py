"""Scoring: teacher-forced prompt log-probs (``prompt_logprobs``), plain and prefix-shared, as the
methods of :class:`ScoreMixin` (part of :class:`workers.engine.core.Engine`). Imports torch and
transformers' ``DynamicCache``; nothing of ``workers`` (:mod:`workers.engine.core` only for type
checking).

Scoring (``prompt_logprobs``)
    All prompts of a request go through padded forward passes (right padding, attention mask,
    positions 0..len-1), chunked so each pass holds at most ``score_token_budget`` padded tokens.
    Prompts that share a long common prefix (MOSAIC: every candidate reply under one context) are
    grouped: the prefix is prefilled once and its KV cache is repeated over the group's suffixes
    (same numbers, prompt + M·reply tokens instead of M·(prompt + reply)). Log-probs are
    full-distribution (temperature 1) ``log_softmax`` values, as vLLM's prompt log-probs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from workers.engine.invariant import InvariantRunner
from workers.engine.score_invariant import InvariantScoreMixin

if TYPE_CHECKING:
    from workers.engine.core import EngineStats

# Scoring's lm_head: (rows per matrix product, rows per log-softmax/gather/rank slice). On CPU the
# product wants many rows (the [vocab, H] weight is streamed once per product: 256 rows take 20% less
# time than 4 x 64), while a [16, vocab] fp32 slice (3 MB) stays in cache through conversion,
# log-softmax, gather and rank (half the time of 64-row slices). On CUDA: fewer, larger launches.
_LM_HEAD_ROWS = {"cpu": (256, 16), "cuda": (512, 512)}


@dataclass
class PromptScores:
    """Per-position log-prob of each prompt token given the tokens before it (position 0: None)."""

    token_logprobs: list[float | None]
    ranks: list[int | None]
    top: list[list[tuple[int, float]]] | None = None


@dataclass
class _Scored:
    scores: PromptScores
    # [V] what the first generated token is drawn from after the prompt (max_tokens = 1): raw fp32
    # logits on the batch-invariant path, full-distribution log-probs on the others
    first_logits: torch.Tensor | None


class ScoreMixin(InvariantScoreMixin):
    """The scoring methods of :class:`workers.engine.core.Engine` (which sets these attributes)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    stats: EngineStats
    score_token_budget: int
    prefix_sharing: bool
    min_shared_prefix: int
    _decoder: Any
    _lm_head: Any
    _softcap: float | None
    invariant: InvariantRunner | None  # bf16/fp16 on CPU: the batch-invariant forward (decode's own)

    def _score(self, prompts: list[list[int]], *, top_k: int, keep_last: bool) -> list[_Scored]:
        if self.invariant is not None:
            return list(self._score_invariant(self.invariant, prompts, top_k, keep_last))
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
            logits = self._head(hidden[start : start + product_rows])
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

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """lm_head rows (row-invariant tiles under :mod:`workers.engine.invariant`)."""
        if self.invariant is not None:  # model dtype: _normalise converts 16-row slices (in cache)
            return self.invariant.head(hidden)
        logits: torch.Tensor = self._lm_head(hidden)
        return logits

    def _logprobs_of(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._normalise(self._head(hidden))

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
                    first_logits=last_rows[b] if last_rows is not None else None,
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
                    first_logits=last_rows[b] if last_rows is not None else None,
                )
        return [out[i] for i in members]
