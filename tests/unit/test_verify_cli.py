"""`mosaic verify --record` and `mosaic keys` offline (no gateway): exit codes and what they print.

Invariants: a signed record verifies from a file with its keys as a JWK set or as PEM public keys
(exit 0); a tampered one fails (exit 1) naming what disagrees; a retired key still verifies; what
cannot be checked exits 2 with the reason (no input, both an id and a file, a file that is not JSON,
a key file that is not a key); `mosaic keys show` on a directory without a key exits 2, `rotate`
retires the active key and serves both.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from app.attestation.keys import jwks, load_keyring
from app.attestation.statement import attest
from app.cli import cli
from tests.unit.test_sealed import make_record


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A signed record, the key set (JWK) and the public key (PEM) of a fresh key directory."""
    ring = load_keyring(tmp_path / "keys")
    record = make_record(9, 3, 4, 1.5)
    record["attestation"] = attest(record, ring.active)
    saved, keys, pem = tmp_path / "record.json", tmp_path / "keys.json", tmp_path / "keys.pem"
    saved.write_text(json.dumps(record))
    keys.write_text(json.dumps(jwks(ring)))
    pem.write_bytes(
        ring.active.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return saved, keys, pem


def verify(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["verify", *args])
    return result.exit_code, result.output


def test_a_saved_record_verifies_with_a_jwk_set_or_pem(tmp_path: Path) -> None:
    saved, keys, pem = _files(tmp_path)
    for key_file in (keys, pem):
        code, output = verify("--record", str(saved), "--keys", str(key_file))
        assert code == 0 and "verified" in output, output
    report = json.loads(verify("--record", str(saved), "--keys", str(keys), "--json")[1])
    assert report["ok"] and [c["name"] for c in report["checks"]][:3] == [
        "attestation",
        "signature",
        "statement",
    ]


def test_a_tampered_record_exits_1_naming_it(tmp_path: Path) -> None:
    saved, keys, _ = _files(tmp_path)
    record = json.loads(saved.read_text())
    record["candidates"][1]["log_ref"] += 0.5
    saved.write_text(json.dumps(record))
    code, output = verify("--record", str(saved), "--keys", str(keys), "--json")
    failed = {c["name"]: c["detail"] for c in json.loads(output)["checks"] if not c["ok"]}
    assert code == 1 and "candidates[1]" in failed["candidates"], failed


def test_after_a_rotation_the_old_record_still_verifies(tmp_path: Path) -> None:
    saved, _, _ = _files(tmp_path)
    result = CliRunner().invoke(cli, ["keys", "rotate", "--directory", str(tmp_path / "keys")])
    assert result.exit_code == 0, result.output
    served = json.loads(result.output[result.output.index("{") :])
    assert [k["status"] for k in served["keys"]] == ["active", "retired"]
    keys = tmp_path / "rotated.json"
    keys.write_text(json.dumps(served))
    assert verify("--record", str(saved), "--keys", str(keys))[0] == 0


def test_what_cannot_be_checked_exits_2(tmp_path: Path) -> None:
    saved, keys, _ = _files(tmp_path)
    not_json, not_keys = tmp_path / "bad.json", tmp_path / "bad-keys.json"
    not_json.write_text("{not json")
    not_keys.write_text(json.dumps({"keys": [{"kty": "RSA"}]}))
    cases = {
        (): "give either",
        ("abc", "--record", str(saved)): "not both",
        ("--record", str(saved)): "--keys FILE",
        ("--record", str(not_json), "--keys", str(keys)): "not JSON",
        ("--record", str(saved), "--keys", str(not_keys)): "not an Ed25519 key",
        ("--record", str(tmp_path / "missing.json"), "--keys", str(keys)): "missing.json",
    }
    for args, words in cases.items():
        code, output = verify(*args)
        assert code == 2 and words in " ".join(output.split()), (args, output)
    empty = CliRunner().invoke(cli, ["keys", "show", "--directory", str(tmp_path / "none")])
    assert empty.exit_code == 2 and "no signing key" in empty.output
