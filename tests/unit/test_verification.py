"""`mosaic verify`'s offline checks (`app.verification.verify_document`) on signed random records.

Invariants:
- a signed record verifies (every check passes), and so does each advertiser's sealed view of it;
- ANY single change of a signed value of the record (every leaf: a number, a string, a flag, a null)
  fails verification, and so does any change of the statement or the signature;
- the named tampers fail with a message naming what disagrees: one log-prob (`candidates[2]`), τ
  (`tau`), a payment (the advertiser), a dropped candidate, a changed reward (whose part), a swapped
  reply (`reply`); in a sealed view a changed reward, aggregate or probability names the field;
- a record signed with a retired key still verifies; an unknown key, an unsigned record or a
  malformed document fails (never raises);
- `billing` is not signed (the charge's state moves pending → billed after the write).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from app.attestation.keys import SigningKey, SigningKeyRing
from app.attestation.statement import attest
from app.auction.sealed import seal_record
from app.verification.report import VerificationReport
from app.verification.verify import verify_document
from tests.unit.test_sealed import make_record

SIGNER = SigningKey(Ed25519PrivateKey.generate())
KEYS = {SIGNER.kid: SIGNER.public}


def signed(seed: int = 3, n: int = 3, m: int = 5, tau: float = 1.5) -> dict[str, Any]:
    record = make_record(seed, n, m, tau)
    record["attestation"] = attest(record, SIGNER)
    loaded: dict[str, Any] = json.loads(json.dumps(record))
    return loaded


def sealed_view(record: dict[str, Any], row: int = 1) -> dict[str, Any]:
    view: dict[str, Any] = json.loads(seal_record(record, record["advertisers"][row]["id"]).model_dump_json())
    return view


def failed(report: VerificationReport) -> dict[str, str]:
    return {check.name: check.detail for check in report.failures()}


def leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, (*path, index))
    else:
        yield path


def changed(value: Any) -> Any:
    """Another JSON value (never equal in RFC 8785: 1 and 1.0 are one number)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1 if abs(value) < 1e15 else value * 2
    if isinstance(value, str):
        return value + "x"
    return "x" if value is None else None


def set_at(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value


def get_at(document: dict[str, Any], path: tuple[Any, ...]) -> Any:
    target: Any = document
    for step in path:
        target = target[step]
    return target


def test_a_signed_record_and_every_sealed_view_verify() -> None:
    record = signed()
    report = verify_document(record, KEYS)
    assert report.ok and report.view == "full", failed(report)
    names = [check.name for check in report.checks]
    assert names[:3] == ["attestation", "signature", "statement"] and "payments" in names
    for row in range(3):
        view = verify_document(sealed_view(record, row), KEYS)
        assert view.ok and view.view == "sealed", failed(view)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**20), sealed=st.booleans())
def test_any_single_change_fails(data: st.DataObject, seed: int, sealed: bool) -> None:
    record = signed(seed, 3, 4, 0.9)
    document = sealed_view(record, seed % 3) if sealed else record
    # a sealed view's disclosure is derived for her, not committed to her (the full record's digest covers
    # it): what she can check of it is tested below
    unsigned = ("billing", "view", "disclosure") if sealed else ("billing", "view")
    paths = [p for p in leaves(document) if p[0] not in unsigned and p[:2] != ("attestation", "salts")]
    path = data.draw(st.sampled_from(paths))
    tampered = copy.deepcopy(document)
    set_at(tampered, path, changed(get_at(document, path)))
    report = verify_document(tampered, KEYS)
    assert not report.ok, (path, [c for c in report.checks])


def test_a_changed_salt_fails_and_billing_is_not_signed() -> None:
    record = signed()
    tampered = copy.deepcopy(record)
    first = next(iter(tampered["attestation"]["salts"]))
    tampered["attestation"]["salts"][first] = "AAAAAAAAAAAAAAAAAAAAAA"
    assert "parts" in failed(verify_document(tampered, KEYS))
    rendered = copy.deepcopy(record) | {"billing": "expired"}
    assert verify_document(rendered, KEYS).ok


def tamper(record: dict[str, Any], how: str) -> dict[str, Any]:
    tampered = copy.deepcopy(record)
    ids = [row["id"] for row in record["advertisers"]]
    if how == "log_ref":
        tampered["candidates"][2]["log_ref"] += 0.01
    elif how == "tau":
        tampered["tau"] = 1.6
    elif how == "payment":
        tampered["advertisers"][1]["payment"] += 0.001
    elif how == "dropped":
        del tampered["candidates"][3]
    elif how == "reward":
        tampered["candidates"][1]["rewards"][ids[2]] += 1.0
    elif how == "reply":
        other = (record["chosen_index"] + 1) % len(record["candidates"])
        tampered["reply"] = record["candidates"][other]["text"]
    return tampered


@pytest.mark.parametrize(
    ("how", "named"),
    [
        ("log_ref", {"candidates": "candidates[2]", "allocation": "candidates[2].probability"}),
        ("tau", {"tau": "tau: the record says 1.6", "shared": "a shared field"}),
        ("payment", {"parts": "adv1q3", "payments": "advertisers['adv1q3'].payment"}),
        ("dropped", {"candidates": "a candidate was dropped"}),
        ("reward", {"parts": "adv2q3", "payments": "advertisers['adv2q3']"}),
        ("reply", {"reply": "the reply is not candidates[", "shared": "a shared field"}),
    ],
)
def test_a_tampered_record_names_what_disagrees(how: str, named: dict[str, str]) -> None:
    report = verify_document(tamper(signed(), how), KEYS)
    found = failed(report)
    assert "record" in found and "signature" not in found, found
    for name, words in named.items():
        assert name in found and words in found[name], (name, found)


def test_a_re_hashed_statement_fails_its_signature() -> None:
    """Re-computing the digests of a tampered record does not help: the statement is signed."""
    tampered = tamper(signed(), "payment")
    tampered["attestation"] = attest({k: v for k, v in tampered.items() if k != "attestation"}, SIGNER) | {
        "signature": signed()["attestation"]["signature"]
    }
    assert "signature" in failed(verify_document(tampered, KEYS))


@pytest.mark.parametrize(
    ("path", "named"),
    [
        (("candidates", 2, "reward"), "candidates[2].reward"),
        (("candidates", 1, "others_reward"), "candidates[1].others_reward"),
        (("candidates", 0, "probability"), "candidates[0].probability"),
        (("advertiser", "payment"), "advertiser.payment"),
    ],
)
def test_a_tampered_sealed_view_names_the_field(path: tuple[Any, ...], named: str) -> None:
    view = sealed_view(signed())
    set_at(view, path, changed(get_at(view, path)))
    found = failed(verify_document(view, KEYS))
    assert set(found) == {"view"} and named in found["view"], found


def test_a_tampered_committed_part_fails_her_part_and_the_payments() -> None:
    view = sealed_view(signed())
    committed = view["attestation"]["part"]["others_reward"]
    for j, shown in enumerate(view["candidates"]):
        # another aggregate, shown and committed alike (a shift by a constant would change no figure
        # of hers: softmax and her payment are invariant to it)
        committed[j] += 0.5 * j
        shown["others_reward"] = committed[j]
    found = failed(verify_document(view, KEYS))
    assert {"part", "allocation", "payments"} <= set(found) and "view" not in found, found


def test_keys_retired_unknown_and_unsigned_records() -> None:
    record = signed()
    retired = SigningKeyRing(SigningKey(Ed25519PrivateKey.generate()), retired=(SIGNER.public,))
    assert verify_document(record, retired.public_keys()).ok
    other = SigningKey(Ed25519PrivateKey.generate())
    found = failed(verify_document(record, {other.kid: other.public}))
    assert SIGNER.kid in found["signature"] and "not in the key set" in found["signature"]
    unsigned = {k: v for k, v in record.items() if k != "attestation"}
    assert set(failed(verify_document(unsigned, KEYS))) == {"attestation"}
    assert not verify_document([1, 2], KEYS).ok
    broken = copy.deepcopy(record)
    broken["candidates"] = "none"
    assert not verify_document(broken, KEYS).ok


def test_log_context_is_committed_in_each_advertisers_part() -> None:
    """`log_context` (per advertiser id, when the record has it) goes to her part, not the shared one:
    changing one advertiser's names her part; her sealed view's part holds her own values only."""
    record = make_record(4, 3, 4, 1.2)
    ids = [row["id"] for row in record["advertisers"]]
    for j, row in enumerate(record["candidates"]):
        row["log_context"] = {aid: -10.0 - i - j / 8 for i, aid in enumerate(ids)}
    record["attestation"] = attest(record, SIGNER)
    assert verify_document(record, KEYS).ok
    part = sealed_view(record, 0)["attestation"]["part"]
    assert part["log_context"] == [-10.0 - j / 8 for j in range(4)]
    tampered = copy.deepcopy(record)
    tampered["candidates"][2]["log_context"][ids[1]] += 1e-9
    found = failed(verify_document(tampered, KEYS))
    assert repr(ids[1]) in found["parts"] and "candidates" not in found, found


def test_her_sealed_disclosure_names_her_iff_her_committed_charge_is_at_least_one_micro() -> None:
    """Invariant: in a sealed view she can check the disclosure against her committed charge: named iff
    charged ≥ 1 micro-unit, then `sponsored`, and nobody else named; a view that says otherwise fails
    naming `disclosure`."""
    for seed in range(6):
        record = signed(seed, 3, 4, 0.9)
        view = sealed_view(record, seed % 3)
        assert verify_document(view, KEYS).ok
        mine = view["advertiser"]["id"]
        if view["payment_micro"] < 1:
            continue
        for how in ("drop her", "not sponsored", "another named"):
            tampered = copy.deepcopy(view)
            disclosure = tampered["disclosure"]
            if how == "drop her":
                disclosure["sponsors"] = [s for s in disclosure["sponsors"] if s["id"] != mine]
            elif how == "not sponsored":
                disclosure["sponsored"] = False
            else:
                disclosure["sponsors"].append({"id": "someone-else", "name": "Someone"})
            failed = [c for c in verify_document(tampered, KEYS).checks if not c.ok]
            assert failed and "disclosure" in failed[0].detail, (how, failed)
        return
    raise AssertionError("no seed charged her a micro-unit")


def test_the_chosen_candidate_is_the_one_the_seed_draws() -> None:
    """Invariant: verify replays the draw — the chosen candidate must be the one the auction's seed draws
    from the signed allocation (derive_seed(seed, SEED_ALLOCATION), one uniform, as `run_auction`); a
    record that names another candidate, its reply swapped consistently, fails naming the draw."""
    from app.verification.recompute import reply_check

    checked = 0
    for seed in range(8):
        record = signed(seed, 3, 4, 0.9)
        assert reply_check(record).ok, reply_check(record)
        rows = record["candidates"]
        other = next((j for j, row in enumerate(rows) if j != record["chosen_index"] and row["text"]), None)
        if other is None:
            continue
        swapped = copy.deepcopy(record) | {"chosen_index": other, "reply": rows[other]["text"]}
        failed = reply_check(swapped)
        assert not failed.ok and "the seed draws" in failed.detail, failed
        checked += 1
    assert checked
