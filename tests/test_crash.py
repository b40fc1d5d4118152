"""kill -9 under load, several times: every acknowledged event ends in the warehouse exactly once,
and no event that was refused ever does."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import uuid

import httpx
import pytest

from tests.conftest import CAUGHT_UP, free_port
from tests.test_cli_local import query, start

pytestmark = pytest.mark.slow


def test_repeated_kill_9_loses_and_duplicates_nothing(tmp_path):
    rng = random.Random(20261128)
    port = free_port()
    acked: set[str] = set()
    refused: set[str] = set()
    lock = threading.Lock()

    def sender(stop: threading.Event, n: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            i = 0
            while not stop.is_set():
                i += 1
                bad = i % 7 == 0
                ids = [f"{'err' if bad else 'ok'}-{n}-{uuid.uuid4()}" for _ in range(25)]
                body = {"batch": [{"type": "track", "event": "Crash", "userId": f"u{n}", "messageId": m}
                                  for m in ids], "writeKey": "wrong-key-123" if bad else "cli-test-key"}
                try:
                    r = client.post("/v1/batch", json=body)
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue  # no answer: neither acknowledged nor refused
                with lock:
                    (acked if r.status_code == 200 else refused).update(ids)

    for cycle in range(3):
        proc = start(tmp_path, port)
        stop = threading.Event()
        threads = [threading.Thread(target=sender, args=(stop, n)) for n in range(3)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.3, 1.2))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stop.set()
        for t in threads:
            t.join(timeout=10)
        assert acked, f"cycle {cycle}: nothing acknowledged"
    assert refused, "the refused path was not exercised"

    proc = start(tmp_path, port)  # the last start loads what the crashes left in the stream
    try:
        from clickstream.stream import LocalStream

        stream = LocalStream(tmp_path)
        last = stream.last_seq()
        stream.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = query(tmp_path, CAUGHT_UP)
            if out.returncode == 0:
                row = json.loads(out.stdout)[0]
                if (row["loaded"] or 0) >= last and row["unmerged"] == 0:
                    break
            time.sleep(0.2)
        else:
            pytest.fail(f"the warehouse did not catch up with the stream: {out.stdout} {out.stderr}\n"
                        + (tmp_path / "stdout.log").read_text()[-3000:])
        out = query(tmp_path, "SELECT message_id FROM clickstream.events")
        assert out.returncode == 0, out.stderr
        ids = [row["message_id"] for row in json.loads(out.stdout)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert len(ids) == len(set(ids)), "duplicates in the warehouse"
    missing = acked - set(ids)
    assert not missing, f"{len(missing)} acknowledged events missing after crashes"
    assert not (refused & set(ids)), "a refused event reached the warehouse"
