"""`clickstream local` as a real process: query while it runs, SIGTERM, and the CLI's errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from clickstream.cli import main
from tests.conftest import free_port

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "clickstream.cli"]


def start(data_dir, port, *extra):
    (data_dir / "local.json").unlink(missing_ok=True)  # a killed server leaves its own behind
    proc = subprocess.Popen([*CLI, "local", "--port", str(port), "--data-dir", str(data_dir),
                             "--write-key", "cli-test-key=cli", "--load-interval", "0.1", *extra],
                            stdout=open(data_dir / "stdout.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if (data_dir / "local.json").exists():
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError((data_dir / "stdout.log").read_text())


def query(data_dir, sql, fmt="json"):
    out = subprocess.run([*CLI, "query", "--data-dir", str(data_dir), "--format", fmt, sql],
                         capture_output=True, text=True, timeout=60)
    return out


def test_query_while_local_runs_and_after_it_stops(tmp_path):
    port = free_port()
    proc = start(tmp_path, port)
    try:
        banner = (tmp_path / "stdout.log").read_text()
        assert "clickstream query" in banner and "dev-write-key" not in banner and "cli-test-key" in banner
        r = httpx.post(f"http://127.0.0.1:{port}/v1/track", auth=("cli-test-key", ""),
                       json={"userId": "u1", "event": "Signed Up", "messageId": "cli-1"})
        assert r.status_code == 200
        deadline = time.monotonic() + 2.0  # the bound: queryable within 2 seconds
        rows = []
        while time.monotonic() < deadline and not rows:
            out = query(tmp_path, "SELECT id, event, source FROM clickstream.tracks")
            assert out.returncode == 0, out.stderr
            rows = json.loads(out.stdout)
        assert rows == [{"id": "cli-1", "event": "signed_up", "source": "cli"}]
        refused = query(tmp_path, "DROP TABLE clickstream.events")
        assert refused.returncode == 1 and "read-only" in refused.stderr
        bad = query(tmp_path, "SELECT nope FROM clickstream.tracks")
        assert bad.returncode == 1 and "nope" in bad.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its graceful stop
    assert not (tmp_path / "local.json").exists()
    out = query(tmp_path, "SELECT COUNT(*) AS n FROM clickstream.events", fmt="csv")
    assert out.returncode == 0 and out.stdout.splitlines() == ["n", "1"]
    archived = list((tmp_path / "archive" / "events").rglob("*.gz"))
    assert archived, "SIGTERM flushes the archive buffer"


def test_sigterm_under_load_loses_no_acknowledged_event(tmp_path):
    port = free_port()
    proc = start(tmp_path, port)
    acked = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=("cli-test-key", ""), timeout=5) as client:
        for i in range(200):
            if i == 100:
                os.kill(proc.pid, signal.SIGTERM)
            try:
                r = client.post("/v1/track", json={"userId": "u", "event": "e", "messageId": f"t-{i}"})
            except httpx.TransportError:
                break
            if r.status_code == 200:
                acked.append(f"t-{i}")
    proc.wait(timeout=30)
    out = query(tmp_path, "SELECT message_id FROM clickstream.events")
    assert out.returncode == 0, out.stderr
    stored = {row["message_id"] for row in json.loads(out.stdout)}
    from clickstream.stream import LocalStream

    stream = LocalStream(tmp_path)
    in_stream = {json.loads(r.data)["message"]["messageId"] for r in stream.iter_from(0)}
    stream.close()
    assert set(acked) <= in_stream
    assert len(acked) >= 100
    # the loader may not have merged the last ones before exit; they load on next start
    assert stored <= in_stream


def test_cli_rejects_bad_write_keys(capsys):
    assert main(["local", "--write-key", "short"]) == 2
    assert "must be 8-128 characters" in capsys.readouterr().err


def test_query_without_a_warehouse_says_so(tmp_path, capsys):
    assert main(["query", "--data-dir", str(tmp_path), "SELECT 1"]) == 1
    assert "no warehouse" in capsys.readouterr().err


def test_query_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    from clickstream.warehouse import Warehouse

    Warehouse.in_dir(tmp_path).close()
    assert main(["query", "--data-dir", str(tmp_path), "SELECT nope FROM clickstream.events"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("clickstream query: query failed") and "Traceback" not in err


def test_sigterm_to_the_whole_process_group_still_flushes(tmp_path):
    """Process managers (and `timeout`) signal every process of the group, the consumer child too."""
    port = free_port()
    proc = subprocess.Popen([*CLI, "local", "--port", str(port), "--data-dir", str(tmp_path),
                             "--write-key", "cli-test-key=cli"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    while not (tmp_path / "local.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    r = httpx.post(f"http://127.0.0.1:{port}/v1/track", auth=("cli-test-key", ""),
                   json={"userId": "u", "event": "group term", "messageId": "g-1"})
    assert r.status_code == 200
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    time.sleep(0.5)
    archived = list((tmp_path / "archive" / "events").rglob("*.gz"))
    assert archived, "the archive buffer was not flushed"
    out = query(tmp_path, "SELECT id FROM clickstream.tracks", fmt="csv")
    assert out.returncode == 0 and out.stdout.splitlines() == ["id", "g-1"]


def test_a_busy_port_fails_with_one_clear_line_and_no_banner(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        began = time.monotonic()
        out = subprocess.run([*CLI, "local", "--port", str(port), "--data-dir", str(tmp_path / "d")],
                             capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        f"clickstream local: port {port} on 127.0.0.1 is already in use (another `clickstream local`?): stop it, "
        "or choose another port with --port N (make run PORT=N)"]
    assert not (tmp_path / "d").exists(), "nothing is created before the port is known to be free"
    assert time.monotonic() - began < 20


@pytest.mark.parametrize("command", [["records"], ["replay", "--from", "2026-01-01", "--to", "2026-01-02"],
                                     ["replay", "--from", "2026-01-01", "--to", "2026-01-02", "--dry-run"]])
def test_records_and_replay_refuse_a_data_dir_without_a_pipeline(tmp_path, capsys, command):
    typo = tmp_path / ".clickstrem"
    assert main([command[0], "--data-dir", str(typo), *command[1:]]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"clickstream {command[0]}: no local pipeline in {typo} (no stream.sqlite3): check --data-dir "
        f"(env CLICKSTREAM_DATA_DIR), or create one with `clickstream local --data-dir {typo}`"]
    assert not typo.exists(), "no empty stream is created"


def test_records_and_replay_still_read_a_real_data_dir(tmp_path, capsys):
    from clickstream.contract import Record
    from clickstream.stream import LocalStream

    stream = LocalStream(tmp_path)
    stream.put([Record("k", b'{"a":1}\n')])
    stream.close()
    assert main(["records", "--data-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == {"a": 1}
    assert main(["replay", "--data-dir", str(tmp_path), "--from", "2026-01-01", "--to", "2026-01-02",
                 "--dry-run"]) == 0


def _archived_ids(data_dir) -> list[str]:
    import gzip

    ids = []
    for path in sorted((data_dir / "archive" / "events").rglob("*.gz")):
        ids += [json.loads(line)["message"]["messageId"] for line in gzip.decompress(path.read_bytes()).splitlines()]
    return ids


def test_replay_right_after_sending_says_why_and_archive_flush_makes_it_replayable(tmp_path, capsys):
    """The running pipeline's archiver buffers 300 s (like Firehose): replay explains, --flush fixes."""
    from clickstream.local import build_pipeline
    from tests.conftest import WRITE_KEYS, serve

    port = free_port()
    pipeline = build_pipeline(host="127.0.0.1", port=port, data_dir=tmp_path, write_keys=WRITE_KEYS,
                              load_interval=0.1)
    server, thread = serve(pipeline.app, port)
    try:
        sent = [f"flush-{i}" for i in range(5)]
        for message_id in sent:
            r = httpx.post(f"http://127.0.0.1:{port}/v1/track", auth=("test-write-key", ""),
                           json={"userId": "u", "event": "Signed Up", "messageId": message_id})
            assert r.status_code == 200
        replay = ["replay", "--data-dir", str(tmp_path), "--from", "now-1h", "--to", "now", "--dry-run"]
        assert main(replay) == 0
        captured = capsys.readouterr()
        assert captured.out.startswith("would replay 0 records")
        [why] = captured.err.splitlines()
        assert why.startswith("clickstream replay: no archive objects in range ")
        assert "the archive is empty; 5 records wait in the stream, not archived yet" in why
        assert f"`clickstream archive --flush --data-dir {tmp_path}`" in why and "300 s" in why

        began = time.monotonic()
        assert main(["archive", "--flush", "--data-dir", str(tmp_path)]) == 0
        assert time.monotonic() - began < 5  # the archiver polls every second
        out = capsys.readouterr().out
        assert out.startswith("flushed 5 records; 5 of 5 stream records archived, 0 waiting; 1 objects in ")
        assert _archived_ids(tmp_path) == sent
        assert not (tmp_path / "archive-flush.request").exists()
        assert main(replay) == 0
        captured = capsys.readouterr()
        assert captured.out.startswith("would replay 5 records") and captured.err == ""
        assert captured.out.rstrip().endswith("Z")  # the resolved range, to resume with absolute times
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_archive_flush_without_a_running_pipeline_writes_directly(tmp_path, capsys):
    from clickstream.contract import Record
    from clickstream.stream import LocalStream

    stream = LocalStream(tmp_path)
    stream.put([Record("k", json.dumps({"message": {"messageId": f"m-{i}"}}).encode() + b"\n") for i in range(3)])
    stream.close()
    assert main(["archive", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("0 of 3 stream records archived, 3 waiting; 0 objects in ")
    assert main(["archive", "--flush", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("flushed 3 records; 3 of 3 stream records archived, 0 waiting; "
                                              "1 objects in ")
    assert _archived_ids(tmp_path) == ["m-0", "m-1", "m-2"]


def test_relative_replay_times():
    import datetime as dt

    from clickstream.cli import _parse_when

    now = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
    assert _parse_when("now", now) == now
    assert _parse_when("now-2h", now) == dt.datetime(2026, 11, 30, 10, 0, tzinfo=dt.UTC)
    assert _parse_when("NOW-90m", now) == dt.datetime(2026, 11, 30, 10, 30, tzinfo=dt.UTC)
    assert _parse_when("now-1d", now) == dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
    assert _parse_when("2026-11-28T10:00Z", now) == dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
    with pytest.raises(ValueError):
        _parse_when("yesterday", now)


def test_query_piped_has_no_ansi_escapes_even_with_force_color(tmp_path, capsys, monkeypatch):
    from clickstream.query import format_rows
    from clickstream.warehouse import Warehouse

    Warehouse.in_dir(tmp_path).close()
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert main(["query", "--data-dir", str(tmp_path), "SELECT 1 AS a, 'x' AS b"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out and out.endswith("(1 row)\n")
    assert [c.strip() for c in out.splitlines()[3].split("│")[1:3]] == ["1", "x"]
    assert "\x1b[" in format_rows(["a"], [[1]], "table", color=True)  # a terminal still gets styles


def test_banner_has_node_and_browser_snippets_for_this_endpoint(tmp_path):
    from clickstream.local import banner

    text = banner("127.0.0.1", 9123, {"web-key-123": "web"}, tmp_path)
    assert "  const analytics = new Analytics({ writeKey: 'web-key-123', host: 'http://127.0.0.1:9123' })" in text
    assert "  analytics.on('error'," in text.splitlines()[text.splitlines().index(
        "  const analytics = new Analytics({ writeKey: 'web-key-123', host: 'http://127.0.0.1:9123' })") + 1]
    assert "  await analytics.closeAndFlush()" in text
    assert "    { writeKey: 'web-key-123', cdnURL: 'http://127.0.0.1:9123' }," in text
    assert "'Segment.io': { apiHost: '127.0.0.1:9123/v1', protocol: 'http' }" in text
    assert f"clickstream archive --flush --data-dir {tmp_path}" in text


def test_local_option_defaults_are_the_limits_own():
    """`clickstream local`'s defaults come from ServerLimits and the stream's Limits, not copies."""
    from clickstream.cli import build_parser
    from clickstream.server import ServerLimits
    from clickstream.stream import Limits

    args = build_parser().parse_args(["local"])
    assert (args.max_connections, args.header_timeout, args.body_timeout) == (
        ServerLimits.max_connections, ServerLimits.header_timeout, ServerLimits.body_timeout)
    assert (args.max_backlog, args.min_free_mb * 2**20) == (Limits.max_backlog, Limits.min_free_bytes)
