"""Schemathesis hooks for the gateway's fuzz test (loaded through SCHEMATHESIS_HOOKS).

One rule of `POST /auction` cannot be written in JSON Schema: advertiser ids are unique *by id*
(`uniqueItems` compares whole objects, and two advertisers with one id but other names are still
two items). Generated positive bodies that break it are dropped here, so `positive_data_acceptance`
checks the rest of the schema; the rule itself is tested in tests/integration/test_hostile_input.py.
Two rules of `POST /campaigns` cannot be written there either: a schedule's end after its start, and
the owner a platform key must name (an advertiser key may omit it); bodies that break them are dropped
the same way (tests/integration/test_campaigns.py tests both). Nor can MAX_ADVERTISERS over inline
advertisers and campaigns (or `select.max`) together (each one's own bound is in the schema): its 422 is
not counted.
Valid `Idempotency-Key` headers are made unique per request (`map_headers`); the 504 of an auction's
own `tmax_ms`, the 422 of a reused key, the 422s of those two campaign rules (the coverage phase
does not run `filter_body`), and a campaign change's 412/428 (its `If-Match` is not the
stored version, or absent: a fact of the server's state, not of the schema) are not counted as
failures (`filter_failure`).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

import schemathesis


def _instant(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z")) if isinstance(value, str) else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None


def _schedule_runs_forward(schedule: Any) -> bool:
    if not isinstance(schedule, dict):
        return True
    start, end = _instant(schedule.get("start")), _instant(schedule.get("end"))
    return start is None or end is None or end > start


def _campaign_rules_hold(context: Any, body: dict[str, Any]) -> bool:
    operation = getattr(context, "operation", None)
    path, method = getattr(operation, "path", ""), str(getattr(operation, "method", "")).upper()
    if not path.startswith("/campaigns"):
        return True
    if path == "/campaigns" and method == "POST" and body.get("owner") is None:
        return False  # the fuzz test's key is a platform key: it must name the owner
    return _schedule_runs_forward(body.get("schedule"))


@schemathesis.hook
def filter_body(context: Any, body: Any) -> bool:
    if isinstance(body, dict) and isinstance(body.get("advertisers"), list):
        ids = [a.get("id") for a in body["advertisers"] if isinstance(a, dict)]
        return len(ids) == len(set(map(repr, ids)))
    if isinstance(body, dict):
        return _campaign_rules_hold(context, body)
    return True


_VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")


@schemathesis.hook
def map_headers(context: Any, headers: Any) -> Any:
    """A valid generated `Idempotency-Key` becomes a fresh one: hypothesis reuses small values ("0")
    across bodies, which the server rightly answers 422 (reused with different parameters) or with a
    replay; invalid ones stay, so the negative checks still see them refused. Reuse has its own
    tests (tests/integration/test_idempotency.py)."""
    if isinstance(headers, dict):
        for name in list(headers):
            value = headers[name]
            if name.lower() == "idempotency-key" and isinstance(value, str) and _VALID_KEY.fullmatch(value):
                headers[name] = f"fuzz-{uuid.uuid4().hex}"
    return headers


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Drop two answers the server owes a sequence of requests, not a schema fault: the 504 of an
    auction whose own `tmax_ms` passed (a generated `tmax_ms: 1`), and the 422 of an
    `Idempotency-Key` reused with another body (the coverage phase repeats one boundary key; it does
    not run `map_headers`). tests/integration/test_idempotency.py tests both."""
    content = getattr(response, "content", b"") or b""
    status = getattr(response, "status_code", None)
    deadline = status == 504 and b"tmax_ms" in content
    reused = status == 422 and b'"idempotency_mismatch"' in content
    precondition = status in (412, 428) and b"If-Match" in content
    # the coverage phase does not run `filter_body`: the two campaign rules it drops, refused here
    campaign_rule = status == 422 and (
        b"end must be after start" in content or b"a platform key must name the owner" in content
    )
    # MAX_ADVERTISERS bounds inline advertisers and campaigns together: each list's maxItems says it, the
    # sum cannot be said in JSON Schema (tests/integration/test_campaign_auction.py tests the rule)
    together = status == 422 and (
        b"advertisers and campaigns together" in content or b"inline advertisers together" in content
    )
    # first ≤ second of a consistency proof: a rule between two query fields (tests/integration/
    # test_transparency_routes.py tests it)
    ordered = status == 422 and b"must not exceed second" in content
    return not (deadline or reused or precondition or campaign_rule or together or ordered)
