"""The ledger's Lua scripts, read from the ``.lua`` files beside this module.

Job: load the script texts once, at import (package data: pyproject ships ``app/ledger/*.lua``); the
consumer SCRIPT LOADs them and calls them by EVALSHA. Their KEYS, ARGV and replies are described at
the top of each ``.lua`` file. Imports the standard library only.
See docs/DESIGN.md § Billing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from importlib.resources import files
from typing import Any

from redis.exceptions import NoScriptError


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
# Appends one leaf to the transparency log, one per auction (app.ledger.tlog; EVAL inside the MULTI).
LOG_APPEND_SCRIPT = _read("log_append.lua")
# Trims the stream below every group's pending/delivered floor; settles old markers and histories.
TRIM_SCRIPT = _read("trim.lua")
# One campaign's budget: reserve, post (with the pacing step), void, state (app.ledger.budget).
BUDGET_SCRIPT = _read("budget.lua")
# One (campaign, user) frequency cap: reserve, post, void, count (app.ledger.frequency).
FREQUENCY_SCRIPT = _read("frequency.lua")


async def run_pipelined(
    redis: Any,
    load: Callable[[], Awaitable[str]],
    forget: Callable[[], None],
    calls: Sequence[tuple[str, Sequence[object]]],
    gets: Sequence[str] = (),
    name: str = "ledger",
) -> list[Any]:
    """GET each key of `gets` (their replies first), then one EVALSHA of the script `load` gives the sha
    of per (key, ARGV), pipelined in ONE round trip (no transaction: each script is atomic on its own
    key). On NOSCRIPT (a restarted Redis forgets scripts) `forget` the sha and rerun the whole pipeline
    (every call must be idempotent); any other error reply is raised."""
    if not calls and not gets:
        return []
    for _ in range(3):
        sha = await load()
        pipe = redis.pipeline(transaction=False)
        for key in gets:
            pipe.get(key)
        for key, args in calls:
            pipe.execute_command("EVALSHA", sha, 1, key, *(str(a) for a in args))
        results = await pipe.execute(raise_on_error=False)
        if any(isinstance(r, NoScriptError) for r in results):
            forget()
            continue
        for result in results:
            if isinstance(result, Exception):
                raise result
        return list(results)
    raise RuntimeError(f"the {name} script could not be loaded")
