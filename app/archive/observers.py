"""What the archiver reports: the `ArchiveObserver` protocol and its no-op.

`app.archive.archiver` calls it after each batch, with the queue's depth and age each pass, and on a
failed pass; the gateway's Prometheus metrics (`app.gateway.metrics`) implement it (the embedded
archiver), `mosaic archive run` passes the no-op. Imports nothing of the project; see docs/DESIGN.md
§ Archive and § Observability.
"""

from __future__ import annotations

from typing import Protocol


class ArchiveObserver(Protocol):
    def archive_batch(self, kind: str, archived: int, repeated: int, expired: int) -> None:
        """One batch of `kind` ("records", "events", or "leaves": the log's, counted once trimmed)
        settled: rows new in PostgreSQL, rows found already there (a pass after a kill), records gone
        before archiving (lost: AUDIT_TTL_S)."""

    def archive_queue(self, depth: int, oldest_age_s: float) -> None:
        """Records queued for archiving, and the age of the oldest (0 when none): alert well before
        it reaches AUDIT_TTL_S."""

    def archive_failed(self, cause: str) -> None:
        """A pass failed (Redis or PostgreSQL); it is retried."""


class NoopArchiveObserver:
    def archive_batch(self, kind: str, archived: int, repeated: int, expired: int) -> None:
        pass

    def archive_queue(self, depth: int, oldest_age_s: float) -> None:
        pass

    def archive_failed(self, cause: str) -> None:
        pass
