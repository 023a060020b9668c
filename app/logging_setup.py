"""The gateway's logging: the one set-up of every process, ``workers.logging_setup`` (re-exported).
See docs/DESIGN.md § Observability."""

from __future__ import annotations

from workers.logging_setup import configure_logging

__all__ = ["configure_logging"]
