"""The simulator: realistic, repeatable traffic through the official SDK into the warehouse."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clickstream.cli import main
from clickstream.simulate import Simulator, run_simulation
from tests.conftest import KEY, free_port


class Recorder:
    """Stands in for the SDK client: records every call."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, method):
        return lambda **kwargs: self.calls.append((method, kwargs))


def test_same_seed_same_events_and_realistic_shapes():
    a, b = Recorder(), Recorder()
    Simulator(a, users=20, seed=42).run(events=500)
    Simulator(b, users=20, seed=42).run(events=500)
    assert a.calls == b.calls and len(a.calls) == 500
    c = Recorder()
    Simulator(c, users=20, seed=43).run(events=500)
    assert c.calls != a.calls
    kinds = {m for m, _ in a.calls}
    assert {"page", "track", "identify", "alias"} <= kinds
    pages = [kw for m, kw in a.calls if m == "page"]
    assert all(kw["context"]["page"]["url"].startswith("https://") and kw["context"]["userAgent"] for kw in pages)
    # a user keeps one anonymous id, and sign-up aliases it to the new user id
    for m, kw in a.calls:
        if m == "alias":
            earlier = [k for mm, k in a.calls if mm == "page" and k["anonymous_id"] == kw["previous_id"]]
            assert earlier or any(k.get("anonymous_id") == kw["previous_id"] for _, k in a.calls)
    funnel = [kw["event"] for m, kw in a.calls if m == "track"]
    assert "Product Viewed" in funnel and len({kw["message_id"] for _, kw in a.calls if "message_id" in kw}) == 500


def test_simulated_events_arrive_in_the_warehouse(live_pipeline):
    summary = run_simulation(live_pipeline.url, KEY, users=10, events=300, duration=None, rate=None, seed=1,
                             progress=False)
    assert summary.events == 300 and summary.errors == 0
    live_pipeline.wait_loaded()
    rows = live_pipeline.query("SELECT type, COUNT(*) AS n FROM clickstream.events GROUP BY type")
    assert {r["type"]: r["n"] for r in rows} == dict(summary.by_type)
    assert live_pipeline.query("SELECT COUNT(*) AS n FROM clickstream.rejected")[0]["n"] == 0


def test_simulate_with_no_server_says_what_to_do_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CLICKSTREAM_HOST", raising=False)
    port = free_port()  # nothing listens there
    began = time.monotonic()
    code = main(["simulate", "--host", f"http://127.0.0.1:{port}", "--events", "5", "--data-dir", str(tmp_path)])
    elapsed = time.monotonic() - began
    captured = capsys.readouterr()
    assert code == 1 and elapsed < 10 and captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith(f"clickstream simulate: nothing answers at http://127.0.0.1:{port} (")
    assert "`make run`" in line and "--host" in line


def test_simulate_finds_the_running_pipeline_without_host(live_pipeline, capsys, monkeypatch):
    """`make run PORT=N` then a bare `clickstream simulate`: the port comes from the running pipeline."""
    monkeypatch.delenv("CLICKSTREAM_HOST", raising=False)
    code = main(["simulate", "--data-dir", str(live_pipeline.data_dir), "--write-key", KEY, "--events", "20",
                 "--seed", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith(f"sent 20 of 20 events to {live_pipeline.url} in ")
    assert out.rstrip().endswith("; 0 failed")
    assert len(live_pipeline.records()) == 20


def test_simulate_with_a_refused_write_key_says_so(live_pipeline, capsys):
    code = main(["simulate", "--host", live_pipeline.url, "--write-key", "not-a-key-at-all", "--events", "5"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err.splitlines() == [
        f"clickstream simulate: {live_pipeline.url} refuses the write key 'not-a-key-at-all' (HTTP 401): pass one it "
        "accepts with --write-key (env CLICKSTREAM_WRITE_KEY)"]
    assert live_pipeline.records() == []


class _RefusesEvents(BaseHTTPRequestHandler):
    """Answers the settings probe, refuses every event (a non-retryable 400)."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"code":"invalid_request","message":"nope"}'
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.timeout(60)
def test_simulate_says_0_sent_when_every_event_failed(capsys):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusesEvents)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code = main(["simulate", "--host", f"http://127.0.0.1:{server.server_port}", "--events", "7", "--seed", "1"])
    finally:
        server.shutdown()
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.startswith(f"sent 0 of 7 events to http://127.0.0.1:{server.server_port} in ")
    assert "; 7 failed (" in captured.out and "Traceback" not in captured.err
