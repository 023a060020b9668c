"""The auction record's `engine`: which engines drew and scored its candidates, and what each is.

`EngineRecord` (issue 35): the identities of the worker engines that took part (what bit-identity of
their log-probs depends on: model and weights hash, build, dtype, threads and kernels, hardware
class; `workers.identity`), each generation request (which engine, its share index: its seed is
`derive_seed(derive_seed(seed, stream), share)`, which candidates) and each scoring request (which
engine, which sequences of the batch). Enough to replay every request exactly
(`app.verification.rescore`). Part of the record's shared part: it names no advertiser. Imports
pydantic only; see docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class EngineIdentity(BaseModel):
    id: str = Field(description="SHA-256 of the identity's RFC 8785 JSON (the worker's X-Mosaic-Engine).")
    identity: dict[str, Any] = Field(
        description="model, weights_sha256, build, dtype, device, kernels (threads, path, tile plans), "
        "hardware (CPU vendor/family/model/ISA, GPU name/capability), as the worker's GET /version "
        "states them; a stock vLLM: its server_version only."
    )


class EngineRecord(BaseModel):
    """Which engines took part in an auction and what each did (docs/DESIGN.md § Verifiable auctions)."""

    identities: list[EngineIdentity] = Field(description="The engines that drew or scored candidates.")
    max_tokens: int = Field(description="The reply length the candidates were drawn with.")
    generated: list[list[int]] = Field(
        description="Per generation request: [identity index, share, first candidate, stop]. The "
        "candidates [first, stop) of one proposal pool were drawn with seed derive_seed(derive_seed("
        "seed, stream), share) (stream 1: context, 2: reference)."
    )
    scored: list[list[int]] = Field(
        description="Per scoring request: [identity index, first sequence, stop]. Sequence g·M + j is "
        "candidate j under prompt g: 0 the reference, 1..n each advertiser's (request order), n+1 the "
        "context prompt (mixture only)."
    )
