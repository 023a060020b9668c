"""The one logging set-up (workers/logging_setup.py): JSON lines, quiet by default (no httpx per-call
lines, no uvicorn color_message, no FutureWarning), level by setting."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from workers.logging_setup import configure_logging


@dataclass
class _Settings:
    log_level: str = "INFO"
    log_json: bool = True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # An earlier test's configure_logging may have left warnings captured (then capturing again is a
    # no-op and pytest's own recorder would swallow the warning): start uncaptured.
    logging.captureWarnings(False)
    with warnings.catch_warnings():
        yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_with_extras_and_quiet_libraries(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(_Settings(), stream=stream)
    logging.getLogger("app.auction").info("served", extra={"auction_id": "a1"})
    logging.getLogger("httpx").info('HTTP Request: POST http://w/v1/completions "HTTP/1.1 200 OK"')
    logging.getLogger("uvicorn.error").info("Started", extra={"color_message": "\x1b[32mStarted\x1b[0m"})
    warnings.warn("`past_key_values` is deprecated", FutureWarning, stacklevel=1)
    warnings.warn("something the operator should see", UserWarning, stacklevel=1)
    lines = _lines(stream)
    assert [line["message"] for line in lines][:2] == ["served", "Started"]
    assert lines[0]["auction_id"] == "a1" and lines[0]["level"] == "INFO" and "time" in lines[0]
    assert not any("color_message" in line for line in lines)
    assert not any("HTTP Request" in str(line["message"]) for line in lines)
    assert not any("past_key_values" in str(line["message"]) for line in lines)
    assert any("operator should see" in str(line["message"]) for line in lines)  # via py.warnings


def test_level_by_setting(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(_Settings(log_level="DEBUG"), stream=stream)
    logging.getLogger("httpx").info("HTTP Request: GET /health")
    assert any("HTTP Request" in str(line["message"]) for line in _lines(stream))
    stream = io.StringIO()
    configure_logging(_Settings(log_level="WARNING"), stream=stream)
    logging.getLogger("app").info("hidden")
    logging.getLogger("app").warning("shown")
    assert [line["message"] for line in _lines(stream)] == ["shown"]


def test_plain_text_and_one_handler(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(_Settings(log_json=False), stream=stream)
    configure_logging(_Settings(log_json=False), stream=stream)  # again: still one handler
    logging.getLogger("app").info("hello")
    assert stream.getvalue().count("hello") == 1 and not stream.getvalue().startswith("{")
