"""The sponsorship disclosure of a reply (`Disclosure`, `SealedDisclosure`) and the rule that makes it.

Every `POST /auction` answer, stored record and sealed view carries one, meant for the user who reads
the reply: whether it is sponsored, by whom (advertiser id and display name, never an amount), a label
an integrator renders as is, and a machine-readable form (IAB AI Transparency and Disclosure Framework;
EU DSA art. 26(1): that it is an ad, on whose behalf, who paid, where the main parameters are).

The rule (`disclose`): an advertiser is a sponsor when she is charged at least one micro-unit for the
reply (`payments_micro[id] ≥ 1` in the auction's billing event). With the mechanism's offset p_i =
τ·KL(π‖π^{-i}), which is > 0 whenever her rewards differ across the candidates, that is nearly everyone
who took part. A no-fill (nobody bid: one organic sample of π_ref) and a test auction (never billed) are
not sponsored, nor an auction where nobody was charged a micro-unit. Sponsors are listed by display name
(then id): an order that carries nothing — not the payments (that would leak their ranking), not the
caller's or the selection's ranking. `seal_disclosure` is what an advertiser key sees of it: her own
entry and the count of the other sponsors, never their ids or names (docs/DESIGN.md § Sealed views,
§ Disclosure). Pure; imports pydantic only; see docs/DESIGN.md § Disclosure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

DisclosureReason = Literal["charged", "nobody_charged", "no_fill", "test"]
# The one rule: charged at least this much (in micro-units of the ledger's currency) is disclosed.
SPONSOR_MIN_MICRO = 1
LABEL_PREFIX = "Sponsored · "
FRAMEWORKS = (
    "IAB AI Transparency and Disclosure Framework (2026)",
    "EU Digital Services Act, Article 26(1)",
)
REASON_DESCRIPTION = (
    "`charged` (some advertiser was charged ≥ 1 micro-unit: sponsored), `nobody_charged` (advertisers "
    "bid but none was charged a micro-unit: their rewards barely differed across the candidates), "
    "`no_fill` (nobody bid: one organic reply), `test` (a test auction: never billed, never sponsored)."
)


class Sponsor(BaseModel):
    """One advertiser the reply was steered for."""

    id: str = Field(
        description="Her advertiser id: the ledger account charged (DSA art. 26(1)(c), who paid)."
    )
    name: str = Field(
        description="Her display name: the campaign's or the inline advertiser's `name` (DSA art. 26(1)(b), "
        "on whose behalf)."
    )


class DisclosureMetadata(BaseModel):
    """The disclosure for machines (no amounts): what made the reply, by which rule, for whom."""

    version: Literal[1] = 1
    mechanism: Literal["MOSAIC"] = Field(
        "MOSAIC", description="The reply is ONE draw from a distribution steered toward the sponsors."
    )
    ai_generated: Literal[True] = Field(True, description="The reply is written by a language model.")
    basis: Literal["charged_at_least_1_micro"] = Field(
        "charged_at_least_1_micro",
        description="The rule: every advertiser charged at least one micro-unit for this reply is a sponsor.",
    )
    reason: DisclosureReason = Field(description=REASON_DESCRIPTION)
    on_behalf_of: list[str] = Field(description="The sponsors' display names (DSA art. 26(1)(b)).")
    paid_by: list[str] = Field(
        description="The sponsors' advertiser ids, the accounts charged (art. 26(1)(c))."
    )
    parameters: str = Field(
        description="Where the main parameters that chose them are (DSA art. 26(1)(d)): `/auctions/{id}/why`."
    )
    advertisers_in_prompt: bool = Field(
        False,
        description="The reply was drawn from the context-aware proposal, whose prompt names every "
        "advertiser of the auction, charged or not (with M = 1 that draw IS the reply, and nobody is "
        "charged: docs/DESIGN.md § Disclosure).",
    )
    frameworks: list[str] = Field(default_factory=lambda: list(FRAMEWORKS))


class Disclosure(BaseModel):
    """Whether the reply is sponsored and by whom: render `label` beside the reply when it is not null."""

    sponsored: bool = Field(description="Some advertiser was charged ≥ 1 micro-unit for this reply.")
    sponsors: list[Sponsor] = Field(description="Every advertiser charged ≥ 1 micro-unit, by name then id.")
    label: str | None = Field(
        None,
        description="What to show the user beside the reply, as is (plain text: escape it for HTML), e.g. "
        "'Sponsored · StrumMaster, Chordify'; null or absent when not sponsored (nothing to show).",
        examples=["Sponsored · StrumMaster, Chordify"],
    )
    metadata: DisclosureMetadata


class SealedDisclosure(Disclosure):
    """An advertiser's view of the disclosure: her own entry only, and how many others were named."""

    other_sponsors: int = Field(
        ge=0,
        description="How many other advertisers the user saw named (never who: a sealed view holds no "
        "other advertiser's id or name). `label` and `metadata` name her only, '+ N others' for them.",
    )


def _label(names: list[str], others: int = 0) -> str | None:
    shown = [*names, *([f"{others} other{'s' if others != 1 else ''}"] if others else [])]
    if not shown:
        return None
    if names and others:
        return f"{LABEL_PREFIX}{', '.join(names)} + {shown[-1]}"
    return LABEL_PREFIX + ", ".join(shown)


def disclose(
    advertisers: Iterable[tuple[str, str]],
    payments_micro: Mapping[str, int],
    *,
    auction_id: str,
    test: bool = False,
    no_fill: bool = False,
    advertisers_in_prompt: bool = False,
) -> Disclosure:
    """The disclosure of a reply: `advertisers` are the auction's (id, display name) rows, `payments_micro`
    its billing event's (what each is charged, in micro-units); `advertisers_in_prompt`: the chosen reply
    was drawn from the context-aware proposal."""
    sponsors: list[Sponsor] = []
    if not (test or no_fill):
        charged = [
            (aid, name) for aid, name in advertisers if payments_micro.get(aid, 0) >= SPONSOR_MIN_MICRO
        ]
        sponsors = [Sponsor(id=aid, name=name) for aid, name in sorted(charged, key=_order)]
    reason: DisclosureReason = (
        "test" if test else "no_fill" if no_fill else "charged" if sponsors else "nobody_charged"
    )
    return Disclosure(
        sponsored=bool(sponsors),
        sponsors=sponsors,
        label=_label([s.name for s in sponsors]),
        metadata=_metadata(sponsors, reason, auction_id).model_copy(
            update={"advertisers_in_prompt": advertisers_in_prompt and not no_fill}
        ),
    )


def _order(row: tuple[str, str]) -> tuple[str, str, str]:
    aid, name = row
    return (name.casefold(), name, aid)


def _metadata(sponsors: list[Sponsor], reason: DisclosureReason, auction_id: str) -> DisclosureMetadata:
    return DisclosureMetadata(
        reason=reason,
        on_behalf_of=[s.name for s in sponsors],
        paid_by=[s.id for s in sponsors],
        parameters=f"/auctions/{auction_id}/why",
    )


def record_disclosure(record: Mapping[str, Any]) -> Disclosure:
    """The disclosure of a stored record (`AuctionRecord` as JSON): the one it stores, or for a record
    stored before disclosures existed the same rule on its request's advertisers and `payments_micro`."""
    stored = record.get("disclosure")
    if stored is not None:
        return Disclosure.model_validate(stored)
    rows = (record.get("request") or {}).get("advertisers") or []
    candidates = record.get("candidates") or []
    chosen = int(record.get("chosen_index") or 0)
    drawn_from = candidates[chosen].get("proposal") if chosen < len(candidates) else None
    return disclose(
        ((str(row["id"]), str(row.get("name") or row["id"])) for row in rows),
        {str(k): int(v) for k, v in (record.get("payments_micro") or {}).items()},
        auction_id=str(record["auction_id"]),
        test=bool(record.get("test")),
        no_fill=record.get("no_fill") is not None,
        advertisers_in_prompt=drawn_from == "context",
    )


def seal_disclosure(disclosure: Disclosure, advertiser_id: str) -> SealedDisclosure:
    """What advertiser `advertiser_id` sees of a disclosure: `sponsored`, her own entry when she is a
    sponsor, the number of the others, and the label and metadata with the others counted, not named."""
    own = [s for s in disclosure.sponsors if s.id == advertiser_id]
    others = len(disclosure.sponsors) - len(own)
    return SealedDisclosure(
        sponsored=disclosure.sponsored,
        sponsors=own,
        other_sponsors=others,
        label=_label([s.name for s in own], others),
        metadata=disclosure.metadata.model_copy(
            update={"on_behalf_of": [s.name for s in own], "paid_by": [s.id for s in own]}
        ),
    )
