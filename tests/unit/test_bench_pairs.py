"""The signing bench's pairs (bench/attestation.py, `bench/latency.py --signing`): an order effect
inside a pair must not bias the paired difference (issue 35; docs/DESIGN.md § Verifiable auctions)."""

from __future__ import annotations

import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.signing_pairs import median_interval, pair_order, shuffled_pairs


@given(repeats=st.integers(2, 400))
def test_each_variant_goes_first_in_half_of_the_pairs(repeats: int) -> None:
    """Balanced: B first in exactly ⌈repeats/2⌉ pairs; the same order on every run (seeded)."""
    order = pair_order(repeats)
    assert sum(order) == (repeats + 1) // 2
    assert order == pair_order(repeats)


@settings(max_examples=25, deadline=None)
@given(penalty=st.floats(0.2, 5.0), true_cost=st.sampled_from([0.0, 0.3]))
def test_a_slower_second_auction_does_not_bias_the_paired_median(penalty: float, true_cost: float) -> None:
    """A bench whose second auction of a pair is `penalty` ms slower (the first one's aftermath) gives
    the true added cost as the median paired difference, not true_cost ± penalty (what a fixed order
    gives), and the A/A run (true_cost 0) comes out 0."""
    calls: list[bool] = []

    def one(repeat: int, is_b: bool) -> float:
        second = len(calls) % 2 == 1
        calls.append(is_b)
        return 10.0 + (true_cost if is_b else 0.0) + (penalty if second else 0.0) + (repeat % 7) * 0.01

    values, order = shuffled_pairs(one, 200, "test", warmup=2)
    added = [b - a for b, a in zip(values[True], values[False], strict=True)]
    # half the pairs put the penalty on B, half on A: the differences are true_cost ± penalty, half each
    assert sorted({round(d - true_cost, 9) for d in added}) == sorted({round(penalty, 9), round(-penalty, 9)})
    assert sum(d > true_cost for d in added) == sum(order)
    assert abs(statistics.median(added) - true_cost) < 1e-9
    low, high = median_interval(added)
    assert low <= high
