"""The decode rows' K/V on the batch-invariant CPU path: :class:`KVPool`, one slot per row, so one
decode step's attention runs over every row of every request together (a few batched products per
layer) instead of a dozen small ops per request per layer. Imports torch only.

A slot holds one row's fp32 keys and values for every position from 0 (its prompt's K/V copied in at
prefill, then one position per decode step). Slots live in buckets by capacity (a power-of-two
number of BLOCK-key blocks, at least what the row needs): per layer one tensor
``[slots, kv_heads, capacity, d]`` for keys and one for values. A bucket keeps its used slots dense
(0..used-1: a row that leaves is replaced by the bucket's last row, :meth:`KVPool.release`), so a step
that decodes every row of a bucket reads them as views, with no copy.

What the bits rely on (``workers/engine/invariant.py``'s module docs): a row attends over its bucket's
whole capacity, the keys past its position masked (exact zeros, whatever the stale bytes of a reused
slot hold, as long as they are finite: values of a new slot are zeroed, keys are masked before use),
and the blocks summed in order; so a row's bits do not depend on the capacity, on the slot it has, or
on the other rows.
See docs/DESIGN.md (the worker engine) for the invariants and figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

BUCKET_BYTES_KEPT = 256 << 20  # an emptied bucket at most this large stays allocated for the next rows


def bucket_capacity(positions: int, block: int) -> int:
    """The capacity (positions) of the bucket for a row of ``positions`` positions."""
    blocks = max(1, -(-positions // block))
    return block * (1 << (blocks - 1).bit_length())


@dataclass(eq=False)
class PoolRows:
    """One request's rows (for one prompt): their slots in one bucket, row ``i`` in ``slots[i]``."""

    bucket: Bucket
    slots: list[int]

    @property
    def count(self) -> int:
        return len(self.slots)


@dataclass(eq=False)
class Bucket:
    capacity: int
    keys: list[torch.Tensor]  # per layer [slots, kv_heads, capacity, d] fp32
    values: list[torch.Tensor]
    owners: list[tuple[PoolRows, int] | None] = field(default_factory=list)  # slot -> (rows, row)

    @property
    def used(self) -> int:
        return len(self.owners)

    @property
    def size(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0

    @property
    def nbytes(self) -> int:
        return 2 * sum(t.numel() * t.element_size() for t in self.keys)


class KVPool:
    """Slots for decode rows (see the module docs). Not thread safe: one user at a time (the batch
    loop's thread, or one serial request)."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, block: int) -> None:
        self.layers, self.kv_heads, self.head_dim, self.block = layers, kv_heads, head_dim, block
        self.buckets: dict[int, Bucket] = {}

    @torch.inference_mode()  # the slots are inference tensors; a release may come from outside a step
    def allocate(self, rows: int, positions: int) -> PoolRows:
        """``rows`` new slots (values zeroed) for rows of up to ``positions`` positions."""
        capacity = bucket_capacity(positions, self.block)
        bucket = self.buckets.get(capacity)
        if bucket is None:
            bucket = self.buckets[capacity] = Bucket(capacity, [], [])
        first = bucket.used
        self._reserve(bucket, first + rows)
        handle = PoolRows(bucket, list(range(first, first + rows)))
        bucket.owners += [(handle, i) for i in range(rows)]
        for values in bucket.values:
            values[first : first + rows].zero_()
        return handle

    def _reserve(self, bucket: Bucket, slots: int) -> None:
        if bucket.size >= slots:
            return
        # Exactly what is asked the first time (a serial request's own pool), then doubling.
        size = max(slots, bucket.size * 2) if bucket.size else slots
        shape = (size, self.kv_heads, bucket.capacity, self.head_dim)
        keys = [torch.empty(shape, dtype=torch.float32) for _ in range(self.layers)]
        values = [torch.zeros(shape, dtype=torch.float32) for _ in range(self.layers)]
        used = bucket.used
        for new, old in zip(keys + values, bucket.keys + bucket.values, strict=False):
            new[:used] = old[:used]
        bucket.keys, bucket.values = keys, values

    @torch.inference_mode()  # the slots are inference tensors; a release may come from outside a step
    def write_prompt(
        self, rows: PoolRows, cache: list[tuple[torch.Tensor, torch.Tensor]], length: int
    ) -> None:
        """Copy a prefilled prompt's K/V (per layer [kv_heads, ≥ length, d]) into every row's slot."""
        first, count = rows.slots[0], rows.count
        assert rows.slots == list(range(first, first + count)), "a new allocation's slots are consecutive"
        for layer, (keys, values) in enumerate(cache):
            rows.bucket.keys[layer][first : first + count, :, :length] = keys[None, :, :length]
            rows.bucket.values[layer][first : first + count, :, :length] = values[None, :, :length]

    @torch.inference_mode()  # the slots are inference tensors; a release may come from outside a step
    def keep(self, rows: PoolRows, kept: list[int]) -> None:
        """Keep rows ``kept`` (ascending) of ``rows``, renumbered 0..; free the others' slots."""
        kept_set = set(kept)
        freed = [slot for i, slot in enumerate(rows.slots) if i not in kept_set]
        rows.slots = [rows.slots[i] for i in kept]
        for i, slot in enumerate(rows.slots):
            rows.bucket.owners[slot] = (rows, i)
        self._free(rows.bucket, freed)

    @torch.inference_mode()  # the slots are inference tensors; a release may come from outside a step
    def release(self, rows: PoolRows) -> None:
        """Free every slot of ``rows`` (a finished or cancelled request; calling it again is harmless)."""
        freed, rows.slots = rows.slots, []
        self._free(rows.bucket, freed)

    def _free(self, bucket: Bucket, slots: list[int]) -> None:
        """Free ``slots``, keeping the used ones dense: the bucket's last rows move into the holes."""
        for slot in sorted(slots, reverse=True):
            last = bucket.used - 1
            if slot != last:
                owner = bucket.owners[last]
                assert owner is not None
                handle, row = owner
                for tensor in (*bucket.keys, *bucket.values):
                    tensor[slot] = tensor[last]
                handle.slots[row] = slot
                bucket.owners[slot] = owner
            bucket.owners.pop()
        if not bucket.owners and bucket.nbytes > BUCKET_BYTES_KEPT:
            del self.buckets[bucket.capacity]
