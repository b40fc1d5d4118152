"""The HTTP server's own limits (clickstream.server): header size, header and body timeouts, a
connection cap, memory returned after slow clients leave, and a normal client served throughout;
and where the client IP comes from. All on loopback, bounded in connections and time."""

from __future__ import annotations

import base64
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from clickstream import server
from clickstream.collector import Collector
from clickstream.server import ServerLimits
from clickstream.stream import GroupCommitWriter, LocalStream
from tests.conftest import KEY, WRITE_KEYS, free_port

AUTH = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
TRACK = json.dumps({"userId": "u", "event": "e"}).encode()


@contextmanager
def serving(data_dir: Path, limits: ServerLimits | None = None, **options) -> Iterator[str]:
    """A collector served exactly as `clickstream local` serves it (server.config), in a thread."""
    port = free_port()
    app = Collector(WRITE_KEYS, GroupCommitWriter(data_dir), api_host=f"127.0.0.1:{port}/v1")
    uv = server.Server(server.config(app, "127.0.0.1", port, limits=limits, **options))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=15)


def stored(data_dir: Path) -> list[dict]:
    stream = LocalStream(data_dir)
    try:
        return [json.loads(r.data) for r in stream.iter_from(0)]
    finally:
        stream.close()


def connect(addr: str) -> socket.socket:
    host, port = addr.split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read until the server closes the connection; parse status, headers and body."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def request_head(extra: str = "", length: int = len(TRACK)) -> bytes:
    return (f"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: {AUTH}\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


def test_headers_and_urls_beyond_api_gateways_10240_bytes_get_431_and_414(tmp_path):
    with serving(tmp_path) as addr:
        url = f"http://{addr}/v1/track"
        fits = "x" * (10 * 1024 - 400)  # with the request line and the other headers: under 10,240 bytes
        r = httpx.post(url, content=TRACK, headers={"Authorization": AUTH, "X-Pad": fits})
        assert r.status_code == 200
        r = httpx.post(url, content=TRACK, headers={"Authorization": AUTH, "X-Pad": "x" * 10 * 1024})
        assert r.status_code == 431 and r.json()["code"] == "header_too_large"
        assert "10240 bytes" in r.json()["message"]
        r = httpx.post(url + "?q=" + "x" * 10240, content=TRACK, headers={"Authorization": AUTH})
        assert r.status_code == 414 and r.json()["code"] == "uri_too_long"
        # a header that never ends is refused once its bytes pass the bound, not buffered for ever
        sock = connect(addr)
        sock.sendall(request_head()[:-2] + b"X-Huge: " + b"y" * 30 * 1024)  # unterminated
        status, _, body = read_response(sock)
        sock.close()
        assert status == 431 and json.loads(body)["code"] == "header_too_large"
    assert [rec["userAgent"] for rec in stored(tmp_path)] == [r.request.headers["user-agent"]]


def test_headers_and_bodies_that_never_finish_time_out_with_408(tmp_path):
    limits = ServerLimits(header_timeout=0.5, body_timeout=0.5)
    with serving(tmp_path, limits) as addr:
        cases = {
            "silent": b"",  # connects, sends nothing
            "half a header": b"POST /v1/track HTTP/1.1\r\nHost: x\r\nX-Slow: ",
            "half a body": request_head(length=1000) + TRACK[:10],
        }
        for name, data in cases.items():
            sock = connect(addr)
            start = time.monotonic()
            sock.sendall(data)
            status, headers, body = read_response(sock)
            took = time.monotonic() - start
            sock.close()
            assert status == 408 and json.loads(body)["code"] == "request_timeout", name
            assert headers["connection"] == "close"
            assert 0.4 < took < 3, (name, took)
        # the clock restarts per request: a kept-alive connection is not cut by an earlier request's time
        with httpx.Client(base_url=f"http://{addr}") as client:
            for _ in range(3):
                assert client.post("/v1/track", content=TRACK, headers={"Authorization": AUTH}).status_code == 200
                time.sleep(0.3)
    assert len(stored(tmp_path)) == 3  # nothing from the unfinished requests


def test_connections_beyond_the_cap_get_503_when_all_are_busy(tmp_path):
    limits = ServerLimits(max_connections=20, header_timeout=30, body_timeout=30)
    with serving(tmp_path, limits) as addr:
        busy = [connect(addr) for _ in range(20)]
        for sock in busy:  # each is sending a body: a request in progress, never taken over
            sock.sendall(request_head(length=1000) + TRACK[:10])
        try:
            time.sleep(0.7)
            r = httpx.post(f"http://{addr}/v1/track", content=TRACK, headers={"Authorization": AUTH}, timeout=5)
            assert r.status_code == 503 and r.json()["code"] == "too_many_connections"
            assert r.headers["retry-after"] == "1"
        finally:
            for sock in busy[:5]:
                sock.close()
        time.sleep(0.2)  # five slots free again: served
        r = httpx.post(f"http://{addr}/v1/track", content=TRACK, headers={"Authorization": AUTH}, timeout=5)
        assert r.status_code == 200
        for sock in busy[5:]:
            sock.close()
    assert len(stored(tmp_path)) == 1


def test_clients_holding_connections_without_requests_cannot_lock_out_a_normal_client(tmp_path):
    """Slowloris at the cap: 30 connections that send nothing or half a header, reopened as soon as
    they are closed. A normal client (new connection per request) is served every time."""
    limits = ServerLimits(max_connections=30, header_timeout=60)
    stop = threading.Event()
    held: list[socket.socket] = []

    def hold() -> None:
        while not stop.is_set():
            for sock in list(held):
                try:
                    sock.setblocking(False)
                    if sock.recv(1024) == b"":  # closed by the server: open another
                        held.remove(sock)
                except BlockingIOError:
                    pass
                except OSError:
                    held.remove(sock)
            while len(held) < 30 and not stop.is_set():
                sock = connect(addr)
                if len(held) % 2:
                    sock.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                held.append(sock)
            time.sleep(0.05)

    with serving(tmp_path, limits) as addr:
        attacker = threading.Thread(target=hold)
        attacker.start()
        try:
            time.sleep(1.0)  # the cap is full of them
            answers = []
            for _ in range(10):
                r = httpx.post(f"http://{addr}/v1/track", content=TRACK, headers={"Authorization": AUTH},
                               timeout=5)
                answers.append(r.status_code)
                time.sleep(0.6)  # they reconnect meanwhile and wait long enough to be taken over
            assert answers == [200] * 10
        finally:
            stop.set()
            attacker.join(10)
            for sock in held:
                sock.close()
    assert len(stored(tmp_path)) == 10


@pytest.mark.parametrize("allow,expected", [(None, "127.0.0.1"), ("127.0.0.1", "203.0.113.9")])
def test_client_ip_is_the_tcp_peer_unless_forwarding_is_trusted(tmp_path, allow, expected):
    with serving(tmp_path, forwarded_allow_ips=allow) as addr:
        r = httpx.post(f"http://{addr}/v1/track", content=TRACK,
                       headers={"Authorization": AUTH, "X-Forwarded-For": "203.0.113.9"})
        assert r.status_code == 200
    assert [rec["ip"] for rec in stored(tmp_path)] == [expected]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_slow_clients_hold_memory_only_until_they_time_out_and_a_normal_client_is_served(tmp_path):
    """300 clients each send 400 KiB of a 500 KiB body and stall (the issue's ~500 MB at 1,000);
    a normal client is served meanwhile, and the memory is returned once they time out."""
    from tests.test_cli_local import start

    port = free_port()
    proc = start(tmp_path, port, "--body-timeout", "3", "--max-connections", "400")
    url = f"http://127.0.0.1:{port}/v1/track"
    slow: list[socket.socket] = []
    try:
        auth = ("cli-test-key", "")
        for i in range(20):  # warm up
            assert httpx.post(url, auth=auth, json={"userId": "u", "event": "warm", "messageId": f"w-{i}"}).is_success
        base = rss_mb(proc.pid)
        part = b'{"batch":[{"userId":"u","event":"slow","p":"' + b"x" * 400 * 1024
        head = (f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {500 * 1024}\r\n\r\n").encode()
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(head + part)
            slow.append(sock)
        latencies = []
        for i in range(10):  # a normal client, while they hold their connections
            start_at = time.monotonic()
            r = httpx.post(url, auth=("cli-test-key", ""), json={"userId": "u", "event": "n", "messageId": f"n-{i}"},
                           timeout=5)
            latencies.append(time.monotonic() - start_at)
            assert r.status_code == 200
        held = rss_mb(proc.pid)
        assert held > base + 60, (base, held)  # the bodies really are held while their clients stall
        answers = set()
        for sock in slow:
            status, _, body = read_response(sock)
            answers.add((status, json.loads(body)["code"]))
            sock.close()
        assert answers == {(408, "request_timeout")}
        time.sleep(1.0)
        after = rss_mb(proc.pid)
        assert after < base + 25, f"RSS {base:.0f} MB -> {held:.0f} MB with slow clients -> {after:.0f} MB after"
        assert max(latencies) < 2.0, latencies
    finally:
        for sock in slow:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    stream = [rec["message"]["event"] for rec in stored(tmp_path)]
    assert stream.count("n") == 10 and "slow" not in stream


def test_the_connection_cap_fits_under_the_open_file_limit(monkeypatch):
    """Past the fd limit accept() fails for everyone, so the cap must stay below it."""
    import resource

    calls = []
    monkeypatch.setattr(resource, "setrlimit", lambda what, value: calls.append(value))
    monkeypatch.setattr(resource, "getrlimit", lambda what: (1024, 4096))
    assert server.fit_descriptors(ServerLimits(max_connections=1000)).max_connections == 1000
    assert calls == [(1000 + server.FD_RESERVE, 4096)]  # the soft limit raised as far as needed

    def refuse(what, value):
        raise ValueError("not permitted")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    monkeypatch.setattr(resource, "getrlimit", lambda what: (1024, 1024))
    assert server.fit_descriptors(ServerLimits(max_connections=1000)).max_connections == 1024 - server.FD_RESERVE
    assert server.fit_descriptors(ServerLimits(max_connections=500)).max_connections == 500


def test_pipelined_requests_in_one_write_are_all_served_not_refused_as_large_headers(tmp_path):
    """HTTP/1.1 pipelining: many complete small requests in one packet are not one oversized head."""
    n = 400
    request = (f"POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(TRACK)}\r\n\r\n").encode() + TRACK
    assert len(request) * n > 2 * (ServerLimits().max_header_bytes + ServerLimits().max_url_chars + 1024)
    with serving(tmp_path) as addr, connect(addr) as sock:
        sock.sendall(request * n)
        answers = b""
        deadline = time.monotonic() + 20
        while answers.count(b"HTTP/1.1 ") < n and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answers += chunk
    assert answers.count(b"HTTP/1.1 200 ") == n, answers[:300]
    assert len(stored(tmp_path)) == n
