"""Typed FastAPI dependencies: what a route needs of the running gateway, as `Annotated` aliases.

A route declares `settings: SettingsDep`, `service: AuctionServiceDep`, ... instead of reading
``request.app.state``; `app.gateway.app` puts the objects there (at creation, or in its lifespan: the
`... | None` ones are None until the lifespan started them). Each dependency takes only the
`Request`, so none adds a parameter to the OpenAPI document, and none refuses a request: the order of
the checks that decide a 4xx stays the routes' own (auth first, then the body). Imports the types of
the objects it hands out (archive, auction, campaigns, ledger, metrics, settings). The layout:
docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request

from app.archive.reader import RecordReader
from app.auction.admission import AdmissionController
from app.auction.engine_client import EngineClient
from app.auction.service import AuctionService
from app.campaigns.store import CampaignStore
from app.gateway.metrics import GatewayMetrics
from app.ledger.keys import AUCTION_KEY_PREFIX, hot_key
from app.ledger.reader import LedgerReader
from app.ledger.redis_health import RedisHealth
from app.ledger.redis_supervisor import RedisSupervisor
from app.settings import Settings

# async: a plain `def` dependency would run in the thread pool, a thread hop per request for a look-up.


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _metrics(request: Request) -> GatewayMetrics:
    metrics: GatewayMetrics = request.app.state.metrics
    return metrics


async def _redis(request: Request) -> aioredis.Redis:
    redis: aioredis.Redis = request.app.state.redis
    return redis


async def _auction_service(request: Request) -> AuctionService:
    service: AuctionService = request.app.state.auctions
    return service


async def _admission(request: Request) -> AdmissionController:
    admission: AdmissionController = request.app.state.admission
    return admission


async def _engine_client(request: Request) -> EngineClient | None:
    engine_client: EngineClient | None = getattr(request.app.state, "engine_client", None)
    return engine_client


async def _redis_health(request: Request) -> RedisHealth | None:
    redis_health: RedisHealth | None = getattr(request.app.state, "redis_health", None)
    return redis_health


async def _redis_supervisor(request: Request) -> RedisSupervisor | None:
    supervisor: RedisSupervisor | None = getattr(request.app.state, "redis_supervisor", None)
    return supervisor


async def _record_reader(request: Request) -> RecordReader:
    """The records the routes read: Redis, then the archive (`app.state.archive`, with ARCHIVE_DSN)."""
    prefix = hot_key(request.app.state.settings, AUCTION_KEY_PREFIX)  # a cluster's shard tag (issue 36)
    return RecordReader(request.app.state.redis, getattr(request.app.state, "archive", None), prefix)


async def _running_ledger_reader(request: Request) -> LedgerReader | None:
    reader: LedgerReader | None = getattr(request.app.state, "ledger_reader", None)
    return reader


SettingsDep = Annotated[Settings, Depends(_settings)]
MetricsDep = Annotated[GatewayMetrics, Depends(_metrics)]
RedisDep = Annotated[aioredis.Redis, Depends(_redis)]
AuctionServiceDep = Annotated[AuctionService, Depends(_auction_service)]
AdmissionDep = Annotated[AdmissionController, Depends(_admission)]
EngineClientDep = Annotated[EngineClient | None, Depends(_engine_client)]
RedisHealthDep = Annotated[RedisHealth | None, Depends(_redis_health)]
RedisSupervisorDep = Annotated[RedisSupervisor | None, Depends(_redis_supervisor)]
RecordsDep = Annotated[RecordReader, Depends(_record_reader)]
RunningLedgerReaderDep = Annotated[LedgerReader | None, Depends(_running_ledger_reader)]


async def _ledger_reader(redis: RedisDep, settings: SettingsDep) -> LedgerReader:
    return LedgerReader(redis, settings)


# The /ledger routes' reader, over the gateway's Redis (a reader holds no state: one per request).
LedgerDep = Annotated[LedgerReader, Depends(_ledger_reader)]


async def _campaign_store(service: AuctionServiceDep) -> CampaignStore:
    return service.campaign_store


# The /campaigns routes' registry: the auction service's, so that a write here drops the auction
# resolver's cached read of that campaign at once (app.campaigns.recent).
CampaignStoreDep = Annotated[CampaignStore, Depends(_campaign_store)]
