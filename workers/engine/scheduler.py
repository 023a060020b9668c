"""The worker's step scheduler for continuous batching: which work runs in each forward step.

Pure Python (no torch, nothing of the project): the batch loop (:mod:`workers.engine.batching`)
asks :meth:`Scheduler.plan` for every step and reports back what finished. See docs/DESIGN.md
(continuous batching). Two kinds of work:

* generation — ``rows`` sequences (n samples × prompts) that first need their prompts prefilled
  (``prefill_tokens``), then decode one token per row per step until they finish (at most
  ``max_steps`` steps; rows may finish earlier, :meth:`Scheduler.rows_finished`);
* scoring — ``prompt_lengths`` prompts scored teacher-forced; a request may be spread over several
  steps (whole prompts per step), and several requests' prompts share one step.

A step's cost is its tokens: 1 per decoding row, the prompt lengths of what it prefills or scores. A
step stays within ``token_budget`` tokens and ``max_rows`` decoding rows.

Order of the waiting work (vLLM's ``--scheduling-policy priority``): each unit carries its request's
``priority`` (vLLM's ``CompletionRequest.priority``: lower is served earlier, default 0) and is waited
on in the order (priority, arrival). Aging bounds the wait: a unit that has waited ``aging_steps``
steps is *aged* and goes before every unit that is not, aged units among themselves by arrival. With
equal priorities (every request at 0) this is exactly arrival order.

Fairness rule:
1. the running generations decode, except that one of much worse priority sits out steps while better
   work is there (vLLM's priority policy preempts the lowest running request; the cheaper variant here
   keeps its rows' K/V in the pool and skips it): a running generation, not aged, whose priority is at
   least ``pause_gap`` worse than the best priority of the running and waiting work is *paused* — it
   skips the step unless it has not decoded for ``pause_steps`` - 1 steps. Bound: a paused generation
   decodes at least once every ``pause_steps`` steps (so it finishes within ``pause_steps`` ×
   ``max_steps`` steps of starting); work of the best priority, aged work (waited ``aging_steps`` since
   its arrival) and, with one priority, every generation decode every step. ``pause_gap`` is in
   priority units: the gateway's fair-share priority is ⌊log2⌋+1 of the tokens a key holds, so one
   key's own concurrent auctions (up to MAX_AUCTIONS_PER_KEY = 8 of one size: within 3 of each other)
   never pause each other at the default gap of 4, while a key holding ≥ 8× fewer tokens pauses the
   heavy one's decode. A paused generation's rows still count against ``max_rows`` (they hold the
   pool), not against the step's tokens. ``pause_steps`` 0 or 1: never paused;
2. then waiting work is taken strictly in that order: the first unit gets its prefill (or as many of
   its prompts as fit) if it fits in what is left of the budget and rows; if it does not, the scan
   stops there — nothing behind it overtakes it (a large urgent unit is not starved by small ones).
   Work of worse priority than something already in the step (a running generation or a unit taken
   before it), unless aged, shares at most ``fill_tokens`` tokens of the step: the urgent request's
   steps stay short (a decode step of 8 rows beside a 2,000-token scoring chunk costs that chunk),
   while the rest still advances a little every step;
3. a step that would otherwise do nothing takes the first unit whatever its size (so work larger
   than the budget still runs, alone); a step that would hold only paused generations decodes them.
Starvation bound: a unit is overtaken by later arrivals of better priority only during its first
``aging_steps`` steps of waiting. From then on it is aged (and no longer held to ``fill_tokens``),
and every unit that arrived after it ages after it and sorts behind it by arrival, while every unit
that arrived before it is aged too: its place is its arrival place, as under FIFO. So it starts
within ``aging_steps`` steps plus the FIFO bound over the work that arrived before it: every step
decodes the running rows, each running generation finishes within its ``max_steps``, and nothing
joins ahead of the first waiting unit; the first unit starts after at most the longest remaining
``max_steps`` of the running work, plus the steps to score what is ahead of it.
Tested with hypothesis in ``tests/unit/test_scheduler.py``.

Batch invariance is the engine's business (the arithmetic of a row must not depend on what shares its
step); this module only decides membership and order (so the order, priorities included, cannot change a
request's bits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Steps a waiting unit may be overtaken by later work of better priority (WORKER_PRIORITY_AGING_STEPS).
DEFAULT_AGING_STEPS = 512
# Tokens per step for worse-priority work beside better work (WORKER_PRIORITY_FILL_TOKENS).
DEFAULT_FILL_TOKENS = 256
# A paused running generation decodes at least once every this many steps (WORKER_PRIORITY_PAUSE_STEPS).
DEFAULT_PAUSE_STEPS = 8
# Priority units a running generation must trail the best work by to be paused (WORKER_PRIORITY_PAUSE_GAP).
DEFAULT_PAUSE_GAP = 4


@dataclass
class _Waiting:
    """Where a waiting unit stands: its priority, its arrival number, the step it arrived at."""

    priority: int = field(default=0, kw_only=True)
    arrival: int = field(default=0, kw_only=True)
    since: int = field(default=0, kw_only=True)


@dataclass
class Generation(_Waiting):
    id: int
    prefill_tokens: int
    rows: int
    max_steps: int
    steps_done: int = 0
    started: bool = False
    last_step: int = 0  # the step it last decoded (or was prefilled) in


@dataclass
class Scoring(_Waiting):
    id: int
    prompt_lengths: list[int]
    next_prompt: int = 0

    @property
    def done(self) -> bool:
        return self.next_prompt >= len(self.prompt_lengths)


@dataclass
class StepPlan:
    decode: list[int] = field(default_factory=list)  # generation ids decoding one token per row
    paused: list[int] = field(default_factory=list)  # running generation ids sitting out this step
    prefill: list[int] = field(default_factory=list)  # generation ids joining (prefilled this step)
    score: list[tuple[int, int, int]] = field(default_factory=list)  # (scoring id, first, stop) prompts
    joined: list[int] = field(default_factory=list)  # ids first taken in this step, in the order taken
    tokens: int = 0
    rows: int = 0  # rows of the running generations (decoding or paused) and of those joining

    @property
    def empty(self) -> bool:
        return not (self.decode or self.prefill or self.score)

    @property
    def forcing(self) -> bool:
        """Nothing in the step, nothing paused: the first waiting unit goes in whatever its size."""
        return self.empty and not self.paused


class Scheduler:
    def __init__(
        self,
        token_budget: int,
        max_rows: int,
        aging_steps: int = DEFAULT_AGING_STEPS,
        fill_tokens: int = DEFAULT_FILL_TOKENS,
        pause_steps: int = DEFAULT_PAUSE_STEPS,
        pause_gap: int = DEFAULT_PAUSE_GAP,
    ) -> None:
        if max_rows < 1 or token_budget < max_rows:
            # token_budget >= max_rows: the running rows' decode alone always fits a step.
            raise ValueError("need 1 <= max_rows <= token_budget")
        if min(aging_steps, fill_tokens, pause_steps) < 0 or pause_gap < 1:
            raise ValueError("need aging_steps, fill_tokens, pause_steps >= 0 and pause_gap >= 1")
        self.token_budget = token_budget
        self.max_rows = max_rows
        self.aging_steps = aging_steps
        self.fill_tokens = fill_tokens
        self.pause_steps = pause_steps
        self.pause_gap = pause_gap
        self._waiting: list[Generation | Scoring] = []  # arrival order; planned in `_order`'s order
        self._running: dict[int, Generation] = {}  # arrival order (dicts keep insertion order)
        self._steps = 0  # steps planned so far (the clock of aging)
        self._arrivals = 0

    # --------------------------------------------------------------------------------- submissions
    def submit_generation(
        self, work_id: int, prefill_tokens: int, rows: int, max_steps: int, priority: int = 0
    ) -> None:
        self._enqueue(Generation(work_id, prefill_tokens, rows, max_steps, priority=priority))

    def submit_scoring(self, work_id: int, prompt_lengths: list[int], priority: int = 0) -> None:
        if prompt_lengths:
            self._enqueue(Scoring(work_id, list(prompt_lengths), priority=priority))

    def _enqueue(self, work: Generation | Scoring) -> None:
        self._arrivals += 1
        work.arrival, work.since = self._arrivals, self._steps
        self._waiting.append(work)

    def cancel(self, work_id: int) -> None:
        """Drop work whose client went away (waiting or running)."""
        self._running.pop(work_id, None)
        self._waiting = [w for w in self._waiting if w.id != work_id]

    def _aged(self, work: Generation | Scoring) -> bool:
        return self._steps - work.since >= self.aging_steps

    def _rank(self, work: Generation | Scoring) -> tuple[int, int, int]:
        """Sort key of a waiting unit: aged units first, by arrival; then (priority, arrival)."""
        if self._aged(work):
            return (0, 0, work.arrival)
        return (1, work.priority, work.arrival)

    def _order(self) -> list[Generation | Scoring]:
        return sorted(self._waiting, key=self._rank)

    # ------------------------------------------------------------------------------------ progress
    def rows_finished(self, work_id: int, rows_left: int) -> None:
        """A running generation now decodes ``rows_left`` rows (0: it is finished and leaves)."""
        work = self._running.get(work_id)
        if work is None:
            return
        if rows_left <= 0:
            del self._running[work_id]
        else:
            work.rows = rows_left

    @property
    def idle(self) -> bool:
        return not self._waiting and not self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running_rows(self) -> int:
        return sum(w.rows for w in self._running.values())

    # --------------------------------------------------------------------------------------- plan
    def plan(self) -> StepPlan:
        """The next step (see the module's fairness rule); advances the scheduler's own state."""
        step = StepPlan()
        urgent = self._decoding(step)  # the best priority of the work in this step so far
        taken: set[int] = set()
        fill = 0  # tokens of worse-priority (not aged) work taken beside better work
        for work in self._order():
            capped = urgent is not None and work.priority > urgent and not self._aged(work)
            limit = (
                min(self.token_budget, step.tokens + self.fill_tokens - fill) if capped else self.token_budget
            )
            before = step.tokens
            if isinstance(work, Generation):
                if not self._join(step, work, limit):
                    break
            elif not self._score(step, work, limit):
                break
            taken.add(work.id)
            fill += step.tokens - before if capped else 0
            urgent = work.priority if urgent is None else min(urgent, work.priority)
        self._waiting = [w for w in self._waiting if w.id not in taken]
        if step.empty:  # only paused work: rather than an idle step, they decode
            step.decode, step.paused = step.paused, []
            step.tokens = sum(self._running[w].rows for w in step.decode)
        self._advance(step)
        self._steps += 1
        return step

    def _paused(self, work: Generation, best: int) -> bool:
        """Whether running ``work`` sits out this step (the module's rule 1) beside work of ``best``."""
        return (
            self.pause_steps > 1
            and work.priority - best >= self.pause_gap
            and self._steps - work.last_step < self.pause_steps
            and not self._aged(work)
        )

    def _decoding(self, step: StepPlan) -> int | None:
        """The running generations' part of ``step``: who decodes, who is paused; the best priority
        decoding (None: none)."""
        started = [w for w in self._running.values() if w.started]
        best = min((w.priority for w in [*started, *self._waiting]), default=0)
        urgent: int | None = None
        for running in started:
            step.rows += running.rows
            if self._paused(running, best):
                step.paused.append(running.id)
                continue
            step.decode.append(running.id)
            step.tokens += running.rows
            urgent = running.priority if urgent is None else min(urgent, running.priority)
        return urgent

    def _join(self, step: StepPlan, work: Generation, limit: int) -> bool:
        """Prefill ``work`` in ``step`` if it fits (the step's tokens within ``limit``, or the step is
        empty); False: the scan stops."""
        tokens, rows = step.tokens + work.prefill_tokens, step.rows + work.rows
        fits = tokens <= limit and rows <= self.max_rows
        if not fits and not step.forcing:
            return False
        step.prefill.append(work.id)
        step.joined.append(work.id)
        step.tokens += work.prefill_tokens
        step.rows += work.rows
        self._running[work.id] = work
        return True

    def _score(self, step: StepPlan, work: Scoring, limit: int) -> bool:
        """As many of ``work``'s next prompts as fit within ``limit`` step tokens; True only when it is
        done (the scan goes on)."""
        first = stop = work.next_prompt
        while stop < len(work.prompt_lengths) and (
            step.tokens + work.prompt_lengths[stop] <= limit or (step.forcing and stop == first)
        ):
            step.tokens += work.prompt_lengths[stop]
            stop += 1
        if stop == first:
            return False
        step.score.append((work.id, first, stop))
        if first == 0:
            step.joined.append(work.id)
        work.next_prompt = stop
        return work.done  # not done: its next prompt did not fit, so the scan stops there

    def _advance(self, step: StepPlan) -> None:
        """The running generations after ``step``: the joined ones started, the finished ones gone."""
        for work_id in step.prefill:
            joined = self._running[work_id]
            joined.started, joined.last_step = True, self._steps
            if joined.max_steps <= 0:  # its one token comes from the prefill's logits
                del self._running[work_id]
        for work_id in step.decode:
            work = self._running[work_id]
            work.steps_done += 1
            work.last_step = self._steps
            if work.steps_done >= work.max_steps:
                del self._running[work_id]
