"""Batch-invariant arithmetic for low-precision weights on CPU: one per-row forward used by decoding
and by teacher-forced scoring, so a token's log-prob is the same bits whichever computes it, and
whatever else shares the request, the chunk or the batch. Imports torch, :mod:`workers.engine.tiling`
and :mod:`workers.engine.llama` only (the weights and the per-op helpers of :class:`LlamaRunner`).

Invariants (checked by ``tests/integration/test_invariance.py`` on the machine that runs them):

* **Row-invariant products.** The bf16 GEMM's kernel (and its reduction order) may depend on the
  row count M; every linear runs through :func:`workers.engine.tiling.tiled_linear`, on tiles of a
  row range where this machine's products give one set of bits (measured per weight shape when the
  runner is built), so a row's output never depends on the other rows.
  fp32 products (attention): MKL's batched GEMM gives other bits for M ≤ 3 rows, and a single
  batch entry takes the plain GEMM, whose tail rows (M = 5..9 here) have other bits again; with
  M ≥ 4 and ≥ 2 batch entries every row has one set of bits (measured on Zen 4 and Zen 5 for
  K ∈ {16, 64}, N up to 1024, B up to 600), so ``_bmm`` pads to :data:`BMM_MIN_ROWS` rows and 2
  entries.
* **Block-fixed attention.** Attention is fp32 over an fp32 K/V copy of bf16 keys and values. The
  scores of a query are its dot products with every key (a product's column does not depend on how
  many columns it has); the softmax max is exact; the exponentials are summed per absolute block of
  :data:`BLOCK` keys, then block by block in order; the weighted values likewise (one product of
  exactly BLOCK keys per block, summed in order). Blocks past a query's position contribute exact
  zeros, so a query's arithmetic is the same whether it is one of a prompt's many queries (scoring,
  prefill) or a decode step, at any batch size, with any other rows and any window.
* **Per-position tables.** Rotary cos/sin come from one table computed once; RMSNorm, the
  activation and the log-softmax are row-wise kernels whose order depends on the row length only.

Scoring runs the attention of spans with the same start and cache capacity (a prompt's candidates,
whatever their lengths: queries padded to the longest) as one batched product per step (a batch
entry's bits do not depend on the batch, nor a query's on the other queries; every other op is
element-wise over whole 64-key blocks, or per row). Decoding rows keep every position's K/V in a slot
of a :class:`workers.engine.kv_pool.KVPool` (the prompt's copied in at prefill); one step's attention
runs once per pool bucket over all its rows, whichever requests they belong to, each row over the
bucket's whole capacity with the keys past its position masked.
See docs/DESIGN.md (the worker engine) for the invariants and figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F

from workers.engine.kv_pool import Bucket, KVPool, PoolRows
from workers.engine.llama import LlamaRunner, _Layer, _rms_norm, _rotate_half
from workers.engine.tiling import calibrate, tiled_linear

BMM_MIN_ROWS = 4  # fp32 batched products: fewer rows take MKL's small-M kernels (other bits)
BLOCK = 64  # keys per attention block (softmax sums and value products are per block, in order)
SPAN_QUERIES = 256  # query positions per attention product while scoring (bounds the score matrix)
ATTENTION_BATCH_SCORES = 1 << 22  # most fp32 scores of spans whose attention is batched together

RowCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer fp32 (keys, values) [kv_heads, cap, d]


def align(positions: int) -> int:
    """``positions`` rounded up to whole blocks."""
    return -(-positions // BLOCK) * BLOCK


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """fp32 ``bmm`` whose rows do not depend on the row or batch count (see the module docs): at least
    BMM_MIN_ROWS rows (zero rows added) and two batch entries (a zero entry added)."""
    batch, rows = a.shape[0], a.shape[1]
    if rows >= BMM_MIN_ROWS and batch >= 2:
        return torch.bmm(a, b)
    extra = 1 if batch == 1 else 0
    padded = F.pad(a, (0, 0, 0, max(0, BMM_MIN_ROWS - rows), 0, extra))
    if extra:
        b = torch.cat((b, torch.zeros_like(b)))
    return torch.bmm(padded, b)[:batch, :rows]


def _exp_weights(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised softmax weights of scaled, masked scores [..., n·BLOCK] and their sums [...]."""
    top = scores.amax(dim=-1, keepdim=True)
    weights = torch.exp(scores - top)
    per_block = weights.view(*weights.shape[:-1], -1, BLOCK).sum(dim=-1)
    total = per_block[..., 0]
    for block in range(1, per_block.shape[-1]):
        total = total + per_block[..., block]
    return weights, total


def _sum_blocks(parts: torch.Tensor) -> torch.Tensor:
    """Block results [n_blocks, ...] added in block order."""
    total = parts[0]
    for block in range(1, parts.shape[0]):
        total = total + parts[block]
    return total


def _attention_batches(spans: list[Span], lengths: list[int], heads: int) -> list[list[int]]:
    """Span indices grouped by (start, cache capacity), in order of first appearance, each group cut
    so its score matrix (every member padded to the group's longest) stays within
    ATTENTION_BATCH_SCORES. A prompt's candidates (one start, one capacity) share one batch whatever
    their lengths."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, span in enumerate(spans):
        groups.setdefault((span.start, span.cache[0][0].shape[1]), []).append(index)
    batches = []
    for (start, _), members in groups.items():
        longest = max(lengths[i] for i in members)
        per_span = heads * min(longest, SPAN_QUERIES) * align(start + longest)
        size = max(1, ATTENTION_BATCH_SCORES // per_span)
        batches += [members[i : i + size] for i in range(0, len(members), size)]
    return batches


@dataclass
class Span:
    """Tokens ``ids`` of one sequence at positions ``start``.. whose K/V go to ``cache`` (positions
    before ``start`` already there)."""

    ids: list[int]
    start: int
    cache: RowCache


@dataclass
class DecodeGroup:
    """One request's decode step (its rows' next tokens ``ids`` [R] at ``position``, their K/V in
    ``rows``' pool slots), for :meth:`InvariantRunner.decode_groups`."""

    ids: torch.Tensor
    position: int
    rows: PoolRows

    def __post_init__(self) -> None:
        if self.ids.shape[0] != self.rows.count:
            raise ValueError(f"{self.ids.shape[0]} tokens for {self.rows.count} rows")


class _BucketStep:
    """The rows of one :class:`Bucket` that decode in a step, in slot order, and what their attention
    derives from them once per step (every layer uses it)."""

    def __init__(self, bucket: Bucket, slots: list[int], positions: list[int]) -> None:
        self.bucket, self.rows = bucket, len(slots)
        self.dense = slots == list(range(len(slots)))  # the first slots (the usual case): views, no copy
        self.index = torch.tensor(slots, dtype=torch.long)
        self.pos = torch.tensor(positions, dtype=torch.long)
        self.hidden_keys = torch.arange(bucket.capacity)[None, :] > self.pos[:, None]  # [R, C] masked


class InvariantRunner:
    """The batch-invariant forward over a :class:`LlamaRunner`'s weights (bf16/fp16 on CPU)."""

    def __init__(self, runner: LlamaRunner) -> None:
        self.r = runner
        self.kv_heads, self.groups, self.head_dim = runner.num_kv_heads, runner.groups, runner.head_dim
        positions = runner._arange[None, :]
        cos, sin = runner._rope(positions)  # one table: every position's bits fixed once
        self.cos, self.sin = cos[0], sin[0]
        for layer in runner.layers:  # the tile plan of every weight shape, measured on this machine
            weights = [*zip(layer.qkv, layer.qkv_bias, strict=True), (layer.o, layer.o_bias)]
            weights += [*zip(layer.gate_up, layer.gate_up_bias, strict=True), (layer.down, layer.down_bias)]
            for weight, bias in weights:
                calibrate(weight, bias)
        calibrate(runner.lm_head, runner.lm_head_bias)

    # ------------------------------------------------------------------------------- caches
    def new_cache(self, positions: int) -> RowCache:
        """fp32 K/V for ``positions`` positions of one sequence (values zeroed: masked keys weigh 0)."""
        shape = (self.kv_heads, align(max(positions, 1)), self.head_dim)
        return [
            (torch.empty(shape, dtype=torch.float32), torch.zeros(shape, dtype=torch.float32))
            for _ in range(self.r.num_layers)
        ]

    def copy_cache(self, cache: RowCache, length: int, positions: int) -> RowCache:
        """A new cache for ``positions`` positions holding the first ``length`` of ``cache``."""
        out = self.new_cache(positions)
        for (keys, values), (src_k, src_v) in zip(out, cache, strict=True):
            keys[:, :length] = src_k[:, :length]
            values[:, :length] = src_v[:, :length]
        return out

    # ------------------------------------------------------------------------------- layers
    def _qkv(
        self, layer: _Layer, x: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows x [N, H] at ``positions`` [N]: rotated q [N, heads, d], k and v [N, kv_heads, d]."""
        rows = x.shape[0]
        h = _rms_norm(x, layer.ln_attn, layer.eps_attn)
        if len(layer.qkv) == 1:
            r = self.r
            sizes = (r.num_heads * r.head_dim, r.num_kv_heads * r.head_dim, r.num_kv_heads * r.head_dim)
            q, k, v = tiled_linear(h, layer.qkv[0], layer.qkv_bias[0]).split(sizes, dim=-1)
        else:
            q, k, v = (tiled_linear(h, w, b) for w, b in zip(layer.qkv, layer.qkv_bias, strict=True))
        q = q.reshape(rows, -1, self.head_dim)
        k = k.reshape(rows, -1, self.head_dim)
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        q = (q * cos) + (_rotate_half(q) * sin)
        k = (k * cos) + (_rotate_half(k) * sin)
        return q, k, v.reshape(rows, -1, self.head_dim)

    def _finish(self, layer: _Layer, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        x = x + tiled_linear(attn, layer.o, layer.o_bias)
        h = _rms_norm(x, layer.ln_mlp, layer.eps_mlp)
        if len(layer.gate_up) == 1:
            gate, up = tiled_linear(h, layer.gate_up[0], layer.gate_up_bias[0]).chunk(2, dim=-1)
        else:
            gate = tiled_linear(h, layer.gate_up[0], layer.gate_up_bias[0])
            up = tiled_linear(h, layer.gate_up[1], layer.gate_up_bias[1])
        inner = (layer.act(gate) * up).contiguous()
        return x + tiled_linear(inner, layer.down, layer.down_bias)

    def _attend_spans(self, q: torch.Tensor, caches: RowCache, start: int) -> torch.Tensor:
        """Queries q [S, T, heads, d] of S sequences, each at positions start.. over its own cache
        (keys, values [kv_heads, cap, d]): [S, T, heads·d] bf16. The S sequences' products run as one
        batched product (a batch entry's bits do not depend on the batch), the rest element-wise or
        per row, so each sequence gets the bits it gets alone."""
        seqs, length = q.shape[0], q.shape[1]
        kvh, groups, dim = self.kv_heads, self.groups, self.head_dim
        grouped = q.float().view(seqs, length, kvh, groups, dim).permute(0, 2, 3, 1, 4)  # [S,kvh,g,T,d]
        outs = []
        for first in range(0, length, SPAN_QUERIES):
            count = min(SPAN_QUERIES, length - first)
            end = align(start + first + count)
            rows = grouped[:, :, :, first : first + count].reshape(seqs * kvh, groups * count, dim)
            keys = torch.stack([k[:, :end] for k, _ in caches]).view(seqs * kvh, end, dim)
            scores = _bmm(rows, keys.transpose(1, 2)).mul_(self.r.scale)  # [S·kvh, g·c, end]
            query_pos = torch.arange(start + first, start + first + count).repeat(groups)
            hidden = self.r._arange[:end][None, :] > query_pos[:, None]
            scores.masked_fill_(hidden[None], float("-inf"))
            weights, total = _exp_weights(scores)
            blocks = end // BLOCK
            w = weights.view(seqs * kvh, groups * count, blocks, BLOCK).permute(0, 2, 1, 3)
            v = torch.stack([values[:, :end] for _, values in caches]).view(seqs * kvh * blocks, BLOCK, dim)
            parts = _bmm(w.reshape(seqs * kvh * blocks, groups * count, BLOCK), v)
            acc = _sum_blocks(parts.view(seqs * kvh, blocks, groups * count, dim).transpose(0, 1))
            out = (acc / total[..., None]).view(seqs, kvh, groups, count, dim)  # [S, kvh, g, c, d]
            outs.append(out.permute(0, 3, 1, 2, 4).reshape(seqs, count, -1))
        return torch.cat(outs, dim=1).to(q.dtype)

    # ------------------------------------------------------------------------------- passes
    def forward_spans(self, spans: list[Span]) -> list[torch.Tensor]:
        """Teacher-forced forward of several sequences' spans (products over all their rows together,
        attention per sequence, batched over spans of the same start and length): final-normed
        hidden [len(ids), H] per span."""
        r = self.r
        lengths = [len(span.ids) for span in spans]
        ids = torch.tensor([t for span in spans for t in span.ids], dtype=torch.long)
        positions = torch.cat(
            [torch.arange(s.start, s.start + n) for s, n in zip(spans, lengths, strict=True)]
        )
        offsets = [0, *accumulate(lengths)][:-1]
        batches = _attention_batches(spans, lengths, self.kv_heads * self.groups)
        x = F.embedding(ids, r.embed)
        for number, layer in enumerate(r.layers):
            q, k, v = self._qkv(layer, x, positions)
            attn: list[torch.Tensor] = [q] * len(spans)  # each replaced below
            for members in batches:
                start = spans[members[0]].start
                longest = max(lengths[i] for i in members)
                # Shorter members' queries padded (zeros) to the longest: a query's bits do not depend
                # on the other rows; the padded rows' outputs are dropped.
                queries = q.new_zeros((len(members), longest, *q.shape[1:]))
                for j, i in enumerate(members):
                    n = lengths[i]
                    keys, values = spans[i].cache[number]
                    keys[:, start : start + n] = k[offsets[i] : offsets[i] + n].transpose(0, 1)
                    values[:, start : start + n] = v[offsets[i] : offsets[i] + n].transpose(0, 1)
                    queries[j, :n] = q[offsets[i] : offsets[i] + n]
                out = self._attend_spans(queries, [spans[i].cache[number] for i in members], start)
                for j, i in enumerate(members):
                    attn[i] = out[j, : lengths[i]]
            x = self._finish(layer, x, torch.cat(attn))
        hidden = _rms_norm(x, r.norm, r.norm_eps)
        return list(hidden.split(lengths))

    def new_pool(self) -> KVPool:
        """Slots for decode rows' K/V (:mod:`workers.engine.kv_pool`), shaped for this model."""
        return KVPool(self.r.num_layers, self.kv_heads, self.head_dim, BLOCK)

    def decode_groups(self, groups: list[DecodeGroup]) -> list[torch.Tensor]:
        """One decode step of several groups (requests) in one pass: final-normed hidden [R_g, H] per
        group, each row's bits those it gets alone. The products run over every row (row-invariant);
        the attention once per pool bucket over its rows in slot order (a batch entry's bits do not
        depend on the batch, a masked key adds exact zeros), so no op runs per request."""
        r = self.r
        entries: dict[Bucket, list[tuple[int, int, int]]] = {}  # bucket -> (slot, input row, position)
        row = 0
        for group in groups:
            for slot in group.rows.slots:
                entries.setdefault(group.rows.bucket, []).append((slot, row, group.position))
                row += 1
        steps, order = [], []
        for bucket, items in entries.items():
            items.sort()
            steps.append(_BucketStep(bucket, [s for s, _, _ in items], [p for _, _, p in items]))
            order += [i for _, i, _ in items]
        ids = torch.cat([group.ids for group in groups])
        permuted = order != list(range(len(order)))
        permutation = torch.tensor(order, dtype=torch.long)
        if permuted:
            ids = ids[permutation]
        x = F.embedding(ids, r.embed)
        pos = torch.cat([step.pos for step in steps])
        for number, layer in enumerate(r.layers):
            q, k, v = self._qkv(layer, x, pos)
            attn = []
            offset = 0
            for step in steps:
                span = slice(offset, offset + step.rows)
                attn.append(self._decode_attention(number, step, q[span], k[span], v[span]))
                offset += step.rows
            x = self._finish(layer, x, torch.cat(attn) if len(attn) > 1 else attn[0])
        hidden = _rms_norm(x, r.norm, r.norm_eps)
        if permuted:
            hidden = torch.empty_like(hidden).index_copy_(0, permutation, hidden)
        return list(hidden.split([group.rows.count for group in groups]))

    def _decode_attention(
        self, number: int, step: _BucketStep, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Layer ``number``'s attention of one bucket's decoding rows (q [R, heads, d], k/v
        [R, kv_heads, d], in slot order): writes their K/V into their slots; each row attends over
        the bucket's whole capacity, past its position masked. Returns [R, heads·d] in the weights'
        dtype."""
        rows, capacity = step.rows, step.bucket.capacity
        kvh, groups, dim = self.kv_heads, self.groups, self.head_dim
        all_keys, all_values = step.bucket.keys[number], step.bucket.values[number]
        all_keys[step.index, :, step.pos] = k.float()
        all_values[step.index, :, step.pos] = v.float()
        if step.dense:
            keys, values = all_keys[:rows], all_values[:rows]
        else:
            keys, values = all_keys.index_select(0, step.index), all_values.index_select(0, step.index)
        grouped = q.float().view(rows * kvh, groups, dim)
        scores = _bmm(grouped, keys.view(rows * kvh, capacity, dim).transpose(1, 2))
        scores = scores.view(rows, kvh, groups, capacity) * self.r.scale
        scores.masked_fill_(step.hidden_keys[:, None, None, :], float("-inf"))
        weights, total = _exp_weights(scores)  # [R, kvh, g, C], [R, kvh, g]
        blocks = capacity // BLOCK
        w = weights.view(rows, kvh, groups, blocks, BLOCK).permute(0, 1, 3, 2, 4)
        parts = _bmm(w.reshape(-1, groups, BLOCK), values.view(rows * kvh * blocks, BLOCK, dim))
        parts = parts.view(rows, kvh, blocks, groups, dim).permute(2, 0, 1, 3, 4)  # [blocks, R, kvh, g, d]
        acc = _sum_blocks(parts) / total[..., None]  # [R, kvh, g, d]
        return acc.reshape(rows, -1).to(self.r.dtype)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Raw lm_head rows (model dtype) of final-normed hidden rows [N, H] (row-invariant)."""
        return tiled_linear(hidden, self.r.lm_head, self.r.lm_head_bias)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits of final-normed hidden rows [N, H] (row-invariant lm_head)."""
        return self.head(hidden).float()
