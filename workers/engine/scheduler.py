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

Fairness rule (no request starves):
1. the running generations always decode (their rows were admitted; a step never pauses them);
2. then waiting work is taken strictly in arrival order: the head of the queue gets its prefill (or as
   many of its prompts as fit) if it fits in what is left of the budget and rows; if it does not, the
   scan stops there — nothing behind it overtakes it;
3. a step that would otherwise do nothing takes the head whatever its size (so work larger than the
   budget still runs, alone).
Bound: while the head waits, every step decodes the running rows, each running generation finishes
within its ``max_steps``, and nothing new joins ahead of the head; so the head starts after at most the
longest remaining ``max_steps`` of the running work, plus the steps to score what is ahead of it.

Batch invariance is the engine's business (the arithmetic of a row must not depend on what shares its
step); this module only decides membership and keeps arrival order.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class Generation:
    id: int
    prefill_tokens: int
    rows: int
    max_steps: int
    steps_done: int = 0
    started: bool = False


@dataclass
class Scoring:
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
    def __init__(self, token_budget: int, max_rows: int) -> None:
        if max_rows < 1 or token_budget < max_rows:
            # token_budget >= max_rows: the running rows' decode alone always fits a step.
            raise ValueError("need 1 <= max_rows <= token_budget")
        self.token_budget = token_budget
        self.max_rows = max_rows
        self._waiting: deque[Generation | Scoring] = deque()
        self._running: dict[int, Generation] = {}  # arrival order (dicts keep insertion order)

    # --------------------------------------------------------------------------------- submissions
    def submit_generation(self, work_id: int, prefill_tokens: int, rows: int, max_steps: int) -> None:
        self._waiting.append(Generation(work_id, prefill_tokens, rows, max_steps))

    def submit_scoring(self, work_id: int, prompt_lengths: list[int]) -> None:
        if prompt_lengths:
            self._waiting.append(Scoring(work_id, list(prompt_lengths)))

    def cancel(self, work_id: int) -> None:
        """Drop work whose client went away (waiting or running)."""
        self._running.pop(work_id, None)
        self._waiting = deque(w for w in self._waiting if w.id != work_id)

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
        for work in list(self._running.values()):
            if work.started:
                step.decode.append(work.id)
                step.tokens += work.rows
                step.rows += work.rows
        while self._waiting:
            head = self._waiting[0]
            if isinstance(head, Generation):
                fits = (
                    step.tokens + head.prefill_tokens <= self.token_budget
                    and step.rows + head.rows <= self.max_rows
                )
                if not fits and not step.empty:
                    break
                self._waiting.popleft()
                step.prefill.append(head.id)
                step.joined.append(head.id)
                step.tokens += head.prefill_tokens
                step.rows += head.rows
                self._running[head.id] = head
                continue
            first = stop = head.next_prompt
            while stop < len(head.prompt_lengths) and (
                step.tokens + head.prompt_lengths[stop] <= self.token_budget or (step.empty and stop == first)
            ):
                step.tokens += head.prompt_lengths[stop]
                stop += 1
            if stop == first:
                break
            step.score.append((head.id, first, stop))
            if first == 0:
                step.joined.append(head.id)
            head.next_prompt = stop
            if not head.done:
                break  # the rest of its prompts go first in the next step: still the head
            self._waiting.popleft()
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
        return step
