"""MOSAIC auction gateway: schemas, mechanism, orchestration, billing."""
