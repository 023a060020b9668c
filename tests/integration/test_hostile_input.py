"""Hostile bytes against a real `mosaic serve` process: never a 5xx, and the connection stays usable.

Invariant: whatever the body's bytes, `POST /auction` answers a 2xx or a 4xx (a 422 naming the
field for a malformed body) and the same keep-alive connection then serves `GET /healthz`. The
gateway runs as its own process over a real tiny-random worker process and a real Redis server,
reached through a real socket (http.client: bytes are sent as they are, nothing re-encodes them).

Each case of `KNOWN_500S` answered 500 (and dropped the connection) before the strict JSON decoder
(the big integers and the deep nesting until issue 32: `int()`'s 4,300-digit limit, and a recursion
overflow echoing the input); the fuzz tests draw raw bytes, byte-level mutations of a valid body
(seeded with those literals), and JSON values spliced into a valid body. Examples per fuzz test:
HOSTILE_FUZZ_EXAMPLES (default 150; the full count, 1000, by
`HOSTILE_FUZZ_EXAMPLES=1000 .venv/bin/pytest tests/integration/test_hostile_input.py`).
"""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.settings import Settings
from tests.fixtures_gateway import start_gateway_process
from tests.fixtures_redis import start_redis_server
from tests.fixtures_worker import WorkerProcess

EXAMPLES = int(os.environ.get("HOSTILE_FUZZ_EXAMPLES", "150"))

VALID = {
    "query": "Learning to play the guitar.",
    "advertisers": [{"id": "strum", "name": "StrumMaster", "description": "selling guitars"}],
    "candidates": 2,
    "max_tokens": 2,
    "seed": 3,
}
VALID_BYTES = json.dumps(VALID).encode()

ADVERTISER = '[{"id":"a","name":"A","description":"guitars"}]'


def _body(tail: str) -> str:
    return '{"query":"hi","advertisers":' + ADVERTISER + tail + "}"


KNOWN_500S = {
    "nan": (_body(',"tau":NaN'), ["body", "tau"]),
    "infinity": (_body(',"tau":Infinity'), ["body", "tau"]),
    "minus-infinity": (
        _body(',"candidates":-Infinity'),
        ["body", "candidates"],
    ),
    "nan-nested": (
        '{"query":"hi","advertisers":[{"id":"a","name":"A","description":"g","value_scale":NaN}]}',
        ["body", "advertisers", 0, "value_scale"],
    ),
    "surrogate-unknown-field": (
        _body(',"extra":"\\ud800"'),
        ["body", "extra"],
    ),
    "surrogate-query": ('{"query":"\\udfff x","advertisers":' + ADVERTISER + "}", ["body", "query"]),
    "surrogate-name": (
        '{"query":"hi","advertisers":[{"id":"a","name":"\\ud83d","description":"g"}]}',
        ["body", "advertisers", 0, "name"],
    ),
}
DIGITS = "7" * 4301  # one more than Python's int() converts (sys.get_int_max_str_digits())


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# Where a 65th level opens: the path to it (MAX_JSON_DEPTH is 64).
DEEP_LOC: list[str | int] = ["body", "seed", *[0] * 63]
KNOWN_500S.update(
    {
        "big-integer": (_body(f',"seed":{DIGITS}'), ["body", "seed"]),
        "big-negative-unknown-field": (_body(f',"extra":-{DIGITS}'), ["body", "extra"]),
        "big-integer-nested": (
            '{"query":"hi","advertisers":[{"id":"a","name":"A","description":"g","value_scale":'
            + DIGITS
            + "}]}",
            ["body", "advertisers", 0, "value_scale"],
        ),
        **{f"nested-{depth}": (_body(f',"seed":{_nested(depth)}'), DEEP_LOC) for depth in (951, 954)},
        "nested-deeper-than-the-decoder": (_body(f',"seed":{_nested(5000)}'), DEEP_LOC),
        "nested-objects": (
            _body(',"extra":' + '{"k":' * 70 + "1" + "}" * 70),
            ["body", "extra", *["k"] * 63],
        ),
    }
)
LAX_TYPES = {
    "bool-as-int": ({"candidates": True}, ["body", "candidates"]),
    "string-as-int": ({"candidates": "2"}, ["body", "candidates"]),
    "string-as-bool": ({"include_candidates": "yes"}, ["body", "include_candidates"]),
    "string-as-float": ({"tau": "1.5"}, ["body", "tau"]),
    "bool-as-float": ({"temperature": True}, ["body", "temperature"]),
}


@pytest.fixture(scope="module")
def gateway(tiny_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    redis_server = start_redis_server(tmp_path_factory.mktemp("hostile-redis"))
    process = start_gateway_process(
        tiny_worker.url, redis_server.url, tmp_path_factory.mktemp("data"), MAX_PROMPT_TOKENS="400"
    )
    try:
        yield process.port
    finally:
        process.stop()
        redis_server.stop()


class Client:
    """One keep-alive connection; `post` checks the answer and that the connection still serves."""

    # uvicorn closes a keep-alive connection idle for 5 s (its timeout_keep_alive): that is not a
    # dropped connection, so one idle for longer (hypothesis shrinking, a loaded CI machine) is
    # reopened before the next request. The check that matters runs right after each answer.
    IDLE_REOPEN_S = 3.0

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.last_used = time.monotonic()

    def post(self, body: bytes, content_type: str = "application/json") -> tuple[int, Any]:
        if time.monotonic() - self.last_used > self.IDLE_REOPEN_S:
            self.connection.close()
        try:
            return self._post(body, content_type)
        except BaseException:
            self.connection.close()  # a failure here must not leave the next test a half-used connection
            raise

    def _post(self, body: bytes, content_type: str) -> tuple[int, Any]:
        self.connection.request("POST", "/auction", body=body, headers={"Content-Type": content_type})
        response = self.connection.getresponse()
        raw = response.read()
        assert response.status < 500, (body[:200], response.status, raw[:300])
        payload = json.loads(raw)  # every answer is valid JSON (strict: no NaN)
        # The same connection serves the next request (a 500 used to drop it).
        self.connection.request("GET", "/healthz")
        follow_up = self.connection.getresponse()
        assert follow_up.status == 200 and json.loads(follow_up.read()) == {"status": "ok"}
        self.last_used = time.monotonic()
        return response.status, payload


@pytest.fixture(scope="module")
def client(gateway: int) -> Client:
    return Client(gateway)


def test_valid_body_is_served(client: Client) -> None:
    status, payload = client.post(VALID_BYTES)
    assert status == 200 and payload["reply"] is not None


@pytest.mark.parametrize("case", sorted(KNOWN_500S))
def test_known_500s_are_422_naming_the_field(client: Client, case: str) -> None:
    body, loc = KNOWN_500S[case]
    status, payload = client.post(body.encode())
    assert status == 422, payload
    assert loc in [error["loc"] for error in payload["detail"]], payload


@pytest.mark.parametrize("case", sorted(LAX_TYPES))
def test_types_are_strict(client: Client, case: str) -> None:
    override, loc = LAX_TYPES[case]
    status, payload = client.post(json.dumps({**VALID, **override}).encode())
    assert status == 422, payload
    assert loc in [error["loc"] for error in payload["detail"]], payload


def test_duplicate_keys_are_refused(client: Client) -> None:
    body = VALID_BYTES[:-1] + b', "query": "another query"}'
    status, payload = client.post(body)
    assert status == 422
    assert ["body", "query"] in [error["loc"] for error in payload["detail"]]


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe{}", VALID_BYTES.replace(b"guitars", b"gu\xed\xa0\x80itars"), b'{"query": "\xc3"}'],
)
def test_invalid_utf8_is_422(client: Client, body: bytes) -> None:
    status, payload = client.post(body)
    assert status == 422 and payload["detail"][0]["loc"][0] == "body"


def test_other_content_types_and_raw_bytes_never_5xx(client: Client) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/problem+json"):
        for body in (b"\xff\x00\x80", VALID_BYTES):
            status, _ = client.post(body, content_type)
            assert status in (200, 422)


def _worker_tokens(worker: WorkerProcess) -> float:
    """Prefill + generated tokens the worker has processed (its vLLM-style counters)."""
    text = httpx.get(f"{worker.url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("vllm:prompt_tokens_total", "vllm:generation_tokens_total"))
    )


@pytest.mark.parametrize(
    ("override", "loc"),
    [
        ({"query": "\U0001f600" * 450}, ["body", "query"]),
        # 200 code points as sent (within MAX_QUERY_CHARS=2000), 3,600 after NFKC: the token gate refuses it.
        ({"query": "\ufdfa" * 200}, ["body", "query"]),
        (
            {"advertisers": [{"id": "a", "name": "A", "description": "\U0001f3b8" * 450}]},
            ["body", "advertisers", 0],
        ),
    ],
    ids=["query", "query-nfkc", "advertiser"],
)
def test_prompt_token_limit_before_generation(
    client: Client, tiny_worker: WorkerProcess, override: dict[str, Any], loc: list[str | int]
) -> None:
    """Within the character limits, over MAX_PROMPT_TOKENS=400 once rendered: 422 naming the field,
    and the worker generated and scored nothing (its token counters did not move)."""
    assert client.post(VALID_BYTES)[0] == 200
    before = _worker_tokens(tiny_worker)
    assert before > 0  # the counters are the ones the worker moves
    status, payload = client.post(json.dumps({**VALID, **override}).encode())
    assert status == 422, payload
    assert [error["loc"] for error in payload["detail"]] == [loc], payload
    assert "MAX_PROMPT_TOKENS" in payload["detail"][0]["msg"] or "over 400" in payload["detail"][0]["msg"]
    assert _worker_tokens(tiny_worker) == before


def test_character_limits_count_code_points_as_sent(client: Client) -> None:
    """The OpenAPI maxLength is the gate: a name of exactly MAX_NAME_CHARS code points is accepted even
    where NFKC lengthens it (`¼` is `1⁄4`), one more is refused naming the field."""
    limit = Settings().max_name_chars
    for name, expected in (("\u00bc" * limit, 200), ("\u00bc" * (limit + 1), 422)):
        advertiser = {**VALID["advertisers"][0], "name": name}  # type: ignore[index]
        status, payload = client.post(json.dumps({**VALID, "advertisers": [advertiser]}).encode())
        assert status == expected, payload
    assert payload["detail"][0]["loc"] == ["body", "advertisers", 0, "name"]


# Literals spliced into a valid body: each once gave a 500 somewhere in the stack.
SEEDS = [b"NaN", b"-Infinity", b"\\ud800", b"\xed\xa0\x80", b"\xff", b"{", b"]", DIGITS.encode()]
SEEDS += [_nested(depth).encode() for depth in (65, 951, 954)] + [b"[" * 954]


def _mutate(data: st.DataObject) -> bytes:
    body = bytearray(VALID_BYTES)
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(body)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip" and position < len(body):
            body[position] = data.draw(st.integers(0, 255))
        elif action == "insert":
            body[position:position] = data.draw(st.sampled_from(SEEDS) | st.binary(max_size=8))
        elif position < len(body):
            del body[position]
    return bytes(body)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_fuzz_raw_bytes(client: Client, data: st.DataObject) -> None:
    body = data.draw(st.binary(max_size=512)) if data.draw(st.booleans()) else _mutate(data)
    client.post(body)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [*VALID, "tau", "proposal", "temperature", "top_p", "include_candidates", "unknown"]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(field=st.sampled_from(FIELDS), value=JSON_VALUES, in_advertiser=st.booleans())
def test_fuzz_json_values(client: Client, field: str, value: Any, in_advertiser: bool) -> None:
    body: dict[str, Any] = json.loads(VALID_BYTES)
    if in_advertiser:
        body["advertisers"][0][field] = value
    else:
        body[field] = value
    client.post(json.dumps(body).encode())


def test_duplicate_advertiser_ids_are_422(client: Client) -> None:
    advertiser = VALID["advertisers"][0]
    twice = {**VALID, "advertisers": [advertiser, {**advertiser, "name": "Other"}]}
    status, payload = client.post(json.dumps(twice).encode())
    assert status == 422 and payload["detail"][0]["loc"] == ["body", "advertisers"]


PLATFORM_KEY = "hostile-platform-key-41c7"
ADVERTISER_KEY = "hostile-advertiser-key-9e02"
BODY_ROUTES = ("/auction", "/auctions/abc123/render", "/auctions/abc123/resolve")
OVERSIZED = {
    "big-integer": (f'{{"tau":{DIGITS}}}', ["body", "tau"]),
    "nested-952": (f'{{"tau":{_nested(952)}}}', ["body", "tau", *[0] * 63]),
}


@pytest.fixture(scope="module")
def keyed_gateway(tiny_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    redis_server = start_redis_server(tmp_path_factory.mktemp("hostile-keyed-redis"))
    process = start_gateway_process(
        tiny_worker.url,
        redis_server.url,
        tmp_path_factory.mktemp("keyed-data"),
        API_KEYS=PLATFORM_KEY,
        ADVERTISER_API_KEYS=json.dumps({"a": [ADVERTISER_KEY]}),
    )
    try:
        yield process.port
    finally:
        process.stop()
        redis_server.stop()


@pytest.mark.parametrize("case", sorted(OVERSIZED))
@pytest.mark.parametrize("route", BODY_ROUTES)
@pytest.mark.parametrize("key", [None, "wrong-key-0000", ADVERTISER_KEY, PLATFORM_KEY])
def test_every_body_route_refuses_them_whatever_the_key(
    keyed_gateway: int, route: str, key: str | None, case: str
) -> None:
    """Invariant: on every route that takes a body, with no key, a wrong key, an advertiser key or a
    platform key, a too-long integer or a too-deep value is a 422 naming its path (the body is decoded
    before the key is checked), never a 5xx; the connection then serves the next request."""
    body, loc = OVERSIZED[case]
    connection = http.client.HTTPConnection("127.0.0.1", keyed_gateway, timeout=60)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    try:
        connection.request("POST", route, body=body.encode(), headers=headers)
        response = connection.getresponse()
        payload = json.loads(response.read())
        assert response.status == 422, payload
        assert [error["loc"] for error in payload["detail"]] == [loc], payload
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
    finally:
        connection.close()
