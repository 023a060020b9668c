"""``python -m app.ledger [--consumer-name NAME]``: run one ledger consumer (`app.ledger.commands.main`).

Imports app.ledger.commands only.
See docs/DESIGN.md § Billing.
"""

from app.ledger.commands import main

main()
