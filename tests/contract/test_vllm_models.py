"""vLLM's own pydantic protocol models (the pinned wheel, ``VLLM_VERSION``) accept every kind of answer
our worker gives and every request the gateway sends.

Traffic is captured from real runs on tiny-random through a recording proxy (``recorder.py``): one
auction through a real gateway (its requests to the worker: models, tokenize chat, generation,
scoring) and direct calls for the rest (tokenize prompt, detokenize, errors, the ``-inf`` log-prob
case). The records are validated in the side venv (``vllm_venv.py``, built once per machine by
``make vllm-venv``) by ``vllm_validate.py``. Also: the dialect (fields vLLM has and we do not
implement are refused naming the field; ``max_tokens: null`` is 16; ``-inf`` is ``-9999.0``).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.gateway.app import create_app
from app.settings import Settings
from tests.contract.recorder import Exchange, RecordingProxy
from tests.contract.vllm_venv import ensure_vllm_venv
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess

HERE = Path(__file__).resolve().parent
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three fruits."},
]
ALL_KINDS = {
    "request:completion",
    "request:tokenize_chat",
    "request:tokenize_prompt",
    "request:detokenize",
    "response:completion",
    "response:tokenize",
    "response:detokenize",
    "response:models",
    "response:error",
}


def _kinds(exchange: Exchange) -> list[tuple[str, Any]]:
    """The (kind, body) records of one exchange, as ``vllm_validate.py`` names them."""
    out: list[tuple[str, Any]] = []
    path = exchange.path.split("?")[0]
    if exchange.request is not None:
        if path == "/v1/completions":
            out.append(("request:completion", exchange.request))
        elif path == "/tokenize":
            form = "chat" if "messages" in exchange.request else "prompt"
            out.append((f"request:tokenize_{form}", exchange.request))
        elif path == "/detokenize":
            out.append(("request:detokenize", exchange.request))
    if exchange.response is not None:
        if exchange.status >= 400:
            out.append(("response:error", exchange.response))
        else:
            kind = {
                "/v1/completions": "response:completion",
                "/tokenize": "response:tokenize",
                "/detokenize": "response:detokenize",
                "/v1/models": "response:models",
            }.get(path)
            if kind:
                out.append((kind, exchange.response))
    return out


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    return ensure_vllm_venv()


@pytest.fixture(scope="module")
def proxy(tiny_worker: WorkerProcess) -> Iterator[RecordingProxy]:
    recording = RecordingProxy(tiny_worker.url)
    yield recording
    recording.close()


@pytest.fixture(scope="module")
def captured(
    proxy: RecordingProxy, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> list[Exchange]:
    # 1. what the gateway sends, from one real auction
    proxy.source = "gateway"
    settings = Settings(
        worker_urls=[proxy.url],
        redis_url=redis_process.url,
        data_dir=tmp_path_factory.mktemp("gw"),
        log_json=False,
        worker_timeout_s=60,
    )
    auction = {
        "query": "Learning to play the guitar.",
        "advertisers": [
            {"id": "strum", "name": "StrumMaster", "description": "selling guitars"},
            {"id": "chord", "name": "Chordify", "description": "online guitar lessons"},
        ],
        "candidates": 3,
        "max_tokens": 6,
        "seed": 5,
    }
    with TestClient(create_app(settings)) as client:
        response = client.post("/auction", json=auction)
        assert response.status_code == 200, response.text
    # 2. every other kind of answer, straight to the worker (through the proxy)
    proxy.source = "direct"
    with httpx.Client(base_url=proxy.url, timeout=120) as http:
        model = http.get("/v1/models").json()["data"][0]["id"]
        chat = http.post("/tokenize", json={"model": model, "messages": MESSAGES}).json()["tokens"]
        http.post("/tokenize", json={"model": model, "prompt": "Hello there", "return_token_strs": True})
        http.post("/detokenize", json={"model": model, "tokens": chat[:8]})
        base = {"model": model, "prompt": chat, "max_tokens": 4, "seed": 3}
        http.post("/v1/completions", json={**base, "n": 2, "logprobs": 1, "return_token_ids": True})
        http.post("/v1/completions", json={**base, "prompt": "Hi", "logprobs": 0})  # text, token strings
        http.post("/v1/completions", json={**base, "top_p": 0.01, "logprobs": 5})  # -inf log-probs
        http.post("/v1/completions", json={**base, "prompt": [chat, chat[:5]], "prompt_logprobs": 2})
        http.post("/v1/completions", json={**base, "stop": ["."], "ignore_eos": True, "min_tokens": 1})
        http.post("/v1/completions", json={**base, "priority": -(2**63)})  # vLLM's priority, int64
        http.post("/v1/completions", json={**base, "max_tokens": 100000})  # 400: too long
        http.post("/v1/completions", json={**base, "logit_bias": {"5": 3.0}})  # 400: refused field
        http.post("/v1/completions", json={**base, "model": "no-such-model"})  # 404
        http.post("/tokenize", json={"model": model, "messages": []})  # 400: validation
    return list(proxy.exchanges)


def _validate(vllm_python: Path, records: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    """Run ``vllm_validate.py`` in the side venv on ``records``; one result per record."""
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    done = subprocess.run(
        [str(vllm_python), str(HERE / "vllm_validate.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    from workers.vllm_launch import VLLM_VERSION

    assert report["vllm"] == VLLM_VERSION
    results: list[dict[str, Any]] = report["results"]
    assert len(results) == len(records)
    return results


def _records(captured: list[Exchange]) -> list[dict[str, Any]]:
    return [
        {"kind": kind, "body": body, "source": e.source, "path": e.path}
        for e in captured
        for kind, body in _kinds(e)
    ]


def _broken(captured: list[Exchange]) -> dict[str, Any]:
    """A ``null`` log-prob (what the worker used to send for ``-inf``): vLLM must refuse it."""
    answer = next(
        e.response
        for e in captured
        if e.path == "/v1/completions" and e.status == 200 and e.source == "direct"
    )
    broken = json.loads(json.dumps(answer))
    broken["choices"][0]["logprobs"]["top_logprobs"][0] = {"x": None}
    return {"kind": "response:completion", "body": broken, "source": "broken", "path": ""}


@pytest.fixture(scope="module")
def validated(
    vllm_python: Path, captured: list[Exchange], tmp_path_factory: pytest.TempPathFactory
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every record with vLLM's verdict (one side-venv run: importing vLLM takes seconds)."""
    records = [*_records(captured), _broken(captured)]
    results = _validate(vllm_python, records, tmp_path_factory.mktemp("vllm"))
    return list(zip(records, results, strict=True))


def test_vllm_models_accept_all_captured_traffic(
    validated: list[tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    records = [record for record, _ in validated if record["source"] != "broken"]
    assert {r["kind"] for r in records} == ALL_KINDS
    gateway_requests = {
        r["kind"] for r in records if r["source"] == "gateway" and r["kind"].startswith("request:")
    }
    assert {"request:completion", "request:tokenize_chat"} <= gateway_requests
    sent = [r["body"] for r in records if r["source"] == "gateway" and r["kind"] == "request:completion"]
    assert any("prompt_logprobs" in b for b in sent) and any("prompt_logprobs" not in b for b in sent)
    # every completion of the auction carries its fair-share priority (vLLM's field), one per auction
    priorities = {b.get("priority") for b in sent}
    assert len(priorities) == 1 and isinstance(p := priorities.pop(), int) and p > 0, priorities
    failures = [
        (record["source"], record["kind"], record["path"], result["error"])
        for record, result in validated
        if record["source"] != "broken" and not result["ok"]
    ]
    assert not failures, failures


def test_a_broken_answer_is_refused_by_vllm(validated: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """The check can fail: the ``null`` log-prob the worker used to send for ``-inf`` is refused."""
    verdicts = [result for record, result in validated if record["source"] == "broken"]
    assert verdicts and not verdicts[0]["ok"]


def test_inf_logprobs_are_vllms_floor(captured: list[Exchange]) -> None:
    inf_case = next(e for e in captured if isinstance(e.request, dict) and e.request.get("top_p") == 0.01)
    assert inf_case.status == 200
    tops = inf_case.response["choices"][0]["logprobs"]["top_logprobs"]
    values = [v for step in tops for v in step.values()]
    assert -9999.0 in values and None not in values


def test_refused_fields_name_the_param(captured: list[Exchange]) -> None:
    refused = next(e for e in captured if isinstance(e.request, dict) and "logit_bias" in e.request)
    assert refused.status == 400
    assert refused.response["error"]["param"] == "logit_bias"
    missing = next(e for e in captured if e.status == 404)
    assert missing.response["error"]["type"] == "NotFoundError"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logit_bias", {"5": 1.0}),
        ("allowed_token_ids", [1, 2]),
        ("use_beam_search", True),
        ("response_format", {"type": "json_object"}),
        ("truncate_prompt_tokens", 4),
        ("suffix", "x"),
        ("top_k", 5),
        ("min_p", 0.1),
        ("frequency_penalty", 0.5),
        ("echo", True),
        ("stream", True),
        ("logprobs", 21),
    ],
)
def test_unimplemented_fields_are_refused(tiny_worker: WorkerProcess, field: str, value: Any) -> None:
    body = {"prompt": [1, 2, 3], "max_tokens": 1, field: value}
    response = httpx.post(f"{tiny_worker.url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field


def test_priority_is_vllms_int64(tiny_worker: WorkerProcess) -> None:
    """vLLM's ``priority`` is taken in vLLM's range (an int64) and refused past it, naming the field."""
    url = f"{tiny_worker.url}/v1/completions"
    body = {"prompt": [1, 2, 3], "max_tokens": 2, "seed": 1}
    for priority in (-(2**63), 0, 17, 2**63 - 1):
        response = httpx.post(url, json={**body, "priority": priority}, timeout=60)
        assert response.status_code == 200, response.text
    for priority in (2**63, "high"):
        response = httpx.post(url, json={**body, "priority": priority}, timeout=60)
        assert response.status_code == 400, response.text
        assert "priority" in response.text


def test_neutral_values_and_null_max_tokens(tiny_worker: WorkerProcess) -> None:
    body = {
        "prompt": [1, 2, 3],
        "max_tokens": None,
        "ignore_eos": True,
        "top_k": -1,
        "repetition_penalty": 1.0,
        "logit_bias": {},
        "suffix": None,
        "cache_salt": "abc",
        "some_future_field": 1,
    }
    response = httpx.post(f"{tiny_worker.url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 16
