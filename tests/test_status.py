"""`clickstream local` as a real process: /health and `clickstream status` through a kill -9 of the
consumer process, and a clean exit (status 0, no leaked-semaphore warning) after SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import free_port
from tests.test_cli_local import CLI, start

pytestmark = pytest.mark.slow


def status(data_dir, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "status", "--data-dir", str(data_dir), *extra], capture_output=True, text=True,
                          timeout=60)


def test_health_and_status_follow_a_killed_consumer_and_sigterm_exits_0(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(tmp_path, port)
    try:
        r = httpx.post(f"{url}/v1/track", auth=("cli-test-key", ""),
                       json={"userId": "u", "event": "a", "messageId": "h-1"})
        assert r.status_code == 200
        assert httpx.post(f"{url}/v1/track", json={"userId": "u", "writeKey": "wrong-key-123"}).status_code == 401
        assert httpx.get(f"{url}/health", headers={"X-Pad": "x" * 11_000}).status_code == 431
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "ok" and health["problems"] == []
        assert health["refused"] == {"header_too_large": 1, "invalid_write_key": 1}
        assert health["consumer_process"]["alive"] and health["consumer_process"]["restarts"] == 0
        child = health["consumer_process"]["pid"]
        assert child != proc.pid

        os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 30
        seen_down = False
        while time.monotonic() < deadline:
            r = httpx.get(f"{url}/health")
            doc = r.json()
            if not doc["consumer_process"]["alive"]:
                seen_down = True
                assert r.status_code == 503 and doc["status"] == "degraded"
                assert any("process is down" in p for p in doc["problems"])
            if doc["consumer_process"]["restarts"] == 1 and doc["consumer_process"]["alive"]:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the consumer was not restarted: {doc}")
        assert seen_down or doc["consumer_process"]["last_exit_code"] == -signal.SIGKILL
        assert doc["consumer_process"]["pid"] != child and doc["consumer_process"]["last_exit_code"] == -9
        assert "exited with code -9" in (tmp_path / "stdout.log").read_text()

        # events sent after the restart land, and the lags go back to zero
        r = httpx.post(f"{url}/v1/track", auth=("cli-test-key", ""),
                       json={"userId": "u", "event": "b", "messageId": "h-2"})
        assert r.status_code == 200
        deadline = time.monotonic() + 15
        while (doc := httpx.get(f"{url}/health").json())["warehouse"]["lag_records"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert doc["warehouse"] == {"lag_records": 0, "lag_seconds": 0.0, "load_failures": 0, "last_error": None}
        assert doc["archive"]["lag_records"] == 2 and doc["archive"]["buffer_seconds"] == 300
        assert doc["stream"]["last_sequence_number"] == 2 and doc["backlog"]["limit"] == 1_000_000

        out = status(tmp_path, "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["consumer_process"]["restarts"] == 1
        out = status(tmp_path)
        assert out.returncode == 0 and "running, ok" in out.stdout
        assert "1 restart (last exit code -9" in out.stdout and "warehouse  : 0 records behind" in out.stdout
        assert "refused    : 1 header_too_large, 1 invalid_write_key" in out.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    log = (tmp_path / "stdout.log").read_text()
    assert "leaked semaphore" not in log and "Traceback" not in log
    out = status(tmp_path)
    assert out.returncode == 3 and "not running" in out.stdout
    assert "warehouse  : 0 records behind" in out.stdout  # the last pass at shutdown loaded everything


def test_status_without_any_data_says_so(tmp_path):
    out = status(tmp_path / "nothing")
    assert out.returncode == 3 and "no pipeline data" in out.stderr


def test_sigterm_exit_status_is_0(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clickstream.cli", "local", "--port", str(port),
                             "--data-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not (tmp_path / "local.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert "leaked semaphore" not in output
