"""Slow and idle clients cannot hold the gateway: a real `mosaic serve` and real sockets.

Hundreds of connections that send half a request head, nothing at all, a head trickled one byte at a
time (slowloris) or a body that never ends are all closed by the server within the configured
HTTP_HEADER_TIMEOUT_S / HTTP_BODY_TIMEOUT_S (+ slack), the gateway's file descriptors come back, and
meanwhile auctions are served and billed exactly once. A request head past HTTP_MAX_HEADER_BYTES is
answered 431 and a flood of huge header lines costs the gateway no memory.
"""

from __future__ import annotations

import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.fixtures_billing import assert_billed_exactly_once, billed_count
from tests.fixtures_gateway import start_gateway_process
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess

pytestmark = pytest.mark.timeout(120)

TIMEOUT_S = 1.5
SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: abcdefghijklmnopqrstuvwxyz\r\n"  # never ends
BODY = {
    "query": "Learning to play the guitar.",
    "advertisers": [{"id": "strummaster", "name": "StrumMaster", "description": "selling guitars"}],
    "candidates": 2,
    "max_tokens": 4,
}


def _closed_by_server(sock: socket.socket) -> bool:
    """True when the server closed it (an answer before the close, e.g. a 400, is read past)."""
    sock.setblocking(False)
    try:
        while True:
            if sock.recv(65536) == b"":
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_half_open_idle_and_slow_connections_are_released(
    tiny_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path: Path
) -> None:
    gateway = start_gateway_process(
        tiny_worker.url,
        redis_process.url,
        tmp_path,
        HTTP_HEADER_TIMEOUT_S=str(TIMEOUT_S),
        HTTP_BODY_TIMEOUT_S=str(TIMEOUT_S),
        HTTP_TIMEOUT_KEEP_ALIVE_S="1",
    )
    try:
        port = gateway.port
        billed_before = billed_count(redis_process.url)
        baseline = _fds(gateway.process.pid)
        kinds: dict[str, list[socket.socket]] = {"half_head": [], "nothing": [], "slowloris": [], "body": []}
        for index in range(400):
            sock = socket.create_connection(("127.0.0.1", port))
            kind = ("half_head", "nothing", "slowloris", "body")[index % 4]
            if kind == "half_head":
                sock.sendall(b"POST /auction HTTP/1.1\r\nHost: x\r\n")
            elif kind == "slowloris":
                sock.sendall(SLOW_HEAD[:1])
            elif kind == "body":
                sock.sendall(b'POST /auction HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"q')
            kinds[kind].append(sock)
        opened, sent = time.monotonic(), 0
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            answer = client.post("/auction", json=BODY).raise_for_status().json()  # served meanwhile
            assert _fds(gateway.process.pid) >= baseline + 300
            while time.monotonic() - opened < TIMEOUT_S * 0.8:  # trickling does not extend the deadline
                sent += 1
                for sock in kinds["slowloris"]:
                    sock.sendall(SLOW_HEAD[sent : sent + 1])
                time.sleep(0.2)
            time.sleep(max(0.0, opened + TIMEOUT_S + 2.0 - time.monotonic()))
            still_open = {kind: sum(not _closed_by_server(s) for s in socks) for kind, socks in kinds.items()}
            assert still_open == {"half_head": 0, "nothing": 0, "slowloris": 0, "body": 0}
            for socks in kinds.values():
                for sock in socks:
                    sock.close()
            assert _fds(gateway.process.pid) <= baseline + 10
            # A keep-alive connection that is used normally is not cut by the read timeout.
            for _ in range(2):
                assert client.get("/healthz").status_code == 200
            served = [
                answer["auction_id"],
                client.post("/auction", json=BODY).raise_for_status().json()["auction_id"],
            ]
        assert_billed_exactly_once(redis_process.url, served, billed_before)
    finally:
        gateway.stop()


def _peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM): what a flood cost at its worst, even if freed since."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


CHUNKED = (
    b"POST /auctions/abc123/render HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"  # the body's last chunk: trailers follow
)


def _send_head(port: int, header_lines: int, line_bytes: int, start: bytes = b"") -> tuple[bytes, bool]:
    """Send `GET /healthz` (or `start`: then the lines are its trailers) with `header_lines` lines of
    `line_bytes` each; the answer read (b"" if the server cut the connection first) and whether every
    byte could be sent."""
    line = b"X-Big: " + b"a" * (line_bytes - 9) + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sent_all = True
        try:
            sock.sendall(start or b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            for _ in range(header_lines):
                sock.sendall(line)
            sock.sendall(b"\r\n")
        except OSError:  # the server closed it (431 then close): the rest is refused
            sent_all = False
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and not sent_all:
                    break
        except OSError:
            pass
        return answer, sent_all


def test_header_flood_is_431_and_memory_stays_bounded(
    tiny_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path: Path
) -> None:
    """Invariant: with the HTTP implementation `mosaic serve` runs (httptools), a request head up to
    HTTP_MAX_HEADER_BYTES is served, one past it is answered 431 (JSON naming `header`) and closed,
    and a flood of 1 MB header lines on 4 connections at once (256 MB sent; one of them as the trailers
    of a chunked body) leaves the gateway's peak RSS within 32 MB of what it was (it grew by the whole
    flood when only h11 had a limit)."""
    limit = 16384
    gateway = start_gateway_process(
        tiny_worker.url, redis_process.url, tmp_path, HTTP_MAX_HEADER_BYTES=str(limit)
    )
    try:
        pid, port = gateway.process.pid, gateway.port
        answer, _ = _send_head(port, header_lines=12, line_bytes=1000)  # ~12 KB: within the limit
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        answer, _ = _send_head(port, header_lines=20, line_bytes=1000)  # ~20 KB: past it
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        detail = json.loads(answer.split(b"\r\n\r\n", 1)[1])["detail"][0]
        assert detail["loc"] == ["header"] and detail["ctx"] == {"limit": limit}, detail
        answer, _ = _send_head(port, header_lines=2, line_bytes=100, start=CHUNKED)  # small trailers
        assert answer.startswith(b"HTTP/1.1 404"), answer[:200]  # served (no such auction), not cut
        before = _peak_rss_bytes(pid)
        with ThreadPoolExecutor(4) as pool:
            starts = [b"", b"", b"", CHUNKED]  # three heads and one chunked body's trailer section
            floods = list(pool.map(lambda start: _send_head(port, 64, 1 << 20, start), starts))
        grown = _peak_rss_bytes(pid) - before
        assert grown < 32 << 20, f"peak RSS grew by {grown / 2**20:.0f} MB"
        assert all(not sent_all for _, sent_all in floods)  # each was cut off, not read to its end
        assert httpx.get(f"{gateway.url}/healthz", timeout=10).status_code == 200
    finally:
        gateway.stop()
