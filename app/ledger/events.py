"""The billing event: money in integer micro-units, building an event, parsing a stream entry.

Job: the pure rules of one payment, with no Redis and no I/O: `to_micro_units` / `format_micro`,
`BillingEvent` and `make_billing_event` (what the gateway appends), and `parse_entry` (what the
consumer reads back, checked before the apply script sees it). Imports the standard library only.

Money is integer micro-units (1 unit = 1_000_000 micro) everywhere after `to_micro_units`.
See docs/DESIGN.md § Billing.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Literal

MICRO_UNITS_PER_UNIT = 1_000_000
# Largest payment of one advertiser in one auction (10 million units). It keeps every sum inside a
# Lua script exact (Lua numbers are doubles: exact below 2**53) with up to MAX_ADVERTISERS_PER_EVENT.
# Payments are never negative (p_i = τ·KL(π ‖ π^{-i}) ≥ 0): a refund would be its own operation.
MAX_ABS_PAYMENT_MICRO = 10_000_000 * MICRO_UNITS_PER_UNIT
MAX_ADVERTISERS_PER_EVENT = 256
MAX_ID_LENGTH = 256
EVENT_VERSION = "1"
# A campaign's pacing step as an event carries it: (ρ target spend per auction, ε, μ̄).
PacingArgs = tuple[float, float, float]


# --- money ---------------------------------------------------------------------------------------


def to_micro_units(amount: float) -> int:
    """Units -> integer micro-units, rounding half to even.

    The float is read as the shortest decimal that round-trips it (``repr``), so ``0.1`` is exactly
    100_000 micro and ``2.5e-06`` (exactly half a micro-unit as written) rounds to 2, whereas
    ``amount * 1e6`` would carry binary noise into the rounding. NaN and infinities raise ValueError.
    """
    if isinstance(amount, bool):
        raise ValueError("a payment must be a number, not a bool")
    if isinstance(amount, int):
        return amount * MICRO_UNITS_PER_UNIT
    if not math.isfinite(amount):
        raise ValueError(f"a payment must be finite, got {amount!r}")
    try:
        exact = Decimal(repr(float(amount))).scaleb(6)
    except InvalidOperation as error:  # pragma: no cover - repr of a finite float always parses
        raise ValueError(f"not a number: {amount!r}") from error
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def format_micro(micro: int) -> str:
    """Integer micro-units -> an exact decimal string with 6 places (``-1.250000``)."""
    return f"{Decimal(micro).scaleb(-6):.6f}"


# --- the event -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BillingEvent:
    """One auction's payments; `revenue_micro` is the sum of the rounded payments, so it balances.

    `campaigns` maps an advertiser id to the campaign whose budget holds her reservation (the ledger
    consumer posts it when it applies the event; absent for inline advertisers). `pacing` (billed at
    once: BILLING_MODE=auction) maps each of those campaigns to its pacing step as fixed before the
    auction, (ρ, ε, μ̄), or None without one: the consumer's post then applies it and is final, so μ
    steps once per billed auction, whoever dies when (an event without it - a rendered charge, whose
    step is taken at render - is posted without a step). `fcap` maps a campaign id to (user hash,
    per_seconds) of the frequency cap slot it holds for this auction's user (posted with the event, like
    the budget)."""

    auction_id: str
    created_at_ms: int
    currency: str
    payments_micro: dict[str, int]
    revenue_micro: int
    campaigns: dict[str, str] = field(default_factory=dict)
    pacing: dict[str, PacingArgs | None] = field(default_factory=dict)
    fcap: dict[str, tuple[str, int]] = field(default_factory=dict)

    def stream_fields(self) -> dict[str, str]:
        """The fields of the stream entry (payments and campaigns as canonical JSON: sorted keys,
        compact); `campaigns` only when non-empty, so an event without campaigns is unchanged."""
        fields = {
            "v": EVENT_VERSION,
            "auction_id": self.auction_id,
            "created_at_ms": str(self.created_at_ms),
            "currency": self.currency,
            "revenue_micro": str(self.revenue_micro),
            "payments": _canonical(self.payments_micro),
        }
        if self.campaigns:
            fields["campaigns"] = _canonical(self.campaigns)
        if self.pacing:
            fields["pacing"] = _canonical({c: list(step or ()) for c, step in self.pacing.items()})
        if self.fcap:
            fields["fcap"] = _canonical({c: list(hold) for c, hold in self.fcap.items()})
        return fields


def _canonical(mapping: Mapping[str, object]) -> str:
    return json.dumps(dict(mapping), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _check_id(kind: str, value: str) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{kind} must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{kind} is not valid Unicode text: {value!r}") from error


def make_billing_event(
    auction_id: str,
    payments: Mapping[str, float],
    currency: str,
    now_ms: int | None = None,
    campaigns: Mapping[str, str] | None = None,
    pacing: Mapping[str, PacingArgs | None] | None = None,
    fcap: Mapping[str, tuple[str, int]] | None = None,
) -> BillingEvent:
    """Round each payment to micro-units (`to_micro_units`); revenue = sum of the rounded payments.

    Payments are never negative. Raises ValueError on an empty id, a negative, non-finite or too large
    payment, too many advertisers, a currency that is not three upper-case letters, or a campaign of
    an advertiser without a payment.
    """
    _check_id("auction_id", auction_id)
    if not (isinstance(currency, str) and len(currency) == 3 and currency.isascii() and currency.isupper()):
        raise ValueError(f"currency must be three upper-case letters, got {currency!r}")
    if len(payments) > MAX_ADVERTISERS_PER_EVENT:
        raise ValueError(f"at most {MAX_ADVERTISERS_PER_EVENT} advertisers per billing event")
    micro: dict[str, int] = {}
    for advertiser_id in sorted(payments):
        _check_id("advertiser id", advertiser_id)
        value = to_micro_units(payments[advertiser_id])
        if value < 0:
            raise ValueError(f"payment of {advertiser_id!r} is negative ({format_micro(value)}): never")
        if value > MAX_ABS_PAYMENT_MICRO:
            raise ValueError(f"payment of {advertiser_id!r} exceeds {format_micro(MAX_ABS_PAYMENT_MICRO)}")
        micro[advertiser_id] = value
    for advertiser_id, campaign_id in (campaigns or {}).items():
        _check_id("campaign id", campaign_id)
        if advertiser_id not in micro:
            raise ValueError(
                f"campaign {campaign_id!r} names advertiser {advertiser_id!r}, who has no payment"
            )
    for campaign_id, step in (pacing or {}).items():
        if campaign_id not in (campaigns or {}).values():
            raise ValueError(f"pacing of campaign {campaign_id!r}, which is not in the event")
        if step is not None and not (len(step) == 3 and all(math.isfinite(x) for x in step)):
            raise ValueError(f"pacing step of campaign {campaign_id!r} is not three finite numbers")
    created = int(time.time() * 1000) if now_ms is None else int(now_ms)
    if created < 0:
        raise ValueError("created_at_ms must not be negative")
    return BillingEvent(
        auction_id=auction_id,
        created_at_ms=created,
        currency=currency,
        payments_micro=micro,
        revenue_micro=sum(micro.values()),
        campaigns={adv: (campaigns or {})[adv] for adv in sorted(campaigns or {})},
        pacing=dict(pacing or {}),
        fcap={c: (fcap or {})[c] for c in sorted(fcap or {}) if c in (campaigns or {}).values()},
    )


# --- a stream entry --------------------------------------------------------------------------------


class MalformedEventError(ValueError):
    """A stream entry that cannot be a billing event (the reason is the message)."""


@dataclass(frozen=True)
class StreamEvent:
    """A stream entry parsed into the script's arguments (payments sorted by advertiser id)."""

    stream_id: str
    auction_id: str
    created_at_ms: str
    currency: str
    revenue_micro: str
    payments: tuple[tuple[str, str], ...]
    campaigns: str = ""  # canonical JSON {advertiser id: campaign id}, "" when the event has none
    pacing: str = ""  # canonical JSON {campaign id: [ρ, ε, μ̄] or []}, "" when the event has none
    fcap: str = ""  # canonical JSON {campaign id: [user hash, per_seconds]}, "" when none

    def campaign_ids(self) -> list[str]:
        """The campaigns whose reservations this event posts (sorted by advertiser id)."""
        return list(json.loads(self.campaigns).values()) if self.campaigns else []

    def posts(self) -> list[tuple[str, str, PacingArgs | Literal["absent"] | None, int | None]]:
        """(campaign id, auction id, pacing step, payment) of each reservation the ledger consumer
        posts: the payment is the amount captured (the reservation may be a larger hold)."""
        if not self.campaigns:
            return []
        paid = dict(self.payments)
        return [
            (c, self.auction_id, self.pacing_of(c), int(paid[a]) if a in paid else None)
            for a, c in json.loads(self.campaigns).items()
        ]

    def pacing_of(self, campaign_id: str) -> PacingArgs | Literal["absent"] | None:
        """The campaign's pacing step carried by the event: (ρ, ε, μ̄), None (the event says it has
        none) or "absent" (an event without `pacing`: a rendered charge, stepped at render)."""
        if not self.pacing:
            return "absent"
        step = json.loads(self.pacing).get(campaign_id)
        return (float(step[0]), float(step[1]), float(step[2])) if step else None

    def fcap_holds(self) -> list[tuple[str, str, int]]:
        """The frequency cap slots this event posts: (campaign id, user hash, per_seconds)."""
        return [(c, str(u), int(w)) for c, (u, w) in json.loads(self.fcap).items()] if self.fcap else []


_INT_RE = re.compile(r"-?(0|[1-9][0-9]*)")


def _int_text(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedEventError(f"{what} is not an integer: {value!r}")
    return str(value)


def parse_entry(stream_id: str, fields: Mapping[str, str]) -> StreamEvent:
    """Parse the fields of a stream entry; raises MalformedEventError with the reason."""
    version = fields.get("v", EVENT_VERSION)
    if version != EVENT_VERSION:
        raise MalformedEventError(f"unknown event version {version!r}")
    missing = [
        k for k in ("auction_id", "created_at_ms", "currency", "revenue_micro", "payments") if k not in fields
    ]
    if missing:
        raise MalformedEventError(f"missing field(s) {', '.join(missing)}")
    try:
        payments = json.loads(fields["payments"])
    except ValueError as error:
        raise MalformedEventError(f"payments is not JSON: {error}") from error
    if not isinstance(payments, dict):
        raise MalformedEventError("payments is not a JSON object")
    for name in ("created_at_ms", "revenue_micro"):
        text = fields[name]
        if not _INT_RE.fullmatch(text):
            raise MalformedEventError(f"{name} is not an integer: {text!r}")
    pairs = tuple((str(adv), _int_text(payments[adv], f"payment of {adv!r}")) for adv in sorted(payments))
    campaigns = _parse_campaigns(fields.get("campaigns"), {adv for adv, _ in pairs})
    pacing = _parse_pacing(fields.get("pacing"), campaigns)
    fcap = _parse_fcap(fields.get("fcap"), set(json.loads(campaigns).values()) if campaigns else set())
    for text in (fields["auction_id"], fields["currency"], *(adv for adv, _ in pairs)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise MalformedEventError(f"not UTF-8 text: {text!r}") from error
    return StreamEvent(
        stream_id=stream_id,
        auction_id=fields["auction_id"],
        created_at_ms=fields["created_at_ms"],
        currency=fields["currency"],
        revenue_micro=fields["revenue_micro"],
        payments=pairs,
        campaigns=campaigns,
        pacing=pacing,
        fcap=fcap,
    )


def _json_object(raw: str, name: str) -> dict[str, Any]:
    """An optional field's JSON: a non-empty object, else MalformedEventError naming the field."""
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise MalformedEventError(f"{name} is not JSON: {error}") from error
    if not isinstance(value, dict) or not value:
        raise MalformedEventError(f"{name} is not a non-empty JSON object")
    return value


def _parse_campaigns(raw: str | None, advertisers: set[str]) -> str:
    """The `campaigns` field as canonical JSON ("" when absent); each names a paid advertiser."""
    if raw is None:
        return ""
    campaigns = _json_object(raw, "campaigns")
    for adv, campaign_id in campaigns.items():
        if adv not in advertisers:
            raise MalformedEventError(f"campaign of {adv!r}, who has no payment")
        if not isinstance(campaign_id, str) or not 0 < len(campaign_id) <= MAX_ID_LENGTH:
            raise MalformedEventError(f"campaign id of {adv!r} is not a short non-empty string")
    return _canonical(campaigns)


def _parse_pacing(raw: str | None, campaigns: str) -> str:
    """The `pacing` field as canonical JSON ("" when absent): a step of three finite numbers (or [])
    for each campaign of the event, none other."""
    if raw is None:
        return ""
    pacing = _json_object(raw, "pacing")
    known = set(json.loads(campaigns).values()) if campaigns else set()
    if set(pacing) != known:
        raise MalformedEventError("pacing does not name exactly the event's campaigns")
    for campaign_id, step in pacing.items():
        numbers = isinstance(step, list) and all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in step
        )
        if not numbers or len(step) not in (0, 3):
            raise MalformedEventError(f"pacing step of {campaign_id!r} is not [] or three finite numbers")
    return _canonical(pacing)


_USER_HASH_RE = re.compile(r"[0-9a-f]{64}")


def _parse_fcap(raw: str | None, campaign_ids: set[str]) -> str:
    """The `fcap` field as canonical JSON ("" when absent); each names a campaign of the event."""
    if raw is None:
        return ""
    fcap = _json_object(raw, "fcap")
    for campaign_id, hold in fcap.items():
        if campaign_id not in campaign_ids:
            raise MalformedEventError(f"fcap of campaign {campaign_id!r}, which is not in the event")
        valid = isinstance(hold, list) and len(hold) == 2 and isinstance(hold[0], str)
        if not valid or not _USER_HASH_RE.fullmatch(hold[0]) or type(hold[1]) is not int or hold[1] < 1:
            raise MalformedEventError(
                f"fcap of campaign {campaign_id!r} is not [user sha256 hex, per_seconds]"
            )
    return _canonical(fcap)
