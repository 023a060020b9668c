"""The worker's step scheduler (pure): budgets, (priority, arrival) order with aging, no starvation,
pausing of much worse running generations with its bound, every token exactly once."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.engine.scheduler import Scheduler, StepPlan


@dataclass
class Submitted:
    kind: str
    size: int  # prefill tokens, or how many prompts
    rows: int
    max_steps: int
    lengths: list[int]
    priority: int = 0


one_work = st.one_of(
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
)
works = st.lists(one_work, min_size=1, max_size=16)


def _with_priority(work: Submitted, priority: int) -> Submitted:
    work.priority = priority
    return work


prioritised_works = st.lists(st.builds(_with_priority, one_work, st.integers(-3, 3)), min_size=1, max_size=16)


@dataclass
class Trace:
    """What a simulated run did: per step its plan and the units waiting (never joined) before it."""

    plans: list[StepPlan] = field(default_factory=list)
    waiting: list[list[int]] = field(default_factory=list)
    submitted_at: dict[int, int] = field(default_factory=dict)  # id -> steps planned before its submit
    joined_at: dict[int, int] = field(default_factory=dict)  # id -> the step it first ran in


def simulate(scheduler: Scheduler, works: list[Submitted], arrivals: list[int], finishes: list[int]) -> Trace:
    """Submit ``works`` in id order (``arrivals[step]`` per step), plan until idle, check the budgets,
    that running generations decode or are paused, a paused one decoding at least once every
    ``pause_steps`` steps, and that every token runs exactly once."""
    budget, max_rows = scheduler.token_budget, scheduler.max_rows
    pending = list(enumerate(works))
    trace = Trace()
    decoded: dict[int, int] = {}
    last: dict[int, int] = {}  # generation id -> the step it last decoded or was prefilled in
    rows_left: dict[int, int] = {}
    scored: dict[int, list[int]] = {}
    steps = 0
    bound = 2000
    while pending or not scheduler.idle:
        arriving = arrivals[steps % len(arrivals)] or (1 if scheduler.idle else 0)
        for _ in range(arriving):
            if pending:
                work_id, work = pending.pop(0)
                trace.submitted_at[work_id] = steps
                if work.kind == "generate":
                    scheduler.submit_generation(work_id, work.size, work.rows, work.max_steps, work.priority)
                else:
                    scheduler.submit_scoring(work_id, work.lengths, work.priority)
        trace.waiting.append([w for w in trace.submitted_at if w not in trace.joined_at])
        plan = scheduler.plan()
        trace.plans.append(plan)
        for work_id in plan.joined:
            trace.joined_at[work_id] = steps
        steps += 1
        assert steps < bound, "work starved"
        forced = not plan.decode and len(plan.prefill) + len(plan.score) == 1
        assert plan.tokens <= budget or forced
        # over max_rows only for one oversize generation, alone (forced in; only scoring joins it)
        assert plan.rows <= max_rows or len(plan.decode) + len(plan.paused) + len(plan.prefill) == 1
        # every running generation decodes or is paused until it finishes; paused at most
        # pause_steps - 1 steps in a row (the starvation bound)
        assert not set(plan.decode) & set(plan.paused)
        assert set(plan.decode) | set(plan.paused) == {w for w, left in rows_left.items() if left > 0}
        for work_id in plan.paused:
            assert steps - 1 - last[work_id] < scheduler.pause_steps, (steps, work_id)
        for work_id in plan.decode:
            decoded[work_id] += 1
            last[work_id] = steps - 1
        for work_id in plan.prefill:
            decoded[work_id] = 0
            last[work_id] = steps - 1
            rows_left[work_id] = works[work_id].rows if works[work_id].max_steps > 0 else 0
        for work_id, first, stop in plan.score:
            scored.setdefault(work_id, [])
            assert first == len(scored[work_id]) and stop > first  # in order, never twice
            scored[work_id].extend(range(first, stop))
        for work_id in list(plan.decode) + list(plan.paused):
            if work_id in plan.paused:
                continue
            if decoded[work_id] >= works[work_id].max_steps:
                rows_left[work_id] = 0
            elif finishes[steps % len(finishes)] == 0:  # some rows end early
                rows_left[work_id] = max(0, rows_left[work_id] - 1)
                scheduler.rows_finished(work_id, rows_left[work_id])
        for work_id in [w for w, left in rows_left.items() if left == 0]:
            del rows_left[work_id]
    assert sorted(trace.joined_at) == list(range(len(works)))
    for work_id, work in enumerate(works):
        if work.kind == "score":
            assert scored[work_id] == list(range(len(work.lengths)))
        else:
            assert decoded[work_id] <= work.max_steps
    return trace


@dataclass
class Run:
    """One simulated run's inputs: the scheduler's limits, the work, when it arrives and ends."""

    works: list[Submitted]
    arrivals: list[int]
    finishes: list[int]
    budget: int
    max_rows: int
    aging_steps: int
    fill_tokens: int
    pause_steps: int = 8
    pause_gap: int = 4

    def simulate(self) -> Trace:
        limits = {"token_budget": max(self.budget, self.max_rows), "max_rows": self.max_rows}
        scheduler = Scheduler(
            **limits,
            aging_steps=self.aging_steps,
            fill_tokens=self.fill_tokens,
            pause_steps=self.pause_steps,
            pause_gap=self.pause_gap,
        )
        return simulate(scheduler, self.works, self.arrivals, self.finishes)


def runs(work_lists: st.SearchStrategy[list[Submitted]]) -> st.SearchStrategy[Run]:
    return st.builds(
        Run,
        works=work_lists,
        arrivals=st.lists(st.integers(0, 3), min_size=25, max_size=25),
        finishes=st.lists(st.integers(0, 4), min_size=400, max_size=400),
        budget=st.integers(16, 512),
        max_rows=st.integers(1, 16),
        aging_steps=st.integers(0, 40),
        fill_tokens=st.integers(0, 600),
        pause_steps=st.integers(0, 10),
        pause_gap=st.integers(1, 4),
    )


@settings(max_examples=200, deadline=None)
@given(run=runs(works))
def test_equal_priorities_schedule_in_arrival_order_within_budgets(run: Run) -> None:
    """Invariant: with one priority (vLLM's default 0) work starts in strict arrival order whatever the
    aging, within the step's budgets, running generations never paused, every token exactly once."""
    trace = run.simulate()
    admitted = [work_id for plan in trace.plans for work_id in plan.joined]
    assert admitted == sorted(admitted)  # strict arrival order
    assert not any(plan.paused for plan in trace.plans)  # one priority: never paused


@settings(max_examples=300, deadline=None)
@given(run=runs(prioritised_works))
def test_priorities_order_waiting_work_and_aging_bounds_overtaking(run: Run) -> None:
    """Invariants: (1) a unit starts only when every unit still waiting ranks after it — rank: aged
    units (waited >= aging_steps steps) first by arrival, then (priority, arrival); (2) the starvation
    bound: a unit that has aged is never overtaken by a later arrival; (3) work of worse priority than
    the best in its step (not aged) takes at most fill_tokens of it; (4) the budgets, the running
    decode and every token exactly once, as with one priority."""
    trace = run.simulate()
    works, aging_steps = run.works, run.aging_steps
    for step, plan in enumerate(trace.plans):
        taken = [(w, works[w].size) for w in plan.prefill]
        taken += [(w, sum(works[w].lengths[first:stop])) for w, first, stop in plan.score]
        if not plan.decode and len(taken) == 1:
            continue  # forced: the first unit alone, whatever its size
        best = min([works[w].priority for w in plan.decode] + [works[w].priority for w, _ in taken])
        fresh = [
            t for w, t in taken if works[w].priority > best and step - trace.submitted_at[w] < aging_steps
        ]
        assert sum(fresh) <= run.fill_tokens, (step, plan)

    def rank(work_id: int, step: int) -> tuple[int, int, int]:
        if step - trace.submitted_at[work_id] >= aging_steps:
            return (0, 0, work_id)
        return (1, works[work_id].priority, work_id)

    for step, (plan, waiting) in enumerate(zip(trace.plans, trace.waiting, strict=True)):
        left = [w for w in waiting if w not in plan.joined]
        for work_id in plan.joined:
            assert all(rank(work_id, step) < rank(other, step) for other in left), (step, work_id)
    for late, step in trace.joined_at.items():
        for early in range(late):  # arrived before `late`
            if trace.joined_at[early] > step:  # overtaken: only while it had not aged
                assert step - trace.submitted_at[early] < aging_steps


def test_a_later_urgent_unit_overtakes_waiting_work_until_it_ages() -> None:
    """Invariant: lower priority waits behind later better-priority work only for aging_steps steps."""
    scheduler = Scheduler(token_budget=100, max_rows=8, aging_steps=3)
    scheduler.submit_generation(1, prefill_tokens=90, rows=8, max_steps=10, priority=0)
    assert scheduler.plan().prefill == [1]  # step 0: 1 runs (8 rows: nothing else can join)
    scheduler.submit_scoring(2, [50], priority=5)  # waits from step 1
    scheduler.submit_scoring(3, [50], priority=0)  # better priority, later
    plan = scheduler.plan()
    assert plan.decode == [1] and plan.score == [(3, 0, 1)]  # step 1: overtaken
    for urgent in (7, 8):  # steps 2, 3: a later, better one each time; 2 still waits
        scheduler.submit_scoring(urgent, [80], priority=-1)
        assert scheduler.plan().score == [(urgent, 0, 1)]
    scheduler.submit_scoring(4, [80], priority=-1)  # step 4: 2 has waited 3 steps: aged, goes first
    assert scheduler.plan().score == [(2, 0, 1)]
    assert scheduler.plan().score == [(4, 0, 1)]


def test_equal_priority_keeps_arrival_order_and_zero_aging_is_fifo() -> None:
    """Invariant: ties go by arrival; aging_steps=0 is FIFO whatever the priorities."""
    fifo = Scheduler(token_budget=100, max_rows=8, aging_steps=0)
    by_priority = Scheduler(token_budget=100, max_rows=8)
    for scheduler in (fifo, by_priority):
        scheduler.submit_scoring(1, [60], priority=2)
        scheduler.submit_scoring(2, [60], priority=1)
        scheduler.submit_scoring(3, [60], priority=1)
    assert [fifo.plan().score for _ in range(3)] == [[(1, 0, 1)], [(2, 0, 1)], [(3, 0, 1)]]
    assert [by_priority.plan().score for _ in range(3)] == [[(2, 0, 1)], [(3, 0, 1)], [(1, 0, 1)]]
    with pytest.raises(ValueError):
        Scheduler(token_budget=100, max_rows=8, aging_steps=-1)
    with pytest.raises(ValueError):
        Scheduler(token_budget=100, max_rows=8, fill_tokens=-1)


def test_worse_work_fills_at_most_fill_tokens_beside_urgent_work() -> None:
    """Invariant: beside a decoding urgent generation, worse-priority work takes at most fill_tokens
    per step (the urgent decode steps stay short) and still advances; alone it takes the budget."""
    scheduler = Scheduler(token_budget=1000, max_rows=8, aging_steps=100, fill_tokens=100)
    scheduler.submit_generation(1, prefill_tokens=10, rows=2, max_steps=3, priority=0)
    scheduler.submit_scoring(2, [60] * 20, priority=9)
    first = scheduler.plan()  # 10 urgent prefill tokens, then 60 of the worse scoring (≤ 100)
    assert first.prefill == [1] and first.score == [(2, 0, 1)]
    for k in (1, 2, 3):  # the urgent one decodes (2 rows): one 60-token prompt of 2 beside it
        plan = scheduler.plan()
        assert plan.decode == [1] and plan.score == [(2, k, k + 1)]
    alone = scheduler.plan()
    assert alone.decode == [] and alone.tokens == 960  # the rest fills the budget


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


@settings(max_examples=300, deadline=None)
@given(run=runs(prioritised_works))
def test_only_much_worse_fresh_generations_are_paused_and_within_the_bound(run: Run) -> None:
    """Invariants: a paused generation trails the best priority of the running and waiting work by at
    least pause_gap (so nothing of the best priority is ever paused), has not aged, and decodes at
    least once every pause_steps steps (checked in ``simulate``); pause_steps <= 1 never pauses."""
    trace = run.simulate()
    works = run.works
    last_scored = {w: step for step, plan in enumerate(trace.plans) for w, _, _ in plan.score}
    for step, (plan, waiting) in enumerate(zip(trace.plans, trace.waiting, strict=True)):
        scoring = [w for w, at in trace.submitted_at.items() if at <= step <= last_scored.get(w, -1)]
        present = [*plan.decode, *plan.paused, *waiting, *scoring]
        best = min(works[w].priority for w in present) if present else 0
        for work_id in plan.paused:
            assert works[work_id].priority - best >= run.pause_gap, (step, work_id)
            assert step - trace.submitted_at[work_id] < run.aging_steps  # aged: never paused
            assert run.pause_steps > 1
            assert plan.decode or plan.prefill or plan.score  # never a step of paused work only


def test_a_heavy_generation_sits_out_steps_beside_an_urgent_one_and_decodes_every_pause_steps() -> None:
    """Invariant: a running generation pause_gap worse than a running urgent one decodes exactly once
    every pause_steps steps while the urgent one runs, every step once it is gone; it never holds up
    the urgent one."""
    scheduler = Scheduler(token_budget=1000, max_rows=64, aging_steps=1000, pause_steps=4, pause_gap=4)
    scheduler.submit_generation(1, prefill_tokens=100, rows=50, max_steps=40, priority=17)
    assert scheduler.plan().prefill == [1]  # step 0
    scheduler.submit_generation(2, prefill_tokens=20, rows=8, max_steps=10, priority=12)
    plan = scheduler.plan()  # step 1: 1 is paused (it decoded... was prefilled at step 0)
    assert plan.prefill == [2] and plan.paused == [1] and plan.decode == []
    decodes = [1 in scheduler.plan().decode for _ in range(10)]  # steps 2..11: 2 decodes its 10
    assert decodes == [False, False, True, False, False, False, True, False, False, False]
    assert scheduler.plan().decode == [1]  # 2 is done: 1 decodes every step
    assert scheduler.plan().decode == [1]


def test_one_keys_own_auctions_within_the_gap_never_pause_each_other() -> None:
    """Invariant: priorities closer than pause_gap (one key's concurrent auctions: ⌊log2⌋+1 of c..8c)
    all decode every step."""
    scheduler = Scheduler(token_budget=1000, max_rows=64, pause_steps=8, pause_gap=4)
    for k in range(8):
        priority = (5000 * (k + 1)).bit_length()  # k + 1 auctions of 5,000 tokens held
        scheduler.submit_generation(k, prefill_tokens=10, rows=4, max_steps=20, priority=priority)
    scheduler.plan()
    for _ in range(5):
        plan = scheduler.plan()
        assert plan.paused == [] and sorted(plan.decode) == list(range(8))
