"""The MOSAIC gateway, auction, ledger and tools; imports ``workers`` first (its quiet-output rules).
See docs/DESIGN.md § Layout."""

import workers  # noqa: F401  (progress bars off a terminal: see workers/__init__.py)
