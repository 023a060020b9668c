"""Spending campaign budgets in two phases: fit the payments, reserve them, then post or void.

Job: `BudgetSpender.fit_and_reserve` runs after the mechanism, before the billing write: every campaign's
payment must fit what remains of its budget — when one does not, the auction is resolved again on the
same candidates with that campaign's rewards scaled down (`app.campaigns.budget_fit`: bisection, only
ever lowering, bounded rounds; a campaign that still does not fit is left out of the draw at α = 0 and
charged nothing); never a partial charge, never a second model pass. Each payment is then reserved on
the campaign's own budget key (atomic there, `app.ledger.budget`); a reservation refused because others
spent meanwhile sends the fit round again with the budgets read anew. The ledger consumer posts the
reservations and frequency cap slots (`app.ledger.frequency`, reserved by the resolver) of every billing
event it applies, with the pacing steps the event carries; a rendered charge is posted here at render
(`post_steps`); after a failure the gateway voids them (`void`); a gateway killed in between leaves them
to expire by themselves. Invariant: the sum of a campaign's posted and live reserved amounts never
exceeds its daily or total budget. Imports the budget fit (pure), the budget ledger, the mechanism and
`app.contract`. See docs/DESIGN.md § Budgets are hard.

Pre-authorisation (`hold`, BUDGET_HOLD_FACTOR): before the model work each campaign reserves a hold under
the auction's id (a few times its mean charge, at most what remains), so that the reservation's durable
write runs while the candidates are generated. A payment within its hold needs nothing more before the
billing write (the ledger consumer's post captures the payment and releases the whole hold in one step);
a larger one grows the hold on the reply path (atomic on the campaign's key, refused past the limits like
any reservation). The invariant above holds throughout: a hold is a reservation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np
from redis.exceptions import RedisError

from app import mechanism
from app.campaigns.budget_fit import fit_budgets
from app.campaigns.participants import CampaignEntry, Participants
from app.contract.result import BudgetRecord
from app.ledger.budget import BudgetLedger, PacingStep, Reservation, reservation_expiry_ms
from app.ledger.events import to_micro_units
from app.ledger.frequency import FrequencyLedger
from app.settings import Settings

logger = logging.getLogger(__name__)


class BudgetReservationError(RuntimeError):
    """The budgets could not be reserved (Redis failed): the auction fails, nothing billed (503)."""


@dataclass(frozen=True)
class BudgetedOutcome:
    """The auction's outcome once every campaign's payment fits its budget."""

    rewards: np.ndarray  # (n, M): the rewards the outcome was resolved on (rows scaled by `alphas`)
    outcome: mechanism.AuctionOutcome
    alphas: np.ndarray  # (n,) budget multipliers: 1 where nothing was lowered (inline advertisers too)
    rounds: int
    records: tuple[BudgetRecord, ...]
    reserved: bool  # whether reservations are held (not for a test auction)
    # the participants it was fitted for (`CampaignResolver.recheck`: withdrawn campaigns left out)
    participants: Participants | None = None


@dataclass(frozen=True)
class FitInputs:
    """What the fit needs of the resolved auction: its rewards and densities, τ and the draw's seed."""

    rewards: np.ndarray
    log_ref: np.ndarray
    log_proposal: np.ndarray
    tau: float
    seed: int
    # The outcome already resolved on `rewards` with a fresh generator of `seed` (the auction's own):
    # when every charge fits, it is the fit's answer as it stands (no second solve).
    outcome: mechanism.AuctionOutcome | None = None


def _records(
    participants: Participants,
    remaining: list[int | None],
    alphas: np.ndarray,
    rounds: int,
    reserved: list[int] | None,
) -> tuple[BudgetRecord, ...]:
    """What the record keeps of each campaign's fit (docs/DESIGN.md § Budgets are hard: the replay)."""
    return tuple(
        BudgetRecord(
            campaign_id=entry.campaign.id,
            advertiser_id=entry.campaign.owner,
            day=entry.day,
            remaining_micro=remaining[entry.row],
            pacing_multiplier=entry.pacing_alpha,
            budget_multiplier=float(alphas[entry.row]),
            rounds=rounds,
            reserved_micro=reserved[entry.row] if reserved is not None else 0,
        )
        for entry in participants.entries
    )


async def _settled(pending: asyncio.Future[list[bool]]) -> list[bool]:
    """The reservations' replies; cancelled while they are in flight, they land first (so the void the
    cancelled auction sends next finds them) and the cancel goes on."""
    try:
        return await asyncio.shield(pending)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await pending
        raise


def _after_refusal(
    participants: Participants, accepted: list[bool], held: list[int], remaining: list[int | None]
) -> list[int]:
    """The holds left after `_refresh`: the accepted rows' were voided with their reservations (0); a
    refused row keeps its hold, which the budget read anew counts as reserved — it is this auction's own,
    so it is added back to what remains for it."""
    left = list(held)
    for entry, ok in zip(participants.entries, accepted, strict=True):
        if ok:
            left[entry.row] = 0
        elif remaining[entry.row] is not None:
            remaining[entry.row] = int(remaining[entry.row] or 0) + held[entry.row]
    return left


def hold_amount(entry: CampaignEntry, factor: float, share: float = 1.0) -> int:
    """What a campaign pre-authorises before the model work: `factor` × its mean charge so far (its
    pacing target per auction ρ while it has no charge), at most `share` of what remains of its budget
    (the holds of concurrent auctions must leave room for each other's payments); 0: none."""
    state = entry.state
    mean = state.spent_total / state.charged_total if state.charged_total > 0 else 0.0
    target = entry.pacing_step.target_micro if entry.pacing_step is not None else 0.0
    amount = math.ceil(factor * (mean if mean > 0 else max(target, 0.0)))
    remaining = entry.remaining
    return max(0, min(amount, math.floor(share * remaining)) if remaining is not None else amount)


class BudgetSpender:
    """Fits and reserves, posts, voids (see the module docstring)."""

    def __init__(self, budgets: BudgetLedger, settings: Settings) -> None:
        self.budgets = budgets
        self.frequency = FrequencyLedger(budgets.redis, settings)
        self.settings = settings

    async def fit_and_reserve(
        self,
        participants: Participants,
        inputs: FitInputs,
        auction_id: str,
        now_ms: int,
        *,
        reserve: bool,
        render: bool,
        overlap: Callable[[BudgetedOutcome], None] | None = None,
        held: list[int] | None = None,
        withdrawn: Sequence[int] = (),
    ) -> BudgetedOutcome:
        """The outcome with every payment within its campaign's budget, reserved when `reserve`.

        `overlap(outcome)` runs while the reservations of `outcome` are in flight (the caller builds its
        answer meanwhile: the round trip costs the reply path nothing more); `outcome` stands only if
        they are all accepted - the object returned is then that same one. `held`: each row's hold
        (`hold`); payments within them are reserved already (no round trip). `withdrawn`: rows of
        campaigns withdrawn by `CampaignResolver.recheck`, left out of the draw (α_b = 0, charged 0)."""
        entries = participants.entries
        n = inputs.rewards.shape[0]
        alphas = np.ones(n)
        alphas[list(withdrawn)] = 0.0
        remaining: list[int | None] = [None] * n
        for entry in entries:
            remaining[entry.row] = entry.remaining
        rounds = 0
        for attempt in range(self.settings.budget_reserve_attempts + n):
            rewards, outcome, payments, alphas, fit_rounds = self._fit(inputs, alphas, remaining)
            rounds += fit_rounds
            records = _records(participants, remaining, alphas, rounds, payments if reserve else None)
            result = BudgetedOutcome(
                rewards, outcome, alphas.copy(), rounds, records, reserve and bool(entries), participants
            )
            if not reserve or not entries:
                return result
            if held is not None and all(0 < held[e.row] >= payments[e.row] for e in entries):
                if overlap is not None:
                    overlap(result)
                # every payment within its hold, reserved before the model work (no hold: a record of
                # the auction must still be made, 0 included, for the post to count it)
                return result
            reservations = self._reservations(participants, payments, auction_id, now_ms, render)
            pending = asyncio.ensure_future(self._reserve(reservations, now_ms))
            try:
                if overlap is not None:
                    overlap(result)
            finally:
                accepted = await _settled(pending)
            if all(accepted):
                return result
            last = attempt + 1 >= self.settings.budget_reserve_attempts
            await self._refresh(participants, reservations, accepted, remaining, alphas if last else None)
            if held is not None:
                held = _after_refusal(participants, accepted, held, remaining)
        # each round past the attempts drops one more campaign
        raise BudgetReservationError(
            f"budgets of auction {auction_id} could not be reserved"
        )  # pragma: no cover

    async def hold(self, participants: Participants, auction_id: str, now_ms: int, render: bool) -> list[int]:
        """Pre-authorise each campaign's `hold_amount` under the auction's id (ONE round trip, meant to
        run beside the model work); each row's hold as accepted (0: none, refused, or Redis failed — the
        payment is then reserved after the mechanism, as without holds). It expires after the auction's
        deadline plus the reservation TTL if nothing posts or voids it."""
        n = len(participants.request.advertisers)
        held = [0] * n
        factor = self.settings.budget_hold_factor
        share = self.settings.budget_hold_share
        amounts = {e.row: hold_amount(e, factor, share) for e in participants.entries} if factor > 0 else {}
        asked = [e for e in participants.entries if amounts.get(e.row, 0) > 0]
        if not asked:
            return held
        deadline_ms = int(self.settings.auction_deadline_s * 1000)
        expires_at_ms = reservation_expiry_ms(self.settings, now_ms, render) + deadline_ms
        holds = [
            Reservation(e.campaign.id, auction_id, amounts[e.row], e.limits, e.day, expires_at_ms)
            for e in asked
        ]
        try:
            accepted = await self.budgets.reserve_all(holds, now_ms)
        except (RedisError, OSError) as error:
            logger.warning("budget holds of auction %s not taken: %s", auction_id, error)
            return held
        for entry, ok in zip(asked, accepted, strict=True):
            held[entry.row] = amounts[entry.row] if ok else 0
        return held

    def _reservations(
        self, participants: Participants, payments: list[int], auction_id: str, now_ms: int, render: bool
    ) -> list[Reservation]:
        expires_at_ms = reservation_expiry_ms(self.settings, now_ms, render)
        return [
            Reservation(
                campaign_id=entry.campaign.id,
                auction_id=auction_id,
                amount_micro=payments[entry.row],
                limits=entry.limits,
                day=entry.day,
                expires_at_ms=expires_at_ms,
            )
            for entry in participants.entries
        ]

    async def _refresh(
        self,
        participants: Participants,
        reservations: list[Reservation],
        accepted: list[bool],
        remaining: list[int | None],
        drop_into: np.ndarray | None,
    ) -> None:
        """After a refusal: void this auction's accepted reservations (their amounts may change), read
        the budgets anew into `remaining`; on the last attempt, leave the refused ones out (α = 0)."""
        entries = participants.entries
        auction_id, now_ms = reservations[0].auction_id, int(time.time() * 1000)
        taken = [r.campaign_id for r, ok in zip(reservations, accepted, strict=True) if ok]
        await self._void(taken, auction_id, now_ms)
        states = await self.budgets.states([e.campaign.id for e in entries], [e.day for e in entries], now_ms)
        for entry, state, ok in zip(entries, states, accepted, strict=True):
            remaining[entry.row] = state.remaining(entry.limits)
            if not ok and drop_into is not None:
                drop_into[entry.row] = 0.0  # others keep spending it: leave her out of this draw

    def _fit(
        self, inputs: FitInputs, alphas: np.ndarray, remaining: list[int | None]
    ) -> tuple[np.ndarray, mechanism.AuctionOutcome, list[int], np.ndarray, int]:
        """One fit from the current multipliers: lower them until every rounded payment fits, then
        resolve on exactly the rewards the record keeps (rows × α), so the seed replays it."""
        rounds = 0
        alphas = alphas.copy()
        if inputs.outcome is not None and bool(np.all(alphas == 1.0)):
            payments = [to_micro_units(float(p)) for p in inputs.outcome.payments]
            if all(r is None or payments[i] <= r for i, r in enumerate(remaining)):
                return inputs.rewards, inputs.outcome, payments, alphas, rounds
        over: list[int] = []
        for _ in range(4):
            base = inputs.rewards if bool(np.all(alphas == 1.0)) else inputs.rewards * alphas[:, None]
            if any(r is not None for r in remaining):
                fit = fit_budgets(
                    base,
                    inputs.log_ref,
                    inputs.log_proposal,
                    inputs.tau,
                    remaining,
                    inputs.seed,
                    max_rounds=self.settings.budget_fit_rounds,
                )
                if not bool(np.all(fit.alphas == 1.0)):
                    alphas = alphas * fit.alphas
                    rounds += fit.rounds
                    base = inputs.rewards * alphas[:, None]
            rng = np.random.default_rng(inputs.seed)
            outcome = mechanism.run_auction(base, inputs.log_ref, inputs.log_proposal, inputs.tau, rng)
            payments = [to_micro_units(float(p)) for p in outcome.payments]
            over = [i for i, r in enumerate(remaining) if r is not None and payments[i] > r]
            if not over:
                return base, outcome, payments, alphas, rounds
            for i in over:  # the product α·α' rounded past the fit's own check: lower a hair more
                alphas[i] *= 1 - 1e-9
        alphas[over] = 0.0
        base = inputs.rewards * alphas[:, None]
        rng = np.random.default_rng(inputs.seed)
        outcome = mechanism.run_auction(base, inputs.log_ref, inputs.log_proposal, inputs.tau, rng)
        return base, outcome, [to_micro_units(float(p)) for p in outcome.payments], alphas, rounds

    async def _reserve(self, reservations: list[Reservation], now_ms: int) -> list[bool]:
        try:
            return await self.budgets.reserve_all(reservations, now_ms)
        except (RedisError, OSError) as error:
            raise BudgetReservationError(
                f"budget reservation failed: {type(error).__name__}: {error}"
            ) from error

    async def _void(self, campaign_ids: list[str], auction_id: str, now_ms: int) -> None:
        if campaign_ids:
            await self.budgets.void_all(campaign_ids, auction_id, now_ms)

    async def post_steps(
        self,
        campaign_ids: list[str],
        auction_id: str,
        steps: list[PacingStep | None],
        now_ms: int,
        captured: list[int | None] | None = None,
    ) -> None:
        """A rendered charge's post at render, with its pacing steps and the payments it captures."""
        posting = self.budgets.post_all(campaign_ids, auction_id, steps, now_ms, captured)
        await _best_effort(posting, "budget post failed (the ledger consumer posts it)", auction_id)

    async def void(self, participants: Participants, auction_id: str, now_ms: int) -> None:
        """After a failed auction: release the reservations and cap slots (else they expire by
        themselves)."""
        voiding = self._void([e.campaign.id for e in participants.entries], auction_id, now_ms)
        await _best_effort(voiding, "budget void failed (the reservations expire by themselves)", auction_id)
        await self.void_slots(participants, auction_id, now_ms)

    async def void_slots(self, participants: Participants, auction_id: str, now_ms: int) -> None:
        """Release the auction's frequency cap slots (else they expire by themselves)."""
        holds = [(h.campaign_id, h.user) for h in participants.frequency_holds]
        voiding = self.frequency.void_all(holds, auction_id, now_ms)
        await _best_effort(voiding, "frequency cap void failed (the slots expire by themselves)", auction_id)


async def _best_effort(work: Awaitable[object], message: str, auction_id: str) -> None:
    """Await `work`; a Redis failure is logged (`message`), never raised: what it would have written
    is written later by another party or expires by itself."""
    try:
        await work
    except (RedisError, OSError) as error:
        logger.warning(message, extra={"auction_id": auction_id, "error": f"{type(error).__name__}: {error}"})
