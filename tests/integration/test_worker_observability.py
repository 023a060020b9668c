"""A real worker process's logs and metrics: every log line is a JSON object (no progress bars, no
FutureWarning, no ANSI colours), and its metrics are vLLM's (names, `engine` label, one
request_success per request, TTFT / inter-token latency / token histograms)."""

from __future__ import annotations

import json
import re

import httpx

from tests.fixtures_worker import WorkerProcess, start_worker_process


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_requests_and_latencies(tiny_worker: WorkerProcess) -> None:
    with httpx.Client(base_url=tiny_worker.url, timeout=60) as http:
        before = http.get("/metrics").text
        body = {"prompt": [1, 2, 3, 4], "n": 3, "max_tokens": 5, "ignore_eos": True, "seed": 1}
        assert http.post("/v1/completions", json=body).status_code == 200
        after = http.get("/metrics").text
    assert re.search(r'vllm:num_requests_running\{engine="0",model_name="[^"]+"\}', after)

    def delta(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert delta("vllm:request_success_total", engine="0", finished_reason="length") == 1  # one request, n=3
    assert delta("vllm:generation_tokens_total") == 15
    assert delta("vllm:prompt_tokens_total") == 4
    assert delta("vllm:request_generation_tokens_sum") == 15
    assert delta("vllm:request_prompt_tokens_count") == 1
    assert delta("vllm:time_to_first_token_seconds_count") == 1
    assert delta("vllm:inter_token_latency_seconds_count") == 4  # 5 steps: 4 gaps
    assert delta("vllm:e2e_request_latency_seconds_count") == 1


def test_every_log_line_is_json(tiny_worker: WorkerProcess) -> None:
    # scoring with a shared prefix used to print a `past_key_values` FutureWarning
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, t] for t in (5, 6)]
    body = {"prompt": prompts, "max_tokens": 1, "prompt_logprobs": 0}
    assert httpx.post(f"{tiny_worker.url}/v1/completions", json=body, timeout=60).status_code == 200
    log = tiny_worker.log_tail(200_000)
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines, "the worker logged nothing (it logs 'worker ready' at start)"
    for line in lines:
        record = json.loads(line)  # raises on progress bars, warnings, plain text
        assert {"time", "level", "name", "message"} <= set(record)
        assert "color_message" not in record
    assert "it/s" not in log and "FutureWarning" not in log and "\x1b[" not in log
    assert any(json.loads(line)["message"].startswith("worker ready") for line in lines)


def test_served_model_name_and_max_logprobs() -> None:
    """vLLM's --served-model-name / --max-logprobs, here through their settings."""
    worker = start_worker_process(env={"WORKER_SERVED_MODEL_NAME": "house-model", "WORKER_MAX_LOGPROBS": "2"})
    try:
        with httpx.Client(base_url=worker.url, timeout=60) as http:
            assert http.get("/v1/models").json()["data"][0]["id"] == "house-model"
            body = {"model": "house-model", "prompt": [1, 2, 3], "max_tokens": 2, "logprobs": 2}
            answer = http.post("/v1/completions", json=body)
            assert answer.status_code == 200 and answer.json()["model"] == "house-model"
            refused = http.post("/v1/completions", json={**body, "logprobs": 3})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "logprobs"
            metrics = http.get("/metrics").text
            assert 'model_name="house-model"' in metrics
    finally:
        worker.stop()
