"""Pure unit tests of the billing money rules: micro-unit rounding, event construction, entry parsing."""

from __future__ import annotations

import json
import math
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.ledger.events import (
    MAX_ABS_PAYMENT_MICRO,
    MICRO_UNITS_PER_UNIT,
    MalformedEventError,
    format_micro,
    make_billing_event,
    parse_entry,
    to_micro_units,
)

finite_amounts = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
payment_amounts = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
advertiser_ids = st.text(min_size=1, max_size=12)


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_a_float_written_in_micro_units_converts_exactly(micro: int) -> None:
    assert to_micro_units(micro / MICRO_UNITS_PER_UNIT) == micro


@given(finite_amounts)
def test_rounding_error_is_at_most_half_a_micro_unit(amount: float) -> None:
    exact = Decimal(repr(amount)) * MICRO_UNITS_PER_UNIT
    assert abs(Decimal(to_micro_units(amount)) - exact) <= Decimal("0.5")


@given(finite_amounts)
def test_rounding_is_symmetric(amount: float) -> None:
    assert to_micro_units(-amount) == -to_micro_units(amount)


@given(finite_amounts, finite_amounts)
def test_rounding_is_monotonic(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert to_micro_units(low) <= to_micro_units(high)


@pytest.mark.parametrize(
    ("amount", "micro"),
    [
        (0.1, 100_000),
        (0.0000005, 0),  # half -> even (0)
        (0.0000015, 2),  # half -> even (2)
        (0.0000025, 2),  # half -> even (2), although 2.5e-06 * 1e6 == 2.4999999999999996
        (-0.0000025, -2),
        (1.2345675, 1_234_568),  # half -> even (8)
        (1.2345665, 1_234_566),  # half -> even (6)
        (3, 3_000_000),
        (0.0, 0),
        (-0.0, 0),
    ],
)
def test_round_half_even_on_the_decimal_value(amount: float, micro: int) -> None:
    assert to_micro_units(amount) == micro


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, True])
def test_non_finite_amounts_are_rejected(bad: float) -> None:
    with pytest.raises(ValueError):
        to_micro_units(bad)


@settings(max_examples=200)
@given(st.dictionaries(advertiser_ids, payment_amounts, max_size=16), st.integers(0, 2**41))
def test_revenue_is_the_sum_of_the_rounded_payments(payments: dict[str, float], now_ms: int) -> None:
    event = make_billing_event("a1", payments, "USD", now_ms=now_ms)
    assert event.payments_micro == {k: to_micro_units(v) for k, v in payments.items()}
    assert event.revenue_micro == sum(event.payments_micro.values())
    assert list(event.payments_micro) == sorted(payments)
    assert event.created_at_ms == now_ms
    # the stream entry parses back into the same integers (what the ledger applies)
    parsed = parse_entry("1-1", event.stream_fields())
    assert dict((k, int(v)) for k, v in parsed.payments) == event.payments_micro
    assert int(parsed.revenue_micro) == event.revenue_micro


def test_a_negative_payment_is_refused() -> None:
    """Payments are never negative (p_i = τ·KL ≥ 0): make_billing_event refuses a negative rounded
    payment instead of billing it as a credit; one that rounds to 0 is a payment of 0."""
    with pytest.raises(ValueError, match="negative"):
        make_billing_event("a2", {"x": 1.5, "y": -0.25}, "EUR", now_ms=7)
    event = make_billing_event("a2", {"x": 1.5, "y": -0.0000004}, "EUR", now_ms=7)
    assert event.payments_micro == {"x": 1_500_000, "y": 0}
    assert event.revenue_micro == 1_500_000
    assert format_micro(-250_000) == "-0.250000"


def test_campaigns_are_a_stream_field_only_when_present() -> None:
    """An event without campaigns keeps today's stream fields; with them, `campaigns` is canonical
    JSON and parses back; a campaign of an advertiser without a payment is refused."""
    plain = make_billing_event("a3", {"x": 1.0}, "USD", now_ms=7)
    assert "campaigns" not in plain.stream_fields()
    assert parse_entry("1-1", plain.stream_fields()).campaigns == ""
    event = make_billing_event("a3", {"y": 0.5, "x": 1.0}, "USD", now_ms=7, campaigns={"y": "cy", "x": "cx"})
    assert event.stream_fields()["campaigns"] == '{"x":"cx","y":"cy"}'
    parsed = parse_entry("1-1", event.stream_fields())
    assert parsed.campaigns == '{"x":"cx","y":"cy"}'
    assert parsed.campaign_ids() == ["cx", "cy"]
    with pytest.raises(ValueError, match="no payment"):
        make_billing_event("a3", {"x": 1.0}, "USD", campaigns={"z": "cz"})
    with pytest.raises(MalformedEventError, match="no payment"):
        parse_entry("1-1", {**plain.stream_fields(), "campaigns": '{"z":"cz"}'})


def test_pacing_steps_ride_the_event_for_the_consumers_post() -> None:
    """Invariant: an event billed at once carries each campaign's pacing step (or none) exactly as fixed
    before the auction, so the consumer's post steps μ with it; an event without `pacing` (a rendered
    charge) reads "absent" (posted without a step); a step of a campaign not in the event, or not three
    finite numbers, is refused on both sides."""
    campaigns = {"x": "cx", "y": "cy"}
    event = make_billing_event(
        "a4",
        {"x": 1.0, "y": 0.5},
        "USD",
        now_ms=7,
        campaigns=campaigns,
        pacing={"cx": (12.5, 0.2, 9.0), "cy": None},
    )
    assert event.stream_fields()["pacing"] == '{"cx":[12.5,0.2,9.0],"cy":[]}'
    parsed = parse_entry("1-1", event.stream_fields())
    assert parsed.pacing_of("cx") == (12.5, 0.2, 9.0) and parsed.pacing_of("cy") is None
    plain = make_billing_event("a5", {"x": 1.0}, "USD", now_ms=7, campaigns={"x": "cx"})
    assert "pacing" not in plain.stream_fields()
    assert parse_entry("1-2", plain.stream_fields()).pacing_of("cx") == "absent"
    with pytest.raises(ValueError, match="not in the event"):
        make_billing_event("a6", {"x": 1.0}, "USD", campaigns={"x": "cx"}, pacing={"cz": None})
    with pytest.raises(ValueError, match="three finite numbers"):
        make_billing_event(
            "a6", {"x": 1.0}, "USD", campaigns={"x": "cx"}, pacing={"cx": (1.0, math.inf, 9.0)}
        )
    fields = event.stream_fields()
    for bad in ('{"cx":[1,2,3]}', '{"cx":[1,2],"cy":[]}', '{"cx":[1,2,NaN],"cy":[]}', "[]", "{"):
        with pytest.raises(MalformedEventError, match="pacing"):
            parse_entry("1-3", {**fields, "pacing": bad})


@pytest.mark.parametrize(
    ("auction_id", "payments", "currency"),
    [
        ("", {"x": 1.0}, "USD"),
        ("a", {"": 1.0}, "USD"),
        ("a", {"x": 1.0}, "usd"),
        ("a", {"x": 1.0}, "US"),
        ("a", {"x": math.nan}, "USD"),
        ("a", {"x": (MAX_ABS_PAYMENT_MICRO + 1) / MICRO_UNITS_PER_UNIT}, "USD"),
        ("x" * 300, {"x": 1.0}, "USD"),
    ],
)
def test_invalid_events_are_refused(auction_id: str, payments: dict[str, float], currency: str) -> None:
    with pytest.raises(ValueError):
        make_billing_event(auction_id, payments, currency)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"auction_id": "a"}, "missing field"),
        (
            {
                "auction_id": "a",
                "created_at_ms": "1",
                "currency": "USD",
                "revenue_micro": "1",
                "payments": "{",
            },
            "not JSON",
        ),
        (
            {
                "auction_id": "a",
                "created_at_ms": "1",
                "currency": "USD",
                "revenue_micro": "1",
                "payments": "[1]",
            },
            "not a JSON object",
        ),
        (
            {
                "auction_id": "a",
                "created_at_ms": "1",
                "currency": "USD",
                "revenue_micro": "1",
                "payments": '{"x":1.5}',
            },
            "not an integer",
        ),
        (
            {
                "auction_id": "a",
                "created_at_ms": "01",
                "currency": "USD",
                "revenue_micro": "1",
                "payments": '{"x":1}',
            },
            "created_at_ms is not an integer",
        ),
        (
            {"v": "9", "auction_id": "a", "created_at_ms": "1", "currency": "USD", "revenue_micro": "1"},
            "unknown event version",
        ),
    ],
)
def test_malformed_entries_are_named(fields: dict[str, str], reason: str) -> None:
    with pytest.raises(MalformedEventError, match=reason):
        parse_entry("1-1", fields)


def test_stream_fields_are_canonical() -> None:
    event = make_billing_event("a3", {"b": 2.0, "a": 1.0}, "USD", now_ms=5)
    fields = event.stream_fields()
    assert fields["payments"] == '{"a":1000000,"b":2000000}'
    assert json.loads(fields["payments"]) == event.payments_micro
    assert fields["revenue_micro"] == "3000000"
