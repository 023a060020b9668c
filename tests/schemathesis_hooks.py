"""Schemathesis hooks for the gateway's fuzz test (loaded through SCHEMATHESIS_HOOKS).

One rule of `POST /auction` cannot be written in JSON Schema: advertiser ids are unique *by id*
(`uniqueItems` compares whole objects, and two advertisers with one id but other names are still
two items). Generated positive bodies that break it are dropped here, so `positive_data_acceptance`
checks the rest of the schema; the rule itself is tested in tests/integration/test_hostile_input.py.
Valid `Idempotency-Key` headers are made unique per request (`map_headers`), and small valid `tmax_ms`
raised to a minute (`map_body`).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import schemathesis


@schemathesis.hook
def filter_body(context: Any, body: Any) -> bool:
    if isinstance(body, dict) and isinstance(body.get("advertisers"), list):
        ids = [a.get("id") for a in body["advertisers"] if isinstance(a, dict)]
        return len(ids) == len(set(map(repr, ids)))
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


# A generated `tmax_ms` below this is raised to it: the auction's own deadline, chosen by the client, ends
# in a documented 504 ("auction did not finish within tmax_ms=1") that `not_a_server_error` would count.
# Out-of-range values stay, so the negative checks still see them refused; the 504 has its own test.
FUZZ_MIN_TMAX_MS = 60_000


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if isinstance(body, dict):
        tmax = body.get("tmax_ms")
        if isinstance(tmax, int) and not isinstance(tmax, bool) and 1 <= tmax < FUZZ_MIN_TMAX_MS:
            body["tmax_ms"] = FUZZ_MIN_TMAX_MS
    return body
