"""`mosaic verify`: check an auction's signed record, its commitments and its payments; `mosaic keys`.

`mosaic verify AUCTION_ID --url GATEWAY [--api-key K]` reads the record (a platform key: the full
record; an advertiser key: her sealed view) and the gateway's keys (/.well-known/mosaic-keys);
`mosaic verify --record FILE [--keys FILE]` checks a saved record (the keys from a JWK set file, or
from `--url`). The checks, in order (`app.verification.verify`): the signature over the statement,
the digests against it, the inclusion in the transparency log (when this build has one:
`app.transparency`), τ, the allocation and the payments recomputed by `app.mechanism` (to 1e-9), and
with `--rescore URL` the candidates re-scored on a worker (`app.verification.rescore`, when present).
Prints a table (or `--json`) naming what disagrees. Exit 0: every check passed; 1: one failed; 2: it
could not check (usage, an unreadable file, an unreachable gateway, an unknown auction).
`mosaic keys show|rotate` prints or rotates the signing keys (`app.attestation.keys`).
Part of the CLI: imports `mosaic_client`, `app.verification`, `app.attestation`, `app.contract` and
app.settings; nothing imports it but `app.cli`. See docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console
from rich.table import Table

from app.attestation.keys import jwks, key_dir, kid_of, load_keyring, public_keys, rotate
from app.attestation.statement import statement_bytes
from app.settings import Settings
from app.verification.digests import PublicKeys
from app.verification.log_checks import check_inclusion
from app.verification.report import Check, VerificationReport
from app.verification.verify import verify_document
from mosaic_client import AsyncMosaicClient, MosaicError

console = Console()
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """What `mosaic verify` could not start from (exit 2): the message says why."""


def read_keys(path: Path) -> PublicKeys:
    """Public keys from a file: a JWK set (as /.well-known/mosaic-keys serves it) or PEM public keys."""
    try:
        text = path.read_text()
    except OSError as error:
        raise UsageError(f"--keys {path}: {error.strerror or error}") from error
    try:
        if text.lstrip().startswith("-----BEGIN"):
            blocks = [f"-----BEGIN{block}" for block in text.split("-----BEGIN")[1:]]
            keys = [serialization.load_pem_public_key(block.encode()) for block in blocks]
            ed25519 = [key for key in keys if isinstance(key, Ed25519PublicKey)]
            if len(ed25519) != len(keys):
                raise ValueError("not every PEM block is an Ed25519 public key")
            return {kid_of(key): key for key in ed25519}
        return public_keys(json.loads(text))
    except ValueError as error:
        raise UsageError(f"--keys {path}: {error}") from error


def read_record(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except OSError as error:
        raise UsageError(f"--record {path}: {error.strerror or error}") from error
    except ValueError as error:
        raise UsageError(f"--record {path}: not JSON: {error}") from error
    if not isinstance(document, dict):
        raise UsageError(f"--record {path}: not a JSON object (a record from GET /auctions/{{id}})")
    return document


async def _fetch(
    client: AsyncMosaicClient | None, options: VerifyOptions
) -> tuple[dict[str, Any], PublicKeys]:
    """The document and the keys, from the files given or the gateway."""
    document = read_record(options.record) if options.record is not None else None
    found = read_keys(options.keys) if options.keys is not None else None
    if client is not None:
        try:
            if document is None:
                document = await client.get_auction_json(str(options.auction_id))
            if found is None:
                found = public_keys(await client.signing_keys())
        except (MosaicError, ValueError) as error:
            raise UsageError(f"{type(error).__name__}: {error}") from error
    if document is None or found is None:
        raise UsageError("give AUCTION_ID with --url, or --record FILE with --keys FILE (or --url)")
    return document, found


async def _io_checks(
    document: dict[str, Any], client: AsyncMosaicClient | None, rescore: str | None, notes: list[str]
) -> list[Check]:
    """The checks that need I/O: the inclusion proof in the transparency log (`inclusion_checks`; not
    for a saved record without --url) and, when asked, the re-score
    (`app.verification.rescore.rescore_checks(document, url)`)."""
    checks: list[Check] = []
    if client is None:
        notes.append("inclusion: not checked (a saved record: give --url to fetch its proof)")
    else:
        checks.extend(await inclusion_checks(document, client))
    if rescore is not None:
        from app.verification.rescore import rescore_checks  # the worker's client: only when asked

        checks.extend(await rescore_checks(document, rescore))
    return checks


async def inclusion_checks(document: dict[str, Any], client: AsyncMosaicClient) -> list[Check]:
    """`log.head_signature`, `log.leaf_hash`, `log.inclusion`: the record's signed statement is the
    leaf the gateway's log proves it holds, under a tree head signed by one of its keys."""
    statement = (document.get("attestation") or {}).get("statement")
    if not isinstance(statement, dict):
        return [Check("log.inclusion", False, "the record has no signed statement, hence no leaf in the log")]
    try:
        proof = await client.inclusion_proof(str(document.get("auction_id")))
        keys = public_keys(await client.signing_keys())
    except (MosaicError, ValueError) as error:
        return [Check("log.inclusion", False, f"no inclusion proof: {error}")]
    return check_inclusion(statement_bytes(statement), proof, keys)


@dataclass(frozen=True)
class VerifyOptions:
    """What `mosaic verify` was given: an auction id at a gateway, or a saved record (and its keys)."""

    auction_id: str | None = None
    url: str | None = None
    api_key: str | None = None
    record: Path | None = None
    keys: Path | None = None
    rescore: str | None = None


async def verify_async(options: VerifyOptions) -> tuple[VerificationReport, list[str]]:
    """The report (and notes on what was not checked); UsageError when it cannot start."""
    if (options.auction_id is None) == (options.record is None):
        raise UsageError("give either AUCTION_ID (with --url) or --record FILE, not both")
    if options.url is None:
        return await _verify(None, options)
    async with AsyncMosaicClient(options.url, api_key=options.api_key, timeout_s=60, retries=1) as client:
        return await _verify(client, options)


async def _verify(
    client: AsyncMosaicClient | None, options: VerifyOptions
) -> tuple[VerificationReport, list[str]]:
    """The offline checks (`verify_document`), then those that need I/O, in `mosaic verify`'s order:
    the inclusion proof before the recomputed mechanism (from `tau` on), the re-score last."""
    document, found = await _fetch(client, options)
    report = verify_document(document, found)
    notes: list[str] = []
    if report.checks and report.checks[0].name == "attestation" and report.checks[0].ok:
        extra = await _io_checks(document, client, options.rescore, notes)
        position = next((i for i, c in enumerate(report.checks) if c.name == "tau"), len(report.checks))
        report.checks[position:position] = [c for c in extra if not c.name.startswith("rescore")]
        report.checks.extend(c for c in extra if c.name.startswith("rescore"))
    return report, notes


def print_report(report: VerificationReport, notes: list[str]) -> None:
    table = Table(
        title=f"auction {report.auction_id} ({report.view} {'record' if report.view == 'full' else 'view'})"
    )
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for check in report.checks:
        table.add_row(check.name, "[green]ok[/green]" if check.ok else "[red]FAILED[/red]", check.detail)
    console.print(table)
    for note in notes:
        console.print(f"[dim]{note}[/dim]")
    failed = report.failures()
    if report.ok:
        console.print(f"[green]verified[/green]: all {len(report.checks)} checks passed")
    else:
        console.print(
            f"[red]NOT verified[/red]: {len(failed)} of {len(report.checks)} checks failed: "
            + ", ".join(check.name for check in failed)
        )


def run_verify_command(options: VerifyOptions, *, as_json: bool) -> int:
    """`mosaic verify`: the exit code (0 verified, 1 a check failed, 2 could not check)."""
    try:
        report, notes = asyncio.run(verify_async(options))
    except UsageError as error:
        console.print(f"[red]mosaic verify[/red]: {error}")
        return EXIT_USAGE
    if as_json:
        body = {"auction_id": report.auction_id, "view": report.view, "ok": report.ok, "notes": notes}
        print(json.dumps({**body, "checks": [asdict(check) for check in report.checks]}, indent=2))
    else:
        print_report(report, notes)
    return EXIT_OK if report.ok else EXIT_FAILED


def keys_command(action: str, directory: Path | None) -> int:
    """`mosaic keys show|rotate`: the JWK set of the key directory (rotated first with `rotate`); exit 2
    when it holds no key (a gateway creates one at its first start) or an unreadable one."""
    path = directory or key_dir(Settings())
    try:
        if action == "rotate":
            ring = rotate(path)
            console.print(f"new active key {ring.active.kid}; restart the gateways to sign with it")
        else:
            ring = load_keyring(path, create=False)
    except (OSError, ValueError) as error:
        console.print(f"[red]mosaic keys {action}[/red]: {error}")
        return EXIT_USAGE
    print(json.dumps(jwks(ring), indent=2))
    return EXIT_OK
