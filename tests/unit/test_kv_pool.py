"""The decode rows' K/V pool (workers/engine/kv_pool.py): whatever allocations, partial keeps and
releases come, every bucket's used slots stay dense (0..used-1, one owner each), each row's K/V
follow it when it moves to another slot, and a new slot's values start at zero."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.engine.kv_pool import KVPool, PoolRows, bucket_capacity

BLOCK = 4
operations = st.lists(
    st.one_of(
        st.tuples(st.just("allocate"), st.integers(1, 6), st.integers(1, 20)),
        st.tuples(st.just("keep"), st.integers(0, 50), st.integers(0, 2**16)),
        st.tuples(st.just("release"), st.integers(0, 50), st.just(0)),
    ),
    max_size=40,
)


def mark(pool: KVPool, rows: PoolRows, labels: list[float]) -> None:
    for layer in range(pool.layers):
        for slot, label in zip(rows.slots, labels, strict=True):
            rows.bucket.keys[layer][slot, :, 0] = label + layer
            rows.bucket.values[layer][slot, :, 0] = -label - layer


def check(pool: KVPool, live: dict[int, tuple[PoolRows, list[float]]]) -> None:
    for bucket in pool.buckets.values():
        assert all(owner is not None for owner in bucket.owners)
        for slot, owner in enumerate(bucket.owners):
            assert owner is not None
            handle, row = owner
            assert handle.slots[row] == slot
    for rows, labels in live.values():
        assert len(rows.slots) == len(labels) == len(set(rows.slots))
        for slot, label in zip(rows.slots, labels, strict=True):
            assert slot < rows.bucket.used
            for layer in range(pool.layers):
                assert torch.all(rows.bucket.keys[layer][slot, :, 0] == label + layer)
                assert torch.all(rows.bucket.values[layer][slot, :, 0] == -label - layer)


@settings(max_examples=200, deadline=None)
@given(ops=operations)
def test_slots_stay_dense_and_rows_keep_their_values(ops: list[tuple[str, int, int]]) -> None:
    pool = KVPool(layers=2, kv_heads=2, head_dim=3, block=BLOCK)
    live: dict[int, tuple[PoolRows, list[float]]] = {}
    label = 0.0
    with torch.inference_mode():
        for kind, a, b in ops:
            if kind == "allocate":
                rows = pool.allocate(a, b)
                assert rows.bucket.capacity == bucket_capacity(b, BLOCK) >= b
                for values in rows.bucket.values:
                    assert torch.all(values[rows.slots] == 0)
                labels = [label + 10 * i for i in range(a)]
                label += 10 * a
                mark(pool, rows, labels)
                live[id(rows)] = (rows, labels)
            elif live:
                key = list(live)[a % len(live)]
                rows, labels = live[key]
                if kind == "release":
                    pool.release(rows)
                    pool.release(rows)  # twice: harmless
                    del live[key]
                else:
                    kept = [i for i in range(rows.count) if b >> i & 1]
                    pool.keep(rows, kept)
                    live[key] = (rows, [labels[i] for i in kept])
            check(pool, live)


def test_capacities_are_whole_blocks_doubling() -> None:
    assert [bucket_capacity(n, 64) for n in (1, 64, 65, 128, 129, 300, 1000)] == [
        64,
        64,
        128,
        128,
        256,
        512,
        1024,
    ]
