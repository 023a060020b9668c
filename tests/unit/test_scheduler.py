"""The worker's step scheduler (pure): budgets, arrival order, no starvation, every token exactly once."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.engine.scheduler import Scheduler


@dataclass
class Submitted:
    kind: str
    size: int  # prefill tokens, or how many prompts
    rows: int
    max_steps: int
    lengths: list[int]


works = st.lists(
    st.one_of(
        st.builds(
            lambda p, r, m: Submitted("generate", p, r, m, []),
            st.integers(1, 300),
            st.integers(1, 12),
            st.integers(0, 20),
        ),
        st.builds(
            lambda lengths: Submitted("score", len(lengths), 0, 0, lengths),
            st.lists(st.integers(1, 300), min_size=1, max_size=6),
        ),
    ),
    min_size=1,
    max_size=16,
)


@settings(max_examples=200, deadline=None)
@given(
    works=works,
    arrivals=st.lists(st.integers(0, 3), min_size=25, max_size=25),
    finishes=st.lists(st.integers(0, 4), min_size=400, max_size=400),
    budget=st.integers(16, 512),
    max_rows=st.integers(1, 16),
)
def test_schedule_respects_budgets_order_and_finishes_everything(
    works: list[Submitted], arrivals: list[int], finishes: list[int], budget: int, max_rows: int
) -> None:
    scheduler = Scheduler(token_budget=max(budget, max_rows), max_rows=max_rows)
    budget = scheduler.token_budget
    pending = list(enumerate(works))
    admitted: list[int] = []  # ids in the order they first ran
    decoded: dict[int, int] = {}
    rows_left: dict[int, int] = {}
    scored: dict[int, list[int]] = {}
    steps = 0
    bound = 2000
    while pending or not scheduler.idle:
        arriving = arrivals[steps % len(arrivals)] or (1 if scheduler.idle else 0)
        for _ in range(arriving):
            if pending:
                work_id, work = pending.pop(0)
                if work.kind == "generate":
                    scheduler.submit_generation(work_id, work.size, work.rows, work.max_steps)
                else:
                    scheduler.submit_scoring(work_id, work.lengths)
        plan = scheduler.plan()
        steps += 1
        assert steps < bound, "work starved"
        forced = not plan.decode and len(plan.prefill) + len(plan.score) == 1
        assert plan.tokens <= budget or forced
        # over max_rows only for one oversize generation, alone (forced in; only scoring joins it)
        assert plan.rows <= max_rows or len(plan.decode) + len(plan.prefill) == 1
        # every running generation decodes in every step until it finishes (never paused)
        assert set(plan.decode) == {w for w, left in rows_left.items() if left > 0}
        for work_id in plan.decode:
            decoded[work_id] += 1
        admitted.extend(plan.joined)
        for work_id in plan.prefill:
            decoded[work_id] = 0
            rows_left[work_id] = works[work_id].rows if works[work_id].max_steps > 0 else 0
        for work_id, first, stop in plan.score:
            scored.setdefault(work_id, [])
            assert first == len(scored[work_id]) and stop > first  # in order, never twice
            scored[work_id].extend(range(first, stop))
        for work_id in list(plan.decode):
            if decoded[work_id] >= works[work_id].max_steps:
                rows_left[work_id] = 0
            elif finishes[steps % len(finishes)] == 0:  # some rows end early
                rows_left[work_id] = max(0, rows_left[work_id] - 1)
                scheduler.rows_finished(work_id, rows_left[work_id])
        for work_id in [w for w, left in rows_left.items() if left == 0]:
            del rows_left[work_id]
    assert admitted == sorted(admitted)  # strict arrival order
    assert sorted(admitted) == list(range(len(works)))
    for work_id, work in enumerate(works):
        if work.kind == "score":
            assert scored[work_id] == list(range(len(work.lengths)))
        else:
            assert decoded[work_id] <= work.max_steps


def test_head_blocks_later_work_and_oversize_work_runs_alone() -> None:
    scheduler = Scheduler(token_budget=100, max_rows=8)
    scheduler.submit_generation(1, prefill_tokens=50, rows=4, max_steps=3)
    scheduler.submit_generation(2, prefill_tokens=500, rows=4, max_steps=1)  # over the budget
    scheduler.submit_scoring(3, [10])  # would fit, but must not overtake 2
    first = scheduler.plan()
    assert (first.prefill, first.score) == ([1], [])
    assert scheduler.plan().decode == [1]
    assert scheduler.plan().decode == [1]
    assert scheduler.plan().decode == [1]  # its 3rd and last decode step
    alone = scheduler.plan()
    assert (alone.decode, alone.prefill, alone.score) == ([], [2], [])  # forced: nothing else runs
    after = scheduler.plan()
    assert after.decode == [2] and after.score == [(3, 0, 1)]
    assert scheduler.idle


def test_scoring_spreads_over_steps_and_shares_them() -> None:
    scheduler = Scheduler(token_budget=100, max_rows=4)
    scheduler.submit_scoring(1, [60, 60, 30])
    scheduler.submit_scoring(2, [10, 20])
    assert scheduler.plan().score == [(1, 0, 1)]
    # its last prompts (90 tokens) and, sharing the step, the first of 2's that fits (10)
    assert scheduler.plan().score == [(1, 1, 3), (2, 0, 1)]
    assert scheduler.plan().score == [(2, 1, 2)]
    assert scheduler.idle


def test_cancel_and_bad_limits() -> None:
    scheduler = Scheduler(token_budget=10, max_rows=2)
    scheduler.submit_generation(1, 5, 2, 10)
    scheduler.plan()
    scheduler.cancel(1)
    assert scheduler.idle
    with pytest.raises(ValueError):
        Scheduler(token_budget=4, max_rows=8)
