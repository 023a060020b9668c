"""The one logging set-up of every MOSAIC process (gateway, worker, ledger consumer, CLI commands).

``configure_logging(settings)`` (any object with ``log_level`` and ``log_json``: ``WorkerSettings``
and the gateway's ``Settings``, which inherits them) installs one stderr handler on the root logger:
one JSON object per line (``time``, ``level``, ``name``, ``message`` and every ``extra={...}`` key)
or plain text. Quiet by default, so a log line means something:

* no per-call ``httpx`` / ``httpcore`` INFO lines (the gateway calls its workers ~10 times an
  auction; their latencies are metrics), no uvicorn access log (per-route metrics instead);
* uvicorn's own loggers propagate to this handler (run uvicorn with ``log_config=None``), and its
  ANSI ``color_message`` extra is dropped from every record;
* Python warnings go through logging (``py.warnings``), ``FutureWarning`` / ``DeprecationWarning``
  from libraries are silenced (they repeat on every start and are not the operator's to fix);
* transformers' own handler is replaced by propagation to this one, and its progress bars (and
  tqdm's, Hugging Face Hub's) are shown only when stderr is a terminal.

``LOG_LEVEL`` sets the level of everything (DEBUG brings the httpx lines back). Calling it again
replaces the handler (tests, the in-process worker of the gateway). Imports the standard library and
``python-json-logger`` only (transformers only when it is already imported).
See docs/DESIGN.md (the LLM worker) for the invariants and figures.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any, Protocol

from pythonjsonlogger.json import JsonFormatter

QUIET_LOGGERS = ("httpx", "httpcore", "uvicorn.access", "urllib3", "filelock", "asyncio")
_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class LogSettings(Protocol):
    log_level: str
    log_json: bool


class _DropColorMessage(logging.Filter):
    """uvicorn adds ``color_message`` (the message with ANSI escapes) as an extra: not in our logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


def formatter(json_lines: bool) -> logging.Formatter:
    if json_lines:
        return JsonFormatter(_FORMAT, rename_fields={"levelname": "level", "asctime": "time"})
    return logging.Formatter(_FORMAT)


def configure_logging(settings: LogSettings, stream: Any = None) -> None:
    """Install the MOSAIC handler on the root logger (see the module docs); idempotent."""
    level = str(settings.log_level).upper()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(bool(settings.log_json)))
    handler.addFilter(_DropColorMessage())
    handler._mosaic = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_mosaic", False) or type(existing) is logging.StreamHandler:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    logging.captureWarnings(True)
    if level != "DEBUG":
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    if not _is_tty(handler.stream):
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
    adopt_transformers_logging()


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def adopt_transformers_logging() -> None:
    """Route transformers' logger through the root handler; no progress bars off a terminal.

    A no-op until transformers is imported (``workers.models`` calls it right after importing it).
    """
    if "transformers" not in sys.modules:
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    root_level = logging.getLogger().level
    hf_logging.set_verbosity(max(root_level, logging.WARNING) if root_level != logging.DEBUG else root_level)
    if not _is_tty(sys.stderr):
        hf_logging.disable_progress_bar()
