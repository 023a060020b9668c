"""The ledger's Lua scripts, read from the ``.lua`` files beside this module.

Job: load the script texts once, at import (package data: pyproject ships ``app/ledger/*.lua``); the
consumer SCRIPT LOADs them and calls them by EVALSHA. Their KEYS, ARGV and replies are described at
the top of each ``.lua`` file. Imports the standard library only.
See docs/DESIGN.md § Billing.
"""

from __future__ import annotations

from importlib.resources import files


def _read(name: str) -> str:
    return files("app.ledger").joinpath(name).read_text(encoding="utf-8")


# Validates one event, then marks its auction applied and posts both ledger legs (LedgerConsumer).
APPLY_SCRIPT = _read("apply.lua")
# Writes one entry to the dead-letter stream, at most once per stream id.
DEAD_LETTER_SCRIPT = _read("dead_letter.lua")
# Bills or expires one render charge (app.ledger.render).
RENDER_SCRIPT = _read("render.lua")
# Compare-and-set and release of an Idempotency-Key's running marker (app.ledger.idempotency).
IDEMPOTENCY_STORE_SCRIPT = _read("idempotency_store.lua")
IDEMPOTENCY_RELEASE_SCRIPT = _read("idempotency_release.lua")
# A keyed auction's final write in bill mode: audit record, billing event, done value (producer).
IDEMPOTENCY_BILL_SCRIPT = _read("idempotency_bill.lua")
# Trims the stream below every group's pending/delivered floor; settles old markers and histories.
TRIM_SCRIPT = _read("trim.lua")
# One campaign's budget: reserve, post (with the pacing step), void, state (app.ledger.budget).
BUDGET_SCRIPT = _read("budget.lua")
# One (campaign, user) frequency cap: reserve, post, void, count (app.ledger.frequency).
FREQUENCY_SCRIPT = _read("frequency.lua")
