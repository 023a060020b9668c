"""verification (issue 35): see docs/DESIGN.md § Verifiable auctions."""
