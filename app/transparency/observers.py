"""What the transparency log reports: the `TransparencyObserver` protocol and its no-op.

`app.transparency.sequencer` calls it; the gateway's Prometheus metrics (`app.gateway.metrics`)
implement it. Imports nothing of the project; see docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

from typing import Protocol


class TransparencyObserver(Protocol):
    def log_head(self, tree_size: int, sign_seconds: float) -> None:
        """The latest signed head covers `tree_size` leaves; this gateway's last signing took so long."""

    def log_tampered(self, kind: str) -> None:
        """A check before signing failed (`deleted`, `rewritten`, `fork`, `malformed`): no head signed."""


class NoopTransparencyObserver:
    def log_head(self, tree_size: int, sign_seconds: float) -> None:
        pass

    def log_tampered(self, kind: str) -> None:
        pass
