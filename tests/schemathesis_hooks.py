"""Schemathesis hooks for the gateway's fuzz test (loaded through SCHEMATHESIS_HOOKS).

One rule of `POST /auction` cannot be written in JSON Schema: advertiser ids are unique *by id*
(`uniqueItems` compares whole objects, and two advertisers with one id but other names are still
two items). Generated positive bodies that break it are dropped here, so `positive_data_acceptance`
checks the rest of the schema; the rule itself is tested in tests/integration/test_hostile_input.py.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def filter_body(context: Any, body: Any) -> bool:
    if isinstance(body, dict) and isinstance(body.get("advertisers"), list):
        ids = [a.get("id") for a in body["advertisers"] if isinstance(a, dict)]
        return len(ids) == len(set(map(repr, ids)))
    return True
