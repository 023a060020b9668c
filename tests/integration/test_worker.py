"""The transformers worker as a real process (tiny-random): numbers, batching, seeds and errors.

The log-prob checks are the ones MOSAIC's mechanism relies on: what generation reports as
log q(y) is what scoring reports for the same tokens; batching, padding and prefix sharing do not
change a score; the processed log-probs are exactly those of the distribution sampled from.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch

from tests.fixtures_worker import WorkerProcess, start_worker_process
from workers.models import LoadedModel, load_model

TOL = 1e-4


@pytest.fixture(scope="module")
def client(tiny_worker: WorkerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_worker.url, timeout=120.0) as http:
        yield http


@pytest.fixture(scope="module")
def fp32_client() -> Iterator[httpx.Client]:
    """A float32 worker, for the tests that compare against a plain transformers forward in fp32."""
    worker = start_worker_process("tiny-random", env={"WORKER_DTYPE": "float32"})
    try:
        with httpx.Client(base_url=worker.url, timeout=120.0) as http:
            yield http
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def local_model() -> LoadedModel:
    """The same tiny-random weights in fp32, loaded in the test process (fixed seed ⇒ identical):
    the plain transformers forward the fp32 comparisons are against."""
    torch.set_num_threads(1)
    return load_model("tiny-random", "cpu", "float32")


@pytest.fixture(scope="module")
def default_model() -> LoadedModel:
    """The same weights in the default dtype (WORKER_DTYPE=auto: bf16 on this CPU)."""
    torch.set_num_threads(1)
    return load_model("tiny-random", "cpu", "auto")


@pytest.fixture(scope="module")
def prompt(client: httpx.Client) -> list[int]:
    body = {
        "messages": [{"role": "user", "content": "Write a short poem about the sea."}],
        "add_generation_prompt": True,
        "add_special_tokens": False,
    }
    return list(client.post("/tokenize", json=body).json()["tokens"])


def generate(client: httpx.Client, prompt: list[int], **extra: Any) -> list[dict[str, Any]]:
    body: dict[str, Any] = {
        "prompt": prompt,
        "n": 4,
        "max_tokens": 16,
        "temperature": 1.0,
        "seed": 5,
        "logprobs": 0,
        "return_tokens_as_token_ids": True,
        "return_token_ids": True,
    }
    body.update(extra)
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return sorted(response.json()["choices"], key=lambda c: c["index"])


def score(client: httpx.Client, sequences: list[list[int]]) -> list[list[float | None]]:
    body = {"prompt": sequences, "max_tokens": 1, "prompt_logprobs": 0, "return_token_ids": True}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    choices = sorted(response.json()["choices"], key=lambda c: c["index"])
    out = []
    for seq, choice in zip(sequences, choices, strict=True):
        entries = choice["prompt_logprobs"]
        out.append([None] + [entries[t][str(seq[t])]["logprob"] for t in range(1, len(seq))])
    return out


# ------------------------------------------------------------------------------- consistency
def test_generated_logprob_equals_score(client: httpx.Client, prompt: list[int]) -> None:
    """At temperature 1, Σ sampled log-probs = teacher-forced score of prompt ++ reply (EOS included)."""
    choices = generate(client, prompt, n=8, max_tokens=40, seed=11)
    assert any(c["finish_reason"] == "stop" for c in choices)  # EOS endings are covered
    sequences = [prompt + c["token_ids"] for c in choices]
    scores = score(client, sequences)
    for choice, scored in zip(choices, scores, strict=True):
        generated = sum(choice["logprobs"]["token_logprobs"])
        teacher = sum(v for v in scored[len(prompt) :] if v is not None)
        assert generated == pytest.approx(teacher, abs=TOL)


def test_batched_scoring_equals_one_by_one(client: httpx.Client, prompt: list[int]) -> None:
    """Padding, chunking and prefix sharing do not change any per-position log-prob."""
    replies = [c["token_ids"] for c in generate(client, prompt, n=4, max_tokens=20, seed=3)]
    long_prompt = (prompt * 8)[:300]
    sequences = [
        prompt + replies[0],
        [prompt[0], prompt[1], prompt[2]],
        long_prompt,
        prompt + replies[1],
        prompt + replies[2],
        [7, 8],
        prompt + replies[3],
    ]
    batched = score(client, sequences)
    for seq, together in zip(sequences, batched, strict=True):
        alone = score(client, [seq])[0]
        assert len(alone) == len(together) == len(seq)
        for a, b in zip(alone[1:], together[1:], strict=True):
            assert a is not None and b is not None
            assert a == pytest.approx(b, abs=TOL)


def test_scoring_order_independent(client: httpx.Client, prompt: list[int]) -> None:
    replies = [c["token_ids"] for c in generate(client, prompt, n=5, max_tokens=12, seed=8)]
    sequences = [prompt + r for r in replies] + [prompt[:10], prompt[5:]]
    forward = score(client, sequences)
    backward = score(client, sequences[::-1])[::-1]
    for a_row, b_row in zip(forward, backward, strict=True):
        for a, b in zip(a_row[1:], b_row[1:], strict=True):
            assert a == pytest.approx(b, abs=TOL)


def _direct_processed(
    local_model: LoadedModel, tokens: list[int], temperature: float, top_p: float
) -> torch.Tensor:
    """Independent computation: full forward (no cache), logits/T, top-p keep set, log_softmax."""
    with torch.inference_mode():
        logits = local_model.model(torch.tensor([tokens])).logits[0].float() / temperature
    probs = logits.softmax(-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    keep_sorted = mass_before < top_p  # smallest set whose mass reaches p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return torch.log_softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)


def test_processed_logprobs_match_direct_computation(
    fp32_client: httpx.Client, prompt: list[int], local_model: LoadedModel
) -> None:
    temperature, top_p = 0.7, 0.9
    choices = generate(fp32_client, prompt, n=4, max_tokens=12, temperature=temperature, top_p=top_p, seed=21)
    for choice in choices:
        tokens = prompt + choice["token_ids"]
        expected = _direct_processed(local_model, tokens, temperature, top_p)
        for step, (token, reported) in enumerate(
            zip(choice["token_ids"], choice["logprobs"]["token_logprobs"], strict=True)
        ):
            value = float(expected[len(prompt) - 1 + step, token])
            assert math.isfinite(value), "sampled a token outside the top-p set"
            assert reported == pytest.approx(value, abs=TOL)


def test_greedy_is_argmax_with_full_logprobs(
    fp32_client: httpx.Client, prompt: list[int], local_model: LoadedModel
) -> None:
    choices = generate(fp32_client, prompt, n=3, max_tokens=6, temperature=0.0, seed=None, ignore_eos=True)
    assert len({tuple(c["token_ids"]) for c in choices}) == 1
    tokens = prompt + choices[0]["token_ids"]
    with torch.inference_mode():
        logprobs = local_model.model(torch.tensor([tokens])).logits[0].float().log_softmax(-1)
    for step, token in enumerate(choices[0]["token_ids"]):
        row = logprobs[len(prompt) - 1 + step]
        assert token == int(row.argmax())
        assert choices[0]["logprobs"]["token_logprobs"][step] == pytest.approx(float(row[token]), abs=TOL)


# -------------------------------------------------------------------------- sampling controls
def test_seed_reproducibility(client: httpx.Client, prompt: list[int]) -> None:
    def ids(**extra: Any) -> list[list[int]]:
        return [c["token_ids"] for c in generate(client, prompt, n=4, max_tokens=10, **extra)]

    assert ids(seed=42) == ids(seed=42)
    assert ids(seed=42) != ids(seed=43)
    assert ids(seed=None) != ids(seed=None)
    samples = ids(seed=42)
    assert len({tuple(s) for s in samples}) > 1  # the n samples differ from each other


def test_ignore_eos_and_max_tokens(client: httpx.Client, prompt: list[int]) -> None:
    choices = generate(client, prompt, n=6, max_tokens=48, ignore_eos=True, seed=2)
    for choice in choices:
        assert choice["finish_reason"] == "length"
        assert len(choice["token_ids"]) == 48


def test_prompt_logprobs_top_k(client: httpx.Client, prompt: list[int]) -> None:
    body = {"prompt": [prompt], "max_tokens": 1, "prompt_logprobs": 3, "return_token_ids": True}
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    for t in range(1, len(prompt)):
        entry = choice["prompt_logprobs"][t]
        assert str(prompt[t]) in entry
        ranks = sorted(v["rank"] for v in entry.values())
        assert ranks[:3] == [1, 2, 3]
        top = max(entry.values(), key=lambda v: v["logprob"])
        assert top["rank"] == 1


def test_stop_token_ids(client: httpx.Client, prompt: list[int]) -> None:
    free = generate(client, prompt, n=1, max_tokens=10, seed=4, ignore_eos=True)[0]["token_ids"]
    stop_at = free[3]
    choice = generate(client, prompt, n=1, max_tokens=10, seed=4, ignore_eos=True, stop_token_ids=[stop_at])[
        0
    ]
    assert choice["finish_reason"] == "stop"
    assert choice["stop_reason"] == stop_at
    assert choice["token_ids"] == free[: free.index(stop_at) + 1]


def test_stop_strings(client: httpx.Client, prompt: list[int]) -> None:
    free = generate(client, prompt, n=1, max_tokens=12, seed=6, ignore_eos=True)[0]
    words = free["text"].split()
    assert len(words) >= 4
    stop = words[3]
    choice = generate(client, prompt, n=1, max_tokens=12, seed=6, ignore_eos=True, stop=[stop])[0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    assert choice["text"] == free["text"][: free["text"].find(stop)]
    assert choice["token_ids"] == free["token_ids"][: len(choice["token_ids"])]


# ------------------------------------------------------------------------------------ errors
def test_over_long_prompt_is_400(client: httpx.Client, prompt: list[int]) -> None:
    max_len = client.get("/v1/models").json()["data"][0]["max_model_len"]
    cases = [
        {"prompt": [5] * (max_len - 2), "max_tokens": 10},
        {"prompt": [5] * (max_len + 1), "max_tokens": 1},
        {"prompt": [[5] * 4, [5] * (max_len + 1)], "max_tokens": 1, "prompt_logprobs": 0},
    ]
    for body in cases:
        response = client.post("/v1/completions", json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == 400 and error["type"] == "BadRequestError"
        assert "maximum context length" in error["message"]


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"[]",
        b"null",
        b'"text"',
        b"{}",
        b'{"prompt": []}',
        b'{"prompt": [[]]}',
        b'{"prompt": [1, "a"]}',
        b'{"prompt": {"a": 1}}',
        b'{"prompt": [1, 2], "n": 0}',
        b'{"prompt": [1, 2], "n": 100000}',
        b'{"prompt": [1, 2], "max_tokens": 0}',
        b'{"prompt": [1, 2], "max_tokens": -5}',
        b'{"prompt": [1, 2], "temperature": -1}',
        b'{"prompt": [1, 2], "top_p": 0}',
        b'{"prompt": [1, 2], "top_p": 1.5}',
        b'{"prompt": [1, 2], "logprobs": -1}',
        b'{"prompt": [1, 2], "logprobs": 1000}',
        b'{"prompt": [1, 2], "prompt_logprobs": -1}',
        b'{"prompt": [1, 2], "seed": 1e30}',
        b'{"prompt": [-1, 2]}',
        b'{"prompt": [1, 99999999]}',
        b'{"prompt": [1, 2], "stream": true}',
        b'{"prompt": [1, 2], "echo": true}',
        b'{"prompt": [1, 2], "top_k": 5}',
        b'{"prompt": [1, 2], "stop": 5}',
        b'{"prompt": [1, 2], "stop_token_ids": [99999999]}',
    ],
)
def test_malformed_completion_is_4xx_never_500(client: httpx.Client, raw: bytes) -> None:
    response = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["code"] == response.status_code


def test_other_endpoint_errors(client: httpx.Client) -> None:
    cases = [
        ("/v1/completions", {"model": "no-such-model", "prompt": [1, 2]}, 404),
        ("/tokenize", {"messages": []}, 400),
        ("/tokenize", {"messages": [{"content": "no role"}]}, 400),
        ("/detokenize", {"tokens": [99999999]}, 400),
        ("/detokenize", {"tokens": "abc"}, 400),
    ]
    for path, body, status in cases:
        response = client.post(path, json=body)
        assert response.status_code == status, (path, body, response.text)
        assert response.json()["error"]["code"] == status
    assert (
        client.post("/v1/completions", content=b"x" * 10, headers={"content-type": "text/plain"}).status_code
        < 500
    )


def test_tokenize_plain_prompt_and_string_completion(client: httpx.Client) -> None:
    tokens = client.post("/tokenize", json={"prompt": "Hello there"}).json()["tokens"]
    assert tokens and client.post("/detokenize", json={"tokens": tokens}).json()["prompt"].endswith(
        "Hello there"
    )
    body = {"prompt": ["Hello there", "General Kenobi"], "max_tokens": 3, "return_token_ids": True}
    choices = client.post("/v1/completions", json=body).json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert choices[0]["prompt_token_ids"][-len(tokens) :] == tokens


# ------------------------------------------------------------------------ concurrency / metrics
def test_event_loop_not_blocked_and_concurrent_requests(client: httpx.Client, prompt: list[int]) -> None:
    """A long generation runs on the engine thread; /health answers meanwhile; queued requests finish."""
    results: list[int] = []

    def long_request() -> None:
        body = {"prompt": prompt, "n": 8, "max_tokens": 150, "ignore_eos": True, "seed": 1}
        with httpx.Client(base_url=str(client.base_url), timeout=120) as other:
            results.append(other.post("/v1/completions", json=body).status_code)

    threads = [threading.Thread(target=long_request) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    start = time.perf_counter()
    assert client.get("/health").status_code == 200
    assert client.post("/tokenize", json={"prompt": "hi"}).status_code == 200
    assert time.perf_counter() - start < 1.5
    metrics = client.get("/metrics").text
    for thread in threads:
        thread.join()
    assert results == [200, 200]
    assert "vllm:num_requests_running" in metrics
    after = client.get("/metrics").text
    line = next(x for x in after.splitlines() if x.startswith("vllm:generation_tokens_total"))
    assert float(line.split()[-1]) >= 2 * 8 * 150


def test_chunking_and_prefix_sharing_do_not_change_scores(
    default_model: LoadedModel, local_model: LoadedModel, prompt: list[int]
) -> None:
    """Tiny token budgets (many chunks) and prefix sharing on/off give the same numbers: the same
    bits in the default dtype (batch-invariant forward), to float noise in fp32."""
    from workers.engine.config import EngineConfig
    from workers.engine.core import Engine

    exact = default_model.model.dtype != torch.float32
    if exact:
        local_model = default_model

    gen = torch.Generator().manual_seed(0)
    replies = [torch.randint(3, 40000, (int(k),), generator=gen).tolist() for k in (1, 5, 17, 30, 2)]
    sequences = [prompt + r for r in replies] + [prompt[:20], [prompt[0]], prompt[3:]]
    reference = Engine(local_model, EngineConfig(score_token_budget=100_000, prefix_sharing=False)).score(
        sequences
    )
    for budget, sharing in ((64, True), (64, False), (100_000, True)):
        engine = Engine(local_model, EngineConfig(score_token_budget=budget, prefix_sharing=sharing))
        assert sharing == bool(engine.scorer.prefix_groups(sequences)) or not sharing
        for ref, got in zip(reference, engine.score(sequences), strict=True):
            if exact:
                assert got == ref
                continue
            for ra, rb in zip(ref.ranks[1:], got.ranks[1:], strict=True):  # float noise may swap near-ties
                assert ra is not None and rb is not None and abs(ra - rb) <= max(2, ra // 1000)
            for a, b in zip(ref.token_logprobs[1:], got.token_logprobs[1:], strict=True):
                assert a == pytest.approx(b, abs=TOL)
        engine.close()


def test_in_process_apps_share_one_process(local_model: LoadedModel) -> None:
    """The gateway embeds the worker through httpx.ASGITransport: two apps, one process, no clash."""
    from workers.engine.core import Engine
    from workers.server import create_app

    engine = Engine(local_model)

    async def run() -> None:
        apps = [create_app(engine), create_app(engine, served_model_name="other-name")]
        for app, name in zip(apps, ["tiny-random", "other-name"], strict=True):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://worker") as http:
                assert (await http.get("/v1/models")).json()["data"][0]["id"] == name
                body = {"model": name, "prompt": [1, 2, 3], "n": 2, "max_tokens": 3, "seed": 1}
                first, second = await asyncio.gather(
                    http.post("/v1/completions", json=body), http.post("/v1/completions", json=body)
                )
                assert first.status_code == second.status_code == 200
                assert first.json()["choices"][0]["text"] == second.json()["choices"][0]["text"]
                assert "vllm:prompt_tokens_total" in (await http.get("/metrics")).text

    try:
        asyncio.run(run())
    finally:
        engine.close()


def test_scores_and_ranks_equal_a_direct_forward(local_model: LoadedModel, prompt: list[int]) -> None:
    """Every position's log-prob and rank against one plain forward + log_softmax, for sequences long
    enough to cross the scoring pass's lm_head product and slice boundaries (256 and 16 rows on CPU)."""
    from workers.engine.config import EngineConfig
    from workers.engine.core import Engine

    gen = torch.Generator().manual_seed(3)
    vocab = local_model.vocab_size
    sequences = [prompt + torch.randint(3, vocab, (length,), generator=gen).tolist() for length in (300, 41)]
    engine = Engine(local_model, EngineConfig(prefix_sharing=False))
    scored = engine.score(sequences)
    engine.close()
    exact_ranks = positions = 0
    for sequence, got in zip(sequences, scored, strict=True):
        with torch.inference_mode():
            logits = local_model.model(input_ids=torch.tensor([sequence])).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        for position in range(1, len(sequence)):
            row = logprobs[position - 1]
            expected = float(row[sequence[position]])
            assert got.token_logprobs[position] == pytest.approx(expected, abs=TOL)
            rank = got.ranks[position]
            assert rank is not None
            expected_rank = int((row > row[sequence[position]]).sum()) + 1
            assert abs(rank - expected_rank) <= max(2, expected_rank // 1000)  # float near-ties
            exact_ranks += rank == expected_rank
            positions += 1
    assert exact_ranks >= 0.95 * positions
