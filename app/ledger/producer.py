"""The gateway's side of billing: one durable XADD per auction, or a clear failure.

Job: `BillingProducer.append` writes a `BillingEvent` to the stream BILLING_STREAM (with the
auction's audit record in the same MULTI/EXEC when given) and turns any Redis error or a wait past
BILLING_APPEND_TIMEOUT_S into `BillingUnavailableError` (the gateway answers 503, nothing billed).
Imports app.settings and app.ledger.events / app.ledger.keys only.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.ledger.events import BillingEvent
from app.ledger.keys import as_str
from app.settings import Settings


class BillingUnavailableError(RuntimeError):
    """The billing event could not be durably appended; the auction must fail (503)."""


class BillingProducer:
    """Appends billing events: one XADD per auction, acknowledged only once Redis has written it."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings

    async def append(self, event: BillingEvent, audit: tuple[str, str, int] | None = None) -> str:
        """XADD the event; returns its stream id (trimmed only once applied everywhere: trim.py).

        `audit` = (key, JSON record, ttl seconds): the auction's audit record is SET in the same
        MULTI/EXEC as the XADD, so both or neither are written. Any Redis error or a wait longer than
        BILLING_APPEND_TIMEOUT_S raises BillingUnavailableError naming the cause.
        """
        if event.revenue_micro != sum(event.payments_micro.values()):
            raise ValueError("revenue_micro must equal the sum of payments_micro")
        fields: dict[Any, Any] = dict(event.stream_fields())
        try:
            async with asyncio.timeout(self.settings.billing_append_timeout_s):
                if audit is None:
                    stream_id = await self.redis.xadd(self.settings.billing_stream, fields)
                else:
                    key, record, ttl_s = audit
                    pipe = self.redis.pipeline(transaction=True)
                    pipe.set(key, record, ex=ttl_s)
                    pipe.xadd(self.settings.billing_stream, fields)
                    stream_id = (await pipe.execute())[1]
        except TimeoutError as error:
            raise BillingUnavailableError(
                f"billing XADD took longer than {self.settings.billing_append_timeout_s}s "
                f"(auction {event.auction_id})"
            ) from error
        except (RedisError, OSError) as error:
            raise BillingUnavailableError(
                f"billing XADD failed for auction {event.auction_id}: {type(error).__name__}: {error}"
            ) from error
        return as_str(stream_id)
