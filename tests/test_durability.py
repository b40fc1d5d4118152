"""A 200 means the events are on disk: kill -9 the real server mid-load and count what survived."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest

from clickstream.stream import LocalStream
from tests.conftest import free_port

pytestmark = pytest.mark.slow


def start_server(data_dir, port) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "clickstream.cli", "local", "--port", str(port),
                             "--data-dir", str(data_dir), "--write-key", "crash-test-key=crash"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.options(f"http://127.0.0.1:{port}/v1/t", timeout=0.5)
            return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


@pytest.mark.parametrize("kill_after", [0.3, 0.8])
def test_kill_9_after_200_loses_nothing(tmp_path, kill_after):
    port = free_port()
    proc = start_server(tmp_path, port)
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sender():
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=("crash-test-key", ""), timeout=5) as client:
            while not stop.is_set():
                ids = [str(uuid.uuid4()) for _ in range(20)]
                body = {"batch": [{"type": "track", "event": "e", "userId": "u", "messageId": m} for m in ids]}
                try:
                    r = client.post("/v1/batch", json=body)
                except httpx.TransportError:
                    return
                if r.status_code == 200:
                    with lock:
                        acked.extend(ids)

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20  # load is flowing (the first answers can be slow on a busy machine)
    while not acked and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(kill_after)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert acked, "no request was acknowledged before the kill"
    stream = LocalStream(tmp_path)
    import orjson
    stored = [orjson.loads(r.data)["message"]["messageId"] for r in stream.iter_from(0)]
    stream.close()
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged events lost"
    # and the server starts again on the same data
    proc = start_server(tmp_path, port)
    r = httpx.post(f"http://127.0.0.1:{port}/v1/track", auth=("crash-test-key", ""),
                   json={"userId": "u", "event": "after-restart"})
    assert r.status_code == 200
    proc.terminate()
    proc.wait(timeout=20)
    stream = LocalStream(tmp_path)
    assert stream.count() == len(stored) + 1
    stream.close()



def test_the_writer_commits_durably_before_the_200(live_collector, monkeypatch):
    """kill -9 keeps the OS page cache, so the test above proves commit-before-200, not fsync. This
    one checks what makes a commit an fsync, on the connection that commits: WAL with
    synchronous=FULL (https://www.sqlite.org/pragma.html#pragma_synchronous: "the WAL file is
    synchronized before each transaction commit"), and that the answer waits for that commit."""
    import clickstream.stream as stream_module

    real_append = stream_module.append
    release = threading.Event()
    events: list[str] = []
    settings: list[tuple] = []

    def append(conn, chunks, arrival_ms=None):
        settings.append((conn.execute("PRAGMA journal_mode").fetchone()[0],
                         conn.execute("PRAGMA synchronous").fetchone()[0]))
        release.wait(10)
        real_append(conn, chunks, arrival_ms)
        events.append("committed")

    monkeypatch.setattr(stream_module, "append", append)
    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(httpx.post(f"{live_collector.url}/v1/track", auth=("test-write-key", ""),
                                  json={"userId": "u", "event": "e", "messageId": "fsync-1"}, timeout=15))
        events.append("answered")

    thread = threading.Thread(target=send)
    thread.start()
    time.sleep(0.5)
    assert events == [] and answers == [], "answered before the commit returned"
    release.set()
    thread.join(10)
    assert events == ["committed", "answered"] and answers[0].status_code == 200
    assert settings == [("wal", 2)]  # 2 = FULL
    assert [r["message"]["messageId"] for r in live_collector.records()] == ["fsync-1"]
