"""A recording HTTP proxy for tests: forwards to one upstream worker and keeps every JSON exchange.

``RecordingProxy(upstream_url)`` listens on a free loopback port (``proxy.url``) in a thread;
``proxy.exchanges`` lists ``Exchange(source, method, path, request, status, response)`` in arrival
order, ``proxy.source`` tags what comes next (``"gateway"``, ``"direct"``). Real sockets, no mocks:
the gateway under test is configured with ``WORKER_URLS=[proxy.url]``. Standard library and httpx.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


@dataclass
class Exchange:
    source: str
    method: str
    path: str
    request: Any
    status: int
    response: Any


def _json_or_none(data: bytes) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


class RecordingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.exchanges: list[Exchange] = []
        self.source = "direct"
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")
                }
                answer = httpx.request(
                    self.command, proxy.upstream + self.path, content=body, headers=headers, timeout=120
                )
                with proxy._lock:
                    proxy.exchanges.append(
                        Exchange(
                            proxy.source,
                            self.command,
                            self.path,
                            _json_or_none(body),
                            answer.status_code,
                            _json_or_none(answer.content),
                        )
                    )
                self.send_response(answer.status_code)
                for key in ("content-type",):
                    if key in answer.headers:
                        self.send_header(key, answer.headers[key])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = _forward
            do_POST = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
