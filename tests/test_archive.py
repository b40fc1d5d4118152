"""The local archive: Firehose's key layout and bytes, written from the local stream."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import re
import time

import httpx

from clickstream import archive
from clickstream.contract import Record
from clickstream.stream import LocalStream
from tests.conftest import KEY

KEY_RE = re.compile(
    r"^events/(\d{4})/(\d{2})/(\d{2})/(\d{2})/clickstream-archive-1-(\d{4})-(\d{2})-(\d{2})-(\d{2})-\d{2}-\d{2}-"
    r"[0-9a-f-]{36}\.gz$")


def all_objects(root, prefix="events/"):
    return sorted(p for p in (root / "archive").rglob("*.gz") if p.relative_to(root / "archive").as_posix()
                  .startswith(prefix))


def test_archive_objects_hold_exactly_the_accepted_records(live_pipeline):
    for n in range(3):
        r = httpx.post(live_pipeline.url + "/v1/batch", json={"writeKey": KEY, "batch": [
            {"type": "track", "event": f"e{n}-{i}", "userId": "u", "messageId": f"a{n}-{i}"} for i in range(50)]})
        assert r.status_code == 200
    deadline = time.monotonic() + 15
    stream = LocalStream(live_pipeline.data_dir)
    while stream.checkpoint(archive.ARCHIVER_CONSUMER) < stream.last_seq() and time.monotonic() < deadline:
        time.sleep(0.1)
    expected = b"".join(r.data for r in stream.iter_from(0))
    first_arrival = archive.utc_from_ms(stream.read(0, 1)[0].arrival_ms)
    stream.close()
    objects = all_objects(live_pipeline.data_dir)
    assert objects, "nothing archived"
    got = b"".join(gzip.decompress(p.read_bytes()) for p in objects)
    assert got == expected  # same bytes, same order, nothing lost or added
    assert len(got.splitlines()) == 150 and all(json.loads(line)["v"] == 1 for line in got.splitlines())
    key = objects[0].relative_to(live_pipeline.data_dir / "archive").as_posix()
    m = KEY_RE.match(key)
    assert m, key
    assert m.groups()[:4] == m.groups()[4:8] == (f"{first_arrival:%Y}", f"{first_arrival:%m}",
                                                 f"{first_arrival:%d}", f"{first_arrival:%H}")


def test_buffering_by_size_and_interval_and_checkpoint(tmp_path):
    stream = LocalStream(tmp_path)
    line = b'{"v":1,"message":{"x":"' + b"y" * 1000 + b'"}}\n'
    stream.put([Record(f"k{i}", line) for i in range(10)])
    arch = archive.Archiver(tmp_path, buffer_bytes=4 * len(line), buffer_seconds=3600)
    assert arch.run_once(stream) == 8  # two full buffers; the rest waits for size or time
    assert len(all_objects(tmp_path)) == 2
    assert stream.checkpoint(archive.ARCHIVER_CONSUMER) == 8
    assert archive.Archiver(tmp_path, buffer_bytes=4 * len(line), buffer_seconds=3600).run_once(stream) == 0
    assert arch.run_once(stream, force=True) == 2  # shutdown flush
    assert archive.Archiver(tmp_path, buffer_seconds=0).run_once(stream) == 0  # resumes after checkpoint
    assert sum(len(gzip.decompress(p.read_bytes()).splitlines()) for p in all_objects(tmp_path)) == 10


def test_records_that_break_newline_framing_go_to_the_error_prefix(tmp_path):
    stream = LocalStream(tmp_path)
    stream.put([Record("a", b'{"ok":1}\n'), Record("b", b'{"two":\n"lines"}\n'), Record("c", b"no newline")])
    archive.Archiver(tmp_path, buffer_seconds=0).run_once(stream)
    [good] = all_objects(tmp_path, "events/")
    assert gzip.decompress(good.read_bytes()) == b'{"ok":1}\n'
    [bad] = all_objects(tmp_path, "errors/processing-failed/")
    failures = [json.loads(x) for x in gzip.decompress(bad.read_bytes()).splitlines()]
    assert [base64.b64decode(f["rawData"]) for f in failures] == [b'{"two":\n"lines"}\n', b"no newline"]
    assert all(f["errorCode"] and f["errorMessage"] for f in failures)


def test_reader_lists_only_the_hours_asked_for(tmp_path):
    root = tmp_path / "archive"
    for hour in (1, 2, 5):
        when = dt.datetime(2026, 11, 28, hour, 30, tzinfo=dt.UTC)
        path = root / archive.object_key(archive.ARCHIVE_PREFIX, "s", when)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(f'{{"h":{hour}}}\n'.encode()))
    arc = archive.open_archive(tmp_path)
    keys = [o.key for o in arc.list(dt.datetime(2026, 11, 28, 3, tzinfo=dt.UTC),
                                    dt.datetime(2026, 11, 28, 5, 10, tzinfo=dt.UTC))]
    assert [k.split("/")[4] for k in keys] == ["02", "05"]  # the hour before start may hold later records
    assert list(archive.iter_records(arc, keys[1])) == [b'{"h":5}\n']
