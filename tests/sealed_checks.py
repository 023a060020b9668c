"""The leak check shared by the sealed-view tests (tests/unit/test_sealed.py, tests/integration/
test_sealed_views.py): nothing of another advertiser in an advertiser's answer about an auction."""

from __future__ import annotations

import json
from typing import Any

# Keys of the full record that carry every advertiser's figures; none may appear in a sealed answer.
# Figures this small are rounding (a payment of 0 computed as ~1e-15): equal by accident, not a leak.
ROUNDING = 1e-9
FULL_ONLY_KEYS = frozenset({"advertisers", "payments_micro", "rewards", "revenue", "timings_ms"})


def json_numbers(value: Any) -> list[float]:
    """Every number in a JSON value (booleans excepted)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for item in value.values() for n in json_numbers(item)]
    if isinstance(value, list):
        return [n for item in value for n in json_numbers(item)]
    return []


def json_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for item in value.values() for k in json_keys(item)}
    if isinstance(value, list):
        return {k for item in value for k in json_keys(item)}
    return set()


def without_texts(body: dict[str, Any]) -> dict[str, Any]:
    """The answer minus the reply and the candidates' texts (hers to read, whatever they name)."""
    stripped = {k: v for k, v in body.items() if k != "reply"}
    if isinstance(body.get("candidates"), list):
        stripped["candidates"] = [{k: v for k, v in c.items() if k != "text"} for c in body["candidates"]]
    return stripped


def assert_nothing_of_the_others(body: dict[str, Any], record: dict[str, Any], mine: str) -> None:
    """`body` (advertiser `mine`'s sealed answer about the full stored `record`) holds no other
    advertiser's id, name, description or instruction (outside the reply and the candidates' texts),
    value scale, raw log-prob under its own prompt (log_context), and — with two others or more, and
    M ≥ 2 — no other's payment, expected reward, utility or reward on any candidate, nor the revenue;
    and none of the full record's per-advertiser keys. With one other advertiser the sum of the others
    IS its reward vector (and its figures follow from it): the disclosure DESIGN.md § Sealed views
    states. With M = 1 every payment is 0 to rounding, so equal figures there are no leak; nor are
    payments of rounding size (hypothesis found degenerate draws where the others' payments and her
    own are the same 0 or 8.9e-16)."""
    assert body.get("view") == "sealed", body
    text = json.dumps(without_texts(body))
    numbers = set(json_numbers(body))
    others = [entry for entry in record["request"]["advertisers"] if entry["id"] != mine]
    generic = len(record["candidates"]) > 1
    for entry in others:
        for field in ("id", "name", "description", "instruction"):
            if entry.get(field):
                assert entry[field] not in text, (field, entry[field])
        assert float(entry["value_scale"]) not in numbers, "value_scale"
        if len(others) > 1 and generic:
            row = next(r for r in record["advertisers"] if r["id"] == entry["id"])
            for figure in ("payment", "expected_reward", "expected_utility"):
                # a payment of rounding size (0, or ~1e-15 when one candidate takes all the probability)
                # is generic: her own payment may be the same rounding; any other equal number is a leak
                assert abs(row[figure]) < ROUNDING or row[figure] not in numbers, figure
            micro = record["payments_micro"][entry["id"]]  # small integers are counts, indices, ...
            assert abs(micro) < 1000 or micro not in numbers, "payments_micro"
            for candidate in record["candidates"]:
                assert candidate["rewards"][entry["id"]] not in numbers, "rewards"
        for candidate in record["candidates"]:  # her raw log π_i only (issue 35), even with one other
            assert (candidate.get("log_context") or {}).get(entry["id"]) not in numbers, "log_context"
    if others and generic:
        own_payment = next(r["payment"] for r in record["advertisers"] if r["id"] == mine)
        # the revenue equals her own payment when the others pay nothing (then it tells her nothing)
        revenue = record["revenue"]
        assert abs(revenue) < ROUNDING or revenue == own_payment or revenue not in numbers, "revenue"
    assert not json_keys(body) & FULL_ONLY_KEYS, json_keys(body) & FULL_ONLY_KEYS
