"""Campaign budgets as a hard limit: two-phase reservations on one Redis hash per campaign.

Job: `BudgetLedger` reserves an auction's payment on each campaign's own budget key before the
billing write, posts it (reserved → spent) with the billing event, voids it when the auction fails,
and lets an unposted reservation expire by itself (TigerBeetle's pending transfers). Each call is
ONE round trip: a pipeline of EVALSHAs of ``budget.lua``, each atomic on its own key
``mosaic:budget:{<campaign id>}`` (a hash tag: one Redis Cluster slot per campaign, so the design
holds when campaigns and billing events live on different shards). Imports redis, app.settings and
app.ledger (keys, scripts) only.

Invariants (kept by budget.lua, checked by `mosaic ledger reconcile`):
- a reservation succeeds only if amount ≤ daily limit − spent − reserved of its day AND total limit
  − spent − reserved, after this key's reservations past their expiry were released (lazily: no
  sweeper); so spent + reserved never passes a limit through reservations;
- a post moves exactly the reserved amount to spent, once per auction id (gateway and ledger consumer
  may both post); a post that comes after the reservation expired or was voided is still counted
  (the reply was shown) and recorded (``late_posts`` + the auction id) — the only way spend can pass
  a limit, reported by reconcile;
- the pacing step μ ← clip(μ − ε·(ρ − z)/ρ, 0, μ̄), z = the posted amount, is applied once, by the
  post that carries it, in the same script;
- amounts are integers below 2**53 (Lua numbers are doubles): limits and amounts above MAX_SAFE are
  refused here and in the script, and a reservation that would take spent + reserved past it too.
See docs/DESIGN.md § Billing (campaign budgets).
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from app.ledger.events import PacingArgs
from app.ledger.keys import as_str
from app.ledger.scripts import BUDGET_SCRIPT, run_pipelined
from app.settings import Settings

logger = logging.getLogger(__name__)

BUDGET_PREFIX = "mosaic:budget:"
MAX_SAFE = 2**53 - 1  # every amount, limit and sum in budget.lua stays at or below it (exact doubles)
DAYS_KEPT = 7  # budget.lua keeps the daily counters of the 7 most recent days


# What a post of the ledger consumer carries for one (campaign, auction): "absent" (an event without
# pacing: posted without a step, not final), None (final, no step) or the step (final, stepped).
PostStep = PacingArgs | Literal["absent"] | None


def post_item(auction_id: str, captured_micro: int | None) -> str:
    """One auction of a post's ARGV: its id, with the amount captured when known (budget.lua spends
    that amount and releases the whole reservation: a pre-authorisation hold may be larger)."""
    return auction_id if captured_micro is None else f"{auction_id}\t{int(captured_micro)}"


def group_posts(
    items: Iterable[tuple[str, str, PostStep, int | None]],
) -> dict[tuple[str, PostStep], list[str]]:
    """(campaign id, auction id, step, captured amount) -> (campaign id, step) -> post items: one post
    call per campaign and step (the auctions of one campaign without a step share one call)."""
    posts: dict[tuple[str, PostStep], list[str]] = defaultdict(list)
    for campaign_id, auction_id, step, captured_micro in items:
        posts[campaign_id, step].append(post_item(auction_id, captured_micro))
    return posts


def budget_key(campaign_id: str) -> str:
    """The campaign's one budget hash; ``{...}`` is a Redis Cluster hash tag (one slot)."""
    return f"{BUDGET_PREFIX}{{{campaign_id}}}"


def reservation_expiry_ms(settings: Settings, now_ms: int, render: bool) -> int:
    """When a reservation made now expires if nobody posts or voids it.

    BUDGET_RESERVATION_TTL_S after now; in render mode RENDER_WINDOW_S + BUDGET_RESERVATION_TTL_S,
    since a pending charge holds its amount until it is rendered (billed) or expires.
    """
    ttl_s = settings.budget_reservation_ttl_s + (settings.render_window_s if render else 0)
    return now_ms + ttl_s * 1000


@dataclass(frozen=True)
class BudgetLimits:
    daily_micro: int | None
    total_micro: int | None

    def __post_init__(self) -> None:
        for name in ("daily_micro", "total_micro"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an integer")
            if value is not None and not 1 <= value <= MAX_SAFE:
                raise ValueError(f"{name} must be between 1 and {MAX_SAFE}")


@dataclass(frozen=True)
class BudgetState:
    day: str
    spent_today: int
    reserved_today: int
    spent_total: int
    reserved_total: int
    auctions_today: int  # reservations posted (auctions whose charge was billed, 0 included)
    auctions_total: int
    charged_total: int  # posts with amount > 0
    mu: float  # pacing state (α = 1/(1+μ)); 0.0 when new
    late_posts: int = 0  # posts after the reservation expired or was voided
    expired_total: int = 0  # reservations that expired unposted

    def remaining(self, limits: BudgetLimits) -> int | None:
        """min over the daily and total limits of limit − spent − reserved (≥ 0); None = no limit."""
        left: list[int] = []
        if limits.daily_micro is not None:
            left.append(limits.daily_micro - self.spent_today - self.reserved_today)
        if limits.total_micro is not None:
            left.append(limits.total_micro - self.spent_total - self.reserved_total)
        return max(0, min(left)) if left else None


@dataclass(frozen=True)
class Reservation:
    campaign_id: str
    auction_id: str
    amount_micro: int
    limits: BudgetLimits
    day: str
    expires_at_ms: int

    def __post_init__(self) -> None:
        if isinstance(self.amount_micro, bool) or not isinstance(self.amount_micro, int):
            raise ValueError("amount_micro must be an integer")
        if not 0 <= self.amount_micro <= MAX_SAFE:
            raise ValueError(f"amount_micro must be between 0 and {MAX_SAFE}")
        for name in ("campaign_id", "auction_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not 0 < len(value) <= 256:
                raise ValueError(f"{name} must be a non-empty string of at most 256 characters")


@dataclass(frozen=True)
class PacingStep:
    target_micro: float  # ρ: target spend per auction (no step when ≤ 0)
    epsilon: float  # ε: step size
    mu_max: float  # μ̄: the largest μ

    def __post_init__(self) -> None:
        if not all(math.isfinite(x) for x in (self.target_micro, self.epsilon, self.mu_max)):
            raise ValueError("a pacing step must be finite")
        if self.epsilon < 0 or self.mu_max < 0:
            raise ValueError("epsilon and mu_max must not be negative")


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)


def _pacing_args(step: PacingStep | None, final: bool) -> list[str]:
    # '' (the ledger consumer's post) keeps a posted record for the gateway's post to come; "0" (the
    # gateway's post without a pacing step) is final like a step: the record goes at once (the hash
    # holds only auctions in flight, so its housekeeping scan stays short).
    if step is None:
        return ["0", "0", "0"] if final else ["", "", ""]
    return [repr(float(step.target_micro)), repr(float(step.epsilon)), repr(float(step.mu_max))]


class BudgetLedger:
    """Reserve, post, void and read campaign budgets (one round trip per call)."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._sha: str | None = None
        # how long a voided record, or one posted without its pacing step, is kept past its expiry
        self.keep_ms = settings.budget_reservation_ttl_s * 1000

    async def sha(self) -> str:
        if self._sha is None:
            self._sha = as_str(await self.redis.script_load(BUDGET_SCRIPT))
        return self._sha

    def queue(self, pipe: Any, sha: str, campaign_id: str, args: Sequence[object]) -> None:
        """Queue one EVALSHA of budget.lua on `pipe` (the ledger consumer's batch uses it too)."""
        pipe.execute_command("EVALSHA", sha, 1, budget_key(campaign_id), *(str(a) for a in args))

    def post_args(
        self, auction_ids: Sequence[str], step: PacingStep | None, now_ms: int, final: bool = False
    ) -> list[object]:
        """ARGV of a post of these auctions' reservations on one campaign (one script call); `final`:
        the gateway's post (with its pacing step, if any), after which nobody posts again."""
        return ["post", now_ms, *_pacing_args(step, final), self.keep_ms, *auction_ids]

    def consumer_post_args(self, step: PostStep, auction_ids: Sequence[str], now_ms: int) -> list[object]:
        """ARGV of the ledger consumer's post of these auctions on one campaign (`group_posts`)."""
        if step == "absent":
            return self.post_args(auction_ids, None, now_ms)
        pacing = None if step is None else PacingStep(*step)
        return self.post_args(auction_ids, pacing, now_ms, final=True)

    def count_posts(
        self,
        posts: dict[tuple[str, PostStep], list[str]],
        results: Sequence[Any],
        stats: MutableMapping[str, int],
    ) -> dict[tuple[str, PostStep], list[str]]:
        """Count the outcomes of pipelined posts (`budget_<status>` in `stats`); returns those to
        run again (NOSCRIPT: the script is loaded again). A refused post is logged, never raised: it
        must not stall the ledger consumer."""
        retry: dict[tuple[str, PostStep], list[str]] = {}
        for ((campaign_id, step), auction_ids), result in zip(posts.items(), results, strict=True):
            if isinstance(result, NoScriptError):
                self._sha = None
                retry[campaign_id, step] = auction_ids
            elif isinstance(result, Exception):
                stats["budget_post_errors"] = stats.get("budget_post_errors", 0) + 1
                logger.error("budget post of %s on campaign %s failed: %s", auction_ids, campaign_id, result)
            else:
                for status in result:
                    name = "budget_" + as_str(status)
                    stats[name] = stats.get(name, 0) + 1
        return retry

    async def _run(
        self, calls: Sequence[tuple[str, Sequence[object]]], gets: Sequence[str] = ()
    ) -> list[Any]:
        """Pipeline a GET of each of `gets` (their replies first), then one EVALSHA per (campaign id,
        ARGV) (`run_pipelined`: every op is idempotent, rerun after NOSCRIPT)."""
        keyed = [(budget_key(campaign_id), args) for campaign_id, args in calls]
        return await run_pipelined(self.redis, self.sha, self._forget, keyed, gets, "budget")

    def _forget(self) -> None:
        self._sha = None

    async def states(self, campaign_ids: list[str], days: list[str], now_ms: int) -> list[BudgetState]:
        """Each campaign's state on its day (expired reservations released first). ONE round trip."""
        _, states = await self.states_beside([], campaign_ids, days, now_ms)
        return states

    async def states_beside(
        self, gets: list[str], campaign_ids: list[str], days: list[str], now_ms: int
    ) -> tuple[list[Any], list[BudgetState]]:
        """GET each key of `gets` (another feature's documents: the campaigns themselves) and each
        (campaign, day) state, in ONE round trip (the auction reads its campaigns and their budgets at
        once, before it knows each campaign's time zone, hence its day: several days per campaign)."""
        if len(campaign_ids) != len(days):
            raise ValueError("one day per campaign")
        replies = await self._run(
            [(c, ["state", now_ms, d]) for c, d in zip(campaign_ids, days, strict=True)], gets
        )
        return replies[: len(gets)], self._parse_states(days, replies[len(gets) :])

    @staticmethod
    def _parse_states(days: list[str], replies: list[Any]) -> list[BudgetState]:
        out = []
        for day, reply in zip(days, replies, strict=True):
            v = [as_str(x) for x in reply]
            out.append(
                BudgetState(
                    day=day,
                    spent_today=int(v[0]),
                    reserved_today=int(v[1]),
                    spent_total=int(v[2]),
                    reserved_total=int(v[3]),
                    auctions_today=int(v[4]),
                    auctions_total=int(v[5]),
                    charged_total=int(v[6]),
                    mu=float(v[7]),
                    late_posts=int(v[8]),
                    expired_total=int(v[9]),
                )
            )
        return out

    async def reserve_all(self, reservations: list[Reservation], now_ms: int) -> list[bool]:
        """Reserve each amount on its own campaign's key (each atomic there). ONE round trip.

        True where it fitted (or this auction already holds it); False where it did not fit the
        daily or total limit, or its expiry already passed. A reservation this auction voided is
        made anew (the budget fit releases and re-reserves when another campaign's was refused)."""
        calls: list[tuple[str, Sequence[object]]] = [
            (
                r.campaign_id,
                [
                    "reserve",
                    now_ms,
                    r.auction_id,
                    r.amount_micro,
                    r.day,
                    r.expires_at_ms,
                    _opt(r.limits.daily_micro),
                    _opt(r.limits.total_micro),
                    self.keep_ms,
                ],
            )
            for r in reservations
        ]
        return [bool(int(reply[0])) for reply in await self._run(calls)]

    async def post_all(
        self,
        campaign_ids: list[str],
        auction_id: str,
        pacing: list[PacingStep | None],
        now_ms: int,
        captured: list[int | None] | None = None,
    ) -> list[str]:
        """Post the auction's reservation on each campaign (idempotent), with its pacing step.

        Per campaign: ``posted``; ``late`` (it had expired or been voided: counted and recorded);
        ``stepped`` (posted before without a step, the step applied now); ``already_posted``;
        ``unknown`` (never reserved, or posted with its step and forgotten). `captured`: each campaign's
        payment (None: spend what is reserved). ONE round trip."""
        amounts = captured if captured is not None else [None] * len(campaign_ids)
        if not len(campaign_ids) == len(pacing) == len(amounts):
            raise ValueError("one pacing step (or None) and one captured amount (or None) per campaign")
        calls = [
            (c, self.post_args([post_item(auction_id, a)], s, now_ms, final=True))
            for c, s, a in zip(campaign_ids, pacing, amounts, strict=True)
        ]
        return [as_str(reply[0]) for reply in await self._run(calls)]

    async def void_all(self, campaign_ids: list[str], auction_id: str, now_ms: int) -> list[str]:
        """Release the auction's reservations (idempotent): ``voided``, or the state it was already
        in (``posted``, ``voided``, ``expired``), or ``unknown``. ONE round trip."""
        calls = [(c, ["void", now_ms, auction_id, self.keep_ms]) for c in campaign_ids]
        return [as_str(reply) for reply in await self._run(calls)]

    async def late_auctions(self, campaign_id: str) -> list[str]:
        """The last auction ids posted after their reservation expired or was voided (reconcile)."""
        raw = await self.redis.hget(budget_key(campaign_id), "late_ids")
        return [str(x) for x in json.loads(as_str(raw))] if raw is not None else []
