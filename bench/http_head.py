"""What the request-head size limit costs: round trips to uvicorn with each HTTP protocol class.

Three servers, each its own process on loopback, one minimal ASGI app (200, 2 bytes) so only the
HTTP layer differs: `httptools` (uvicorn's HttpToolsProtocol with the read timeout, as `mosaic serve`
ran before the limit), `limited` (the same with `HeadSizeLimitMixin`: what it runs now) and `h11`
(uvicorn's H11Protocol, read timeout and `h11_max_incomplete_event_size`: the other way to a limit). One
keep-alive client sends the same `GET` with a browser-sized head (~900 bytes) over and over; the
variants alternate in rounds so drift hits all of them alike.

    .venv/bin/python bench/http_head.py --requests 2000 --rounds 5

Last line: `p50_us_httptools=<µs> p50_us_limited=<µs> p50_us_h11=<µs>` (median round trip).
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("httptools", "limited", "h11")
HEAD = (
    b"GET /healthz HTTP/1.1\r\nHost: gateway.example:8000\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) "
    b"AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\nAccept: application/json\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\nAccept-Encoding: gzip, deflate, br\r\n"
    b"Authorization: Bearer " + b"k" * 64 + b"\r\nCookie: " + b"c" * 400 + b"\r\n\r\n"
)


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _serve(variant: str, port: int) -> None:
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from app.gateway.http_limits import ReadTimeoutMixin, protocol_class
    from app.settings import Settings

    settings = Settings()
    protocol: type[Any] = {
        "httptools": type("ReadTimeoutHttpToolsProtocol", (ReadTimeoutMixin, HttpToolsProtocol), {}),
        "limited": protocol_class(settings),
        "h11": type("ReadTimeoutH11Protocol", (ReadTimeoutMixin, H11Protocol), {}),
    }[variant]
    config = uvicorn.Config(
        _app,
        port=port,
        http=protocol,
        lifespan="off",
        log_level="warning",
        access_log=False,
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
    )
    uvicorn.Server(config).run()


def _round_trips(port: int, requests: int) -> list[float]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            sock.sendall(HEAD)
            answer = b""
            while not answer.endswith(b"ok"):
                answer += sock.recv(4096)
            times.append(time.perf_counter() - started)
        return times


def _wait(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"no server on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    ports, servers = {}, []
    for variant in VARIANTS:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports[variant] = probe.getsockname()[1]
        server = context.Process(target=_serve, args=(variant, ports[variant]), daemon=True)
        server.start()
        servers.append(server)
    try:
        for variant in VARIANTS:
            _wait(ports[variant])
            _round_trips(ports[variant], 200)  # warm-up
        samples: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                samples[variant] += _round_trips(ports[variant], args.requests)
        for variant in VARIANTS:
            p50, p99 = statistics.median(samples[variant]), statistics.quantiles(samples[variant], n=100)[98]
            print(f"{variant:9s} p50 {p50 * 1e6:7.1f} µs  p99 {p99 * 1e6:7.1f} µs")
        print(" ".join(f"p50_us_{v}={statistics.median(samples[v]) * 1e6:.1f}" for v in VARIANTS))
    finally:
        for server in servers:
            server.terminate()


if __name__ == "__main__":
    main()
