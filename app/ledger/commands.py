"""The ledger's processes: ``mosaic ledger consume`` / ``python -m app.ledger``, ``mosaic ledger reconcile``.

Job: run one `LedgerConsumer` until SIGTERM/SIGINT (`run_consumer_forever`; `main` is the same
without the CLI's imports, settings from the environment), and run `reconcile` once and print it as
tables (`reconcile_command`). Each opens Redis itself (app.ledger.redis_store). Imports app.settings,
app.logging_setup and app.ledger only.
See docs/DESIGN.md § Billing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from app.ledger.consumer import LedgerConsumer
from app.ledger.events import format_micro
from app.ledger.keys import stream_key
from app.ledger.reader import LedgerReader
from app.ledger.reconcile import ArchivedRecords, ReconcileReport, reconcile
from app.ledger.redis_store import open_redis
from app.ledger.trim import LedgerTrimmer
from app.settings import Settings

logger = logging.getLogger(__name__)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def _consume(settings: Settings, consumer_name: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    handle = await open_redis(settings)
    try:
        consumer = LedgerConsumer(handle.client, settings, consumer_name)
        await consumer.ensure_group()
        logger.info(
            "ledger consumer %s started on %s (stream %s, group %s)",
            consumer_name,
            handle.url,
            stream_key(settings),
            settings.billing_group,
        )
        trimmer = asyncio.create_task(LedgerTrimmer(handle.client, settings).run(stop), name="ledger-trim")
        await consumer.run(stop)
        await trimmer
    finally:
        await handle.close()


def run_consumer_forever(settings: Settings, consumer_name: str | None = None) -> None:
    """`mosaic ledger consume`: run one consumer until SIGTERM/SIGINT (the current batch is finished)."""
    from app.logging_setup import configure_logging

    configure_logging(settings)
    asyncio.run(_consume(settings, consumer_name or default_consumer_name()))


# Opens the PostgreSQL archive's records for reconcile (app.archive.commands.archived_records; the CLI
# passes it with ARCHIVE_DSN: this layer may not import the archive).
ArchiveOpener = Callable[[], AbstractAsyncContextManager[ArchivedRecords]]


async def _reconcile_once(
    settings: Settings, archive: ArchiveOpener | None = None
) -> tuple[ReconcileReport, dict[str, Any]]:
    handle = await open_redis(settings)
    try:
        if archive is None:
            report = await reconcile(handle.client, settings)
        else:
            async with archive() as archived:
                report = await reconcile(handle.client, settings, archived)
        reader = LedgerReader(handle.client, settings)
        await reader.record_reconcile(len(report.differences), int(time.time()))
        return report, await reader.summary()
    finally:
        await handle.close()


def reconcile_command(settings: Settings, archive: ArchiveOpener | None = None) -> int:
    """`mosaic ledger reconcile`: print the result as tables; 0 when the ledger is consistent, else 1.
    `archive`: the archived records are checked too (ARCHIVE_DSN)."""
    from rich.console import Console
    from rich.table import Table

    report, summary = asyncio.run(_reconcile_once(settings, archive))
    console = Console()
    overview = Table(title="MOSAIC ledger reconcile")
    overview.add_column("check")
    overview.add_column("value", justify="right")
    for label, value in (
        ("events applied", report.events_applied),
        ("events settled (markers trimmed)", report.settled_events),
        ("accounts", report.accounts),
        ("sum over all accounts (micro)", report.accounts_sum_micro),
        (f"platform revenue ({settings.currency})", format_micro(report.revenue_micro)),
        ("stream entries", report.stream_entries),
        ("in flight (pending or not yet read)", report.in_flight),
        ("pending", summary["pending"]),
        ("lag", summary["lag"]),
        ("duplicates", summary["duplicates"]),
        ("conflicts", summary["conflicts"]),
        ("dead letters", report.dead_letters),
        ("audit records checked", report.audit_records),
        ("of which archived (PostgreSQL)", report.archived_records),
        ("  of which test auctions (never billed)", report.test_records),
        ("  of which no-fills (never billed)", report.no_fill_records),
        *((f"  render charges {state}", n) for state, n in sorted(report.render.items())),
        ("campaign budgets checked", report.campaigns),
        ("differences", len(report.differences)),
    ):
        overview.add_row(label, str(value))
    console.print(overview)
    if report.differences:
        table = Table(title="differences", header_style="bold red")
        for column in ("kind", "subject", "expected", "actual", "detail"):
            table.add_column(column)
        for d in report.differences:
            table.add_row(d.kind, d.subject, d.expected, d.actual, d.detail)
        console.print(table)
    for note in report.notes:
        console.print(f"note: {note}")
    console.print(
        "[green]OK: the ledger matches its events[/green]" if report.ok else "[red]DIFFERENCES FOUND[/red]"
    )
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m app.ledger [--consumer-name NAME]``: the consumer without the CLI's imports."""
    parser = argparse.ArgumentParser(
        prog="python -m app.ledger",
        description="Run one MOSAIC ledger consumer (settings from the environment).",
    )
    parser.add_argument("--consumer-name", default=None)
    args = parser.parse_args(argv)
    run_consumer_forever(Settings(), consumer_name=args.consumer_name)
