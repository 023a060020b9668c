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
1. the running generations always decode (their rows were admitted; a step never pauses them — a
   high priority never preempts running work, unlike vLLM's, which may preempt the lowest running);
2. then waiting work is taken strictly in that order: the first unit gets its prefill (or as many of
   its prompts as fit) if it fits in what is left of the budget and rows; if it does not, the scan
   stops there — nothing behind it overtakes it (a large urgent unit is not starved by small ones).
   Work of worse priority than something already in the step (a running generation or a unit taken
   before it), unless aged, shares at most ``fill_tokens`` tokens of the step: the urgent request's
   steps stay short (a decode step of 8 rows beside a 2,000-token scoring chunk costs that chunk),
   while the rest still advances a little every step;
3. a step that would otherwise do nothing takes the first unit whatever its size (so work larger
   than the budget still runs, alone).
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
    prefill: list[int] = field(default_factory=list)  # generation ids joining (prefilled this step)
    score: list[tuple[int, int, int]] = field(default_factory=list)  # (scoring id, first, stop) prompts
    joined: list[int] = field(default_factory=list)  # ids first taken in this step, in the order taken
    tokens: int = 0
    rows: int = 0

    @property
    def empty(self) -> bool:
        return not (self.decode or self.prefill or self.score)


class Scheduler:
    def __init__(
        self,
        token_budget: int,
        max_rows: int,
        aging_steps: int = DEFAULT_AGING_STEPS,
        fill_tokens: int = DEFAULT_FILL_TOKENS,
    ) -> None:
        if max_rows < 1 or token_budget < max_rows:
            # token_budget >= max_rows: the running rows' decode alone always fits a step.
            raise ValueError("need 1 <= max_rows <= token_budget")
        if aging_steps < 0 or fill_tokens < 0:
            raise ValueError("need aging_steps >= 0 and fill_tokens >= 0")
        self.token_budget = token_budget
        self.max_rows = max_rows
        self.aging_steps = aging_steps
        self.fill_tokens = fill_tokens
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
        urgent: int | None = None  # the best priority of the work in this step so far
        for running in list(self._running.values()):
            if running.started:
                step.decode.append(running.id)
                step.tokens += running.rows
                step.rows += running.rows
                urgent = running.priority if urgent is None else min(urgent, running.priority)
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
        self._advance(step)
        self._steps += 1
        return step

    def _join(self, step: StepPlan, work: Generation, limit: int) -> bool:
        """Prefill ``work`` in ``step`` if it fits (the step's tokens within ``limit``, or the step is
        empty); False: the scan stops."""
        tokens, rows = step.tokens + work.prefill_tokens, step.rows + work.rows
        fits = tokens <= limit and rows <= self.max_rows
        if not fits and not step.empty:
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
            step.tokens + work.prompt_lengths[stop] <= limit or (step.empty and stop == first)
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
            joined.started = True
            if joined.max_steps <= 0:  # its one token comes from the prefill's logits
                del self._running[work_id]
        for work_id in step.decode:
            work = self._running[work_id]
            work.steps_done += 1
            if work.steps_done >= work.max_steps:
                del self._running[work_id]
