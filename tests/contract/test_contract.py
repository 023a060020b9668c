"""The worker contract (docs/VLLM_PROTOCOL.md): every field the gateway reads, with its type and order.

Runs against ``WORKER_URL`` when set (e.g. a real ``vllm serve ... --logprobs-mode processed_logprobs
--max-logprobs 1``), else against a tiny-random ``workers.server`` process. Only the contract is
assumed: no knowledge of the model beyond what the endpoints say.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.auction.engine_identity import identity_digest
from workers.protocol import (
    CompletionResponse,
    CompletionResponseView,
    ErrorResponse,
    ModelList,
    TokenizeResponse,
    VersionResponse,
)

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three fruits."},
]


@pytest.fixture(scope="module")
def client(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    url = os.environ.get("WORKER_URL") or request.getfixturevalue("tiny_worker").url
    with httpx.Client(base_url=url.rstrip("/"), timeout=120.0) as http:
        yield http


@pytest.fixture(scope="module")
def model(client: httpx.Client) -> str:
    listing = ModelList.model_validate(client.get("/v1/models").json())
    return listing.data[0].id


@pytest.fixture(scope="module")
def chat_ids(client: httpx.Client, model: str) -> list[int]:
    body = {"model": model, "messages": MESSAGES, "add_generation_prompt": True, "add_special_tokens": False}
    response = client.post("/tokenize", json=body)
    assert response.status_code == 200, response.text
    return list(response.json()["tokens"])


def _complete(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    CompletionResponse.model_validate(data)  # the full contract model accepts it
    view = CompletionResponseView.model_validate(data)  # and so does the gateway's reader, same values
    for choice, read in zip(data["choices"], view.choices, strict=True):
        assert (read.index, read.text, read.token_ids) == (
            choice["index"],
            choice["text"],
            choice.get("token_ids"),
        )
        if choice.get("logprobs") is not None:
            assert read.logprobs is not None
            assert read.logprobs.token_logprobs == choice["logprobs"]["token_logprobs"]
        if choice.get("prompt_logprobs") is not None:
            assert read.prompt_logprobs == [
                None
                if entry is None
                else {key: {"logprob": value["logprob"]} for key, value in entry.items()}
                for entry in choice["prompt_logprobs"]
            ]
    return data


def _generate(client: httpx.Client, model: str, prompt: Any, **extra: Any) -> dict[str, Any]:
    body = {
        "model": model,
        "prompt": prompt,
        "n": 2,
        "max_tokens": 8,
        "temperature": 1.0,
        "top_p": 1.0,
        "seed": 1234,
        "logprobs": 0,
        "return_tokens_as_token_ids": True,
        "return_token_ids": True,
    }
    body.update(extra)
    return _complete(client, body)


def _check_generation_choice(choice: dict[str, Any], max_tokens: int) -> None:
    assert isinstance(choice["index"], int)
    assert isinstance(choice["text"], str)
    assert choice["finish_reason"] in ("stop", "length")
    token_ids = choice["token_ids"]
    assert isinstance(token_ids, list) and all(isinstance(t, int) for t in token_ids)
    assert 1 <= len(token_ids) <= max_tokens
    if choice["finish_reason"] == "length":
        assert len(token_ids) == max_tokens
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == [f"token_id:{t}" for t in token_ids]
    assert len(logprobs["token_logprobs"]) == len(token_ids)
    assert all(isinstance(v, float) and v <= 1e-6 for v in logprobs["token_logprobs"])
    assert len(logprobs["top_logprobs"]) == len(token_ids)
    for t, lp, top in zip(token_ids, logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        assert top[f"token_id:{t}"] == pytest.approx(lp)
    assert len(logprobs["text_offset"]) == len(token_ids)
    assert all(isinstance(v, int) for v in logprobs["text_offset"])


def test_health_and_models(client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    card = data["data"][0]
    assert isinstance(card["id"], str) and card["id"]
    assert card["object"] == "model"
    assert isinstance(card["max_model_len"], int) and card["max_model_len"] > 0


def test_tokenize_chat_and_detokenize(client: httpx.Client, model: str, chat_ids: list[int]) -> None:
    body = {"model": model, "messages": MESSAGES, "add_generation_prompt": True, "add_special_tokens": False}
    data = client.post("/tokenize", json=body).json()
    parsed = TokenizeResponse.model_validate(data)
    assert parsed.count == len(parsed.tokens) == len(chat_ids) > 0
    assert all(isinstance(t, int) for t in data["tokens"])
    assert isinstance(data["max_model_len"], int)
    text = client.post("/detokenize", json={"model": model, "tokens": chat_ids}).json()["prompt"]
    assert "Name three fruits." in text
    # The generation prompt makes the chat longer than without it.
    shorter = client.post("/tokenize", json={**body, "add_generation_prompt": False}).json()["tokens"]
    assert len(shorter) < len(chat_ids)


def test_generation_single_prompt(client: httpx.Client, model: str, chat_ids: list[int]) -> None:
    data = _generate(client, model, chat_ids, n=3, max_tokens=8)
    assert isinstance(data["id"], str) and data["object"] == "text_completion"
    choices = data["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    for choice in choices:
        _check_generation_choice(choice, 8)
    usage = data["usage"]
    generated = sum(len(c["token_ids"]) for c in choices)
    assert usage["prompt_tokens"] == len(chat_ids)
    assert usage["completion_tokens"] == generated
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_generation_batched_prompts_order(client: httpx.Client, model: str, chat_ids: list[int]) -> None:
    prompts = [chat_ids, chat_ids[:-3]]
    data = _generate(client, model, prompts, n=2, max_tokens=4)
    choices = sorted(data["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == [0, 1, 2, 3]  # index = p·n + j
    for choice in choices:
        _check_generation_choice(choice, 4)
        assert choice["prompt_token_ids"] == prompts[choice["index"] // 2]


def test_generation_eos_is_returned(client: httpx.Client, model: str, chat_ids: list[int]) -> None:
    """Replies that stop on EOS return the EOS token (with its log-prob); the text leaves it out."""
    data = _generate(client, model, chat_ids, n=16, max_tokens=64, seed=7)
    stopped = [c for c in data["choices"] if c["finish_reason"] == "stop"]
    assert stopped, "no reply ended on EOS in 16 samples of 64 tokens"
    for choice in data["choices"]:
        _check_generation_choice(choice, 64)
    for choice in stopped:
        last = choice["token_ids"][-1]
        eos_text = client.post("/detokenize", json={"model": model, "tokens": [last]}).json()["prompt"]
        assert eos_text and not choice["text"].endswith(eos_text)
        assert len(choice["logprobs"]["token_logprobs"]) == len(choice["token_ids"])


def test_generation_seed_reproducible(client: httpx.Client, model: str, chat_ids: list[int]) -> None:
    first = _generate(client, model, chat_ids, n=4, max_tokens=12, seed=99)
    second = _generate(client, model, chat_ids, n=4, max_tokens=12, seed=99)
    assert [c["token_ids"] for c in first["choices"]] == [c["token_ids"] for c in second["choices"]]


def test_scoring_batch(client: httpx.Client, model: str, chat_ids: list[int]) -> None:
    prompts = [[*chat_ids, chat_ids[3], chat_ids[4]], chat_ids[:5], chat_ids]
    body = {
        "model": model,
        "prompt": prompts,
        "max_tokens": 1,
        "temperature": 1.0,
        "prompt_logprobs": 0,
        "return_token_ids": True,
    }
    data = _complete(client, body)
    choices = data["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    for k, choice in enumerate(choices):
        assert choice["prompt_token_ids"] == prompts[k]
        entries = choice["prompt_logprobs"]
        assert len(entries) == len(prompts[k])
        assert entries[0] is None
        for t in range(1, len(prompts[k])):
            entry = entries[t]
            assert list(entry) == [str(prompts[k][t])]  # prompt_logprobs: 0 → exactly the actual token
            value = entry[str(prompts[k][t])]
            assert isinstance(value["logprob"], float) and value["logprob"] <= 1e-6
            assert isinstance(value["rank"], int) and value["rank"] >= 1
            assert isinstance(value["decoded_token"], str)
        assert isinstance(choice["text"], str)
        assert choice["finish_reason"] in ("stop", "length")
    # Shared positions of different prompts agree (same prefix, same log-probs).
    for t in range(1, 5):
        a = choices[1]["prompt_logprobs"][t][str(prompts[1][t])]["logprob"]
        b = choices[2]["prompt_logprobs"][t][str(prompts[2][t])]["logprob"]
        assert a == pytest.approx(b, abs=2e-3)


def test_scoring_with_n_order(client: httpx.Client, model: str, chat_ids: list[int]) -> None:
    prompts = [chat_ids[:6], chat_ids[:9]]
    body = {
        "model": model,
        "prompt": prompts,
        "n": 2,
        "max_tokens": 1,
        "prompt_logprobs": 0,
        "return_token_ids": True,
    }
    choices = sorted(_complete(client, body)["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for choice in choices:
        assert len(choice["prompt_logprobs"]) == len(prompts[choice["index"] // 2])


def test_error_shape_over_long_prompt(client: httpx.Client, model: str, chat_ids: list[int]) -> None:
    max_len = client.get("/v1/models").json()["data"][0]["max_model_len"]
    prompt = (chat_ids * (max_len // len(chat_ids) + 2))[: max_len + 5]
    response = client.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 4})
    assert response.status_code == 400
    error = ErrorResponse.model_validate(response.json()).error
    assert error.code == 400 and isinstance(error.message, str) and error.message
    assert isinstance(error.type, str)


def test_error_shape_malformed(client: httpx.Client, model: str) -> None:
    for body in ({"model": model}, {"model": model, "prompt": [1, 2], "n": "many"}):
        response = client.post("/v1/completions", json=body)
        assert 400 <= response.status_code < 500, response.text
        assert isinstance(response.json()["error"]["message"], str)


def test_metrics_exposed(client: httpx.Client) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "vllm:num_requests_running" in response.text


def test_version_names_the_engine(client: httpx.Client, model: str) -> None:
    """GET /version is vLLM's `{"version": str}`; our worker adds its engine identity, whose digest is
    `mosaic_engine_id` and the `X-Mosaic-Engine` header of every answer (issue 35). A stock vLLM has
    the version only (then the gateway identifies it by that, once per URL)."""
    response = client.get("/version")
    assert response.status_code == 200
    body = VersionResponse.model_validate(response.json())
    assert isinstance(body.version, str) and body.version
    if body.mosaic_engine is None:  # a stock vLLM
        return
    assert body.mosaic_engine_id == identity_digest(body.mosaic_engine)
    assert {"model", "weights_sha256", "build", "dtype", "device", "kernels", "hardware"} <= set(
        body.mosaic_engine
    )
    assert body.mosaic_engine["model"] == client.get("/v1/models").json()["data"][0]["root"]
    assert isinstance(body.mosaic_engine["kernels"]["threads"], int)
    for answer in (client.get("/v1/models"), client.post("/tokenize", json={"model": model, "prompt": "hi"})):
        assert answer.headers["X-Mosaic-Engine"] == body.mosaic_engine_id
