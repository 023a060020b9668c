"""Scoring: :class:`Scorer`, teacher-forced prompt log-probs (``prompt_logprobs``), plain and
prefix-shared, through the transformers forward or (bf16/fp16 on CPU) the batch-invariant one.
Imports torch, transformers' ``DynamicCache``, :mod:`workers.engine.score_invariant`,
:mod:`workers.engine.prompt_logprobs`, :mod:`workers.engine.invariant` and :mod:`workers.engine.types`.
See docs/DESIGN.md (the worker engine: scoring).

Scoring (``prompt_logprobs``)
    All prompts of a request go through padded forward passes (right padding, attention mask,
    positions 0..len-1), chunked so each pass holds at most ``token_budget`` padded tokens.
    Prompts that share a long common prefix (MOSAIC: every candidate reply under one context) are
    grouped: the prefix is prefilled once and its KV cache is repeated over the group's suffixes
    (same numbers, prompt + M·reply tokens instead of M·(prompt + reply)). Log-probs are
    full-distribution (temperature 1) ``log_softmax`` values, as vLLM's prompt log-probs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel

from workers.engine.invariant import InvariantRunner
from workers.engine.prompt_logprobs import (
    Flat,
    LogprobHead,
    SharedPrefix,
    chunks,
    prefix_groups,
    scored,
    to_host,
)
from workers.engine.score_invariant import InvariantScoreJob, score_invariant
from workers.engine.types import Scored


class Scorer:
    """Prompt log-probs of one model (see the module docs). ``token_budget`` and ``prefix_sharing``
    may be changed between requests (the engine's knobs)."""

    def __init__(
        self,
        model: PreTrainedModel,
        device: torch.device,
        pad_token_id: int,
        invariant: InvariantRunner | None,
        token_budget: int,
        prefix_sharing: bool,
        min_shared_prefix: int,
        on_forward: Callable[[], None],
    ) -> None:
        self.model, self.device, self.pad_token_id = model, device, pad_token_id
        self.invariant = invariant  # bf16/fp16 on CPU: the batch-invariant forward (decode's own)
        self.token_budget = token_budget
        self.prefix_sharing = prefix_sharing
        self.min_shared_prefix = max(1, min_shared_prefix)
        self.on_forward = on_forward
        self._decoder: Any = model.get_decoder()
        softcap: float | None = getattr(model.config, "final_logit_softcapping", None)
        # Invariant path: model-dtype logits from row-invariant tiles (normalised 16-row slices later).
        self.head = LogprobHead(
            invariant.head if invariant is not None else model.get_output_embeddings(), softcap
        )

    def prefix_groups(self, prompts: list[list[int]]) -> list[tuple[int, list[int]]]:
        """The prompts' prefix groups (none without prefix sharing)."""
        return prefix_groups(prompts, self.min_shared_prefix) if self.prefix_sharing else []

    def invariant_job(self, prompts: list[list[int]], top_k: int, keep_last: bool) -> InvariantScoreJob:
        """A request's batch-invariant scoring (for the serial path or the batch loop)."""
        assert self.invariant is not None
        return InvariantScoreJob(
            self.head, self.invariant, prompts, self.prefix_groups(prompts), top_k, keep_last
        )

    def score(self, prompts: list[list[int]], *, top_k: int, keep_last: bool) -> list[Scored]:
        """Every prompt's scores; ``keep_last``: also what its first sampled token is drawn from."""
        if self.invariant is not None:
            job = self.invariant_job(prompts, top_k, keep_last)
            return score_invariant(job, self.token_budget, self.on_forward)
        out: list[Scored | None] = [None] * len(prompts)
        groups = self.prefix_groups(prompts)
        grouped = {i for _, members in groups for i in members}
        plain = [i for i in range(len(prompts)) if i not in grouped]
        for chunk in chunks(plain, [len(prompts[i]) for i in plain], 0, self.token_budget):
            for i, item in zip(chunk, self._score_plain(prompts, chunk, top_k, keep_last), strict=True):
                out[i] = item
        for prefix_len, members in groups:
            for i, item in zip(
                members, self._score_group(prompts, members, prefix_len, top_k, keep_last), strict=True
            ):
                out[i] = item
        assert all(item is not None for item in out)
        return [item for item in out if item is not None]

    def _hidden(self, **kwargs: Any) -> torch.Tensor:
        out = self._decoder(**kwargs)
        self.on_forward()
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    def _chunk_rows(
        self, hidden: torch.Tensor, prompts: list[list[int]], chunk: list[int], offset: int, top_k: int
    ) -> list[Flat]:
        """Each member's flat lists from a forward pass over ``prompts[i][offset:]`` for each ``i`` in
        ``chunk`` (row b of ``hidden`` holds member b from position ``offset``)."""
        rows, targets, spans = [], [], []
        start = 0
        for b, i in enumerate(chunk):
            length = len(prompts[i]) - offset
            rows.append(hidden[b, : length - 1])
            targets.extend(prompts[i][offset + 1 :])
            spans.append((start, start + length - 1))
            start += length - 1
        flat = torch.cat(rows) if rows else hidden.new_zeros((0, hidden.shape[-1]))
        targets_t = torch.tensor(targets, dtype=torch.long, device=self.device)
        lp, rank, tv, ti = to_host(self.head.rows_logprobs(flat, targets_t, top_k))
        return [
            (lp[s:e], rank[s:e], tv[s:e] if tv is not None else None, ti[s:e] if ti is not None else None)
            for s, e in spans
        ]

    def _last_rows(
        self, hidden: torch.Tensor, prompts: list[list[int]], chunk: list[int], offset: int
    ) -> torch.Tensor:
        """The full log-prob rows after each member's last token (what its first token is drawn from)."""
        return self.head.logprobs_of(
            torch.stack([hidden[b, len(prompts[i]) - offset - 1] for b, i in enumerate(chunk)])
        )

    def _padded(self, sequences: list[list[int]], before: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and their attention mask (``before`` positions of cache, all attended)."""
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), before + width), dtype=torch.long)
        mask[:, :before] = 1
        for b, sequence in enumerate(sequences):
            ids[b, : len(sequence)] = torch.tensor(sequence)
            mask[b, before : before + len(sequence)] = 1
        return ids, mask

    def _score_plain(
        self, prompts: list[list[int]], chunk: list[int], top_k: int, keep_last: bool
    ) -> list[Scored]:
        ids, mask = self._padded([prompts[i] for i in chunk], 0)
        positions = torch.arange(ids.shape[1], dtype=torch.long)[None, :].expand(len(chunk), -1)
        hidden = self._hidden(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=False,
        )
        flats = self._chunk_rows(hidden, prompts, chunk, 0, top_k)
        last_rows = self._last_rows(hidden, prompts, chunk, 0) if keep_last else None
        return [
            scored(prompts[i], flats[b], last_rows[b] if last_rows is not None else None)
            for b, i in enumerate(chunk)
        ]

    def _score_group(
        self, prompts: list[list[int]], members: list[int], prefix_len: int, top_k: int, keep_last: bool
    ) -> list[Scored]:
        """A prefix group: the prefix once, then its members' suffixes over copies of its cache."""
        prefix = prompts[members[0]][:prefix_len]
        cache = DynamicCache(config=self.model.config)
        prefix_hidden = self._hidden(
            input_ids=torch.tensor([prefix], dtype=torch.long, device=self.device),
            past_key_values=cache,
            use_cache=True,
        )[0]
        shared = SharedPrefix.of(self.head, prefix_hidden, prefix, top_k)
        out: dict[int, Scored] = {}
        lengths = [len(prompts[i]) - prefix_len for i in members]
        for chunk in chunks(members, lengths, prefix_len, self.token_budget):
            hidden = self._suffix_pass(cache, [prompts[i][prefix_len:] for i in chunk], prefix_len)
            flats = self._chunk_rows(hidden, prompts, chunk, prefix_len, top_k)
            last_rows = self._last_rows(hidden, prompts, chunk, prefix_len) if keep_last else None
            for b, i in enumerate(chunk):
                flat = shared.member(prompts[i][prefix_len], flats[b])
                out[i] = scored(prompts[i], flat, last_rows[b] if last_rows is not None else None)
        return [out[i] for i in members]

    def _suffix_pass(self, cache: DynamicCache, suffixes: list[list[int]], prefix_len: int) -> torch.Tensor:
        """One forward pass of ``suffixes`` after the prefix ``cache`` (copied, once per suffix)."""
        ids, mask = self._padded(suffixes, prefix_len)
        positions = torch.arange(prefix_len, prefix_len + ids.shape[1], dtype=torch.long)[None, :]
        chunk_cache = copy.deepcopy(cache)
        chunk_cache.batch_repeat_interleave(len(suffixes))
        return self._hidden(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.expand(len(suffixes), -1).to(self.device),
            past_key_values=chunk_cache,
            use_cache=True,
        )
