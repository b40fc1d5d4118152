"""The local stream: chunks on disk, records (dense sequence numbers) to every reader."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import orjson
import pytest

from clickstream.contract import Record
from clickstream.ingest import RequestInfo, _envelope_frame, build_records
from clickstream.stream import STREAM_FILE, GroupCommitWriter, LocalStream, append, connect, pack


def _records(tag: str, n: int) -> list[Record]:
    return [Record(f"{tag}:{i}", f'{{"tag":"{tag}","i":{i}}}\n'.encode()) for i in range(n)]


def test_records_keep_order_keys_and_bytes_across_chunk_boundaries(tmp_path):
    stream = LocalStream(tmp_path)
    puts = [_records("a", 3), _records("b", 1), _records("c", 5)]
    for records in puts:
        stream.put(records)
    expected = [r for records in puts for r in records]

    got = stream.read(0, 100)
    assert [r.seq for r in got] == list(range(1, 10))
    assert [(r.partition_key, r.data) for r in got] == [(r.partition_key, r.data) for r in expected]
    for after in range(10):  # start inside a chunk, on its edge, past the end
        for limit in (1, 2, 4, 100):
            page = stream.read(after, limit)
            assert [r.seq for r in page] == list(range(after + 1, min(10, after + 1 + limit)))
            assert [r.data for r in page] == [r.data for r in expected[after : after + limit]]
    assert [r.seq for r in stream.iter_from(2, page=2)] == list(range(3, 10))
    assert stream.count() == stream.last_seq() == 9
    stream.set_checkpoint("warehouse", 4)
    assert stream.lag("warehouse") == 5 and stream.lag("nobody") is None
    stream.put([])
    assert stream.count() == 9


def test_a_commit_of_more_chunks_than_one_statement_takes_is_still_one_ordered_transaction(tmp_path):
    conn = connect(tmp_path / STREAM_FILE)
    puts = [_records(f"p{n}", 1 + n % 2) for n in range(300)]  # 300 chunks: three statements
    append(conn, [pack(records) for records in puts], arrival_ms=42)
    conn.close()
    got = LocalStream(tmp_path).read(0, 10_000)
    expected = [r for records in puts for r in records]
    assert [r.seq for r in got] == list(range(1, len(expected) + 1))
    assert [(r.partition_key, r.data, r.arrival_ms) for r in got] == [(r.partition_key, r.data, 42) for r in expected]


def test_concurrent_writers_get_distinct_dense_sequence_numbers(tmp_path):
    LocalStream(tmp_path).close()

    def writer(tag: str) -> None:
        stream = LocalStream(tmp_path)
        for n in range(40):
            stream.put(_records(f"{tag}{n}", 1 + n % 3))
        stream.close()

    threads = [threading.Thread(target=writer, args=(t,)) for t in "xyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = LocalStream(tmp_path).read(0, 10_000)
    total = 3 * sum(1 + n % 3 for n in range(40))
    assert [r.seq for r in got] == list(range(1, total + 1))
    assert len({r.partition_key for r in got}) == total


def test_a_stream_written_one_row_per_record_is_converted_on_open(tmp_path):
    conn = sqlite3.connect(tmp_path / STREAM_FILE)
    conn.executescript("""
        CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, partition_key TEXT NOT NULL,
                              data BLOB NOT NULL, arrival_ms INTEGER NOT NULL);
        CREATE TABLE checkpoints (consumer TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
        INSERT INTO checkpoints VALUES ('warehouse', 2, 0);
    """)
    old = [("r:0", b'{"n":0}\n', 1000), ("r:1", '{"é":"ü"}\n'.encode(), 1001), ("s:0", b"no newline", 1002)]
    conn.executemany("INSERT INTO records (partition_key, data, arrival_ms) VALUES (?, ?, ?)", old)
    conn.commit()
    conn.close()

    stream = LocalStream(tmp_path)
    assert [(r.seq, r.partition_key, r.data, r.arrival_ms) for r in stream.read()] == [
        (i + 1, *row) for i, row in enumerate(old)]
    assert stream.lag("warehouse") == 1
    stream.put(_records("new", 2))
    assert [r.seq for r in stream.read(3)] == [4, 5]
    tables = {row[0] for row in stream._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "records" not in tables


def test_group_commit_writer_answers_each_submit_after_its_records_are_stored(tmp_path):
    writer = GroupCommitWriter(tmp_path)
    writer.start()

    async def many() -> None:
        await asyncio.gather(*(writer.submit(_records(f"req{n}", 1 + n % 4)) for n in range(300)))

    try:
        asyncio.run(many())
    finally:
        writer.stop()
    got = LocalStream(tmp_path).read(0, 10_000)
    assert len(got) == sum(1 + n % 4 for n in range(300))
    assert [r.seq for r in got] == list(range(1, len(got) + 1))
    # each request's records stay together and in order
    assert [r.partition_key for r in got if r.partition_key.startswith("req7:")] == ["req7:0", "req7:1", "req7:2",
                                                                                        "req7:3"]
    assert writer.commits < 300  # concurrent submits shared commits


@pytest.mark.parametrize("route, body", [
    ("batch", b'{"batch":[{"type":"track","event":"A"},{"type":"page","name":"\\u00e9"}],"sentAt":"x",'
              b'"context":{"ip":"1.2.3.4"},"writeKey":"k"}'),
    ("t", b'{"type":"track","event":"B","userId":"u","properties":{"n":[1,2.5,null]},"writeKey":"k"}'),
])
def test_envelopes_are_the_bytes_of_the_envelope_object(route, body):
    info = RequestInfo(route, "4b0c7a1e-0000-4000-8000-000000000001", 1764331200123, "203.0.113.9", 'ua "q"')
    records = build_records(info, body, {"k": "web"})
    payload = orjson.loads(body)
    messages = payload["batch"] if route == "batch" else [payload]
    assert len(records) == len(messages)
    for index, (record, message) in enumerate(zip(records, messages, strict=True)):
        envelope = orjson.loads(record.data)
        assert envelope["index"] == index and envelope["message"] == message
        assert record.data == orjson.dumps(envelope, option=orjson.OPT_APPEND_NEWLINE)
        assert record.partition_key == f"{info.request_id}:{index}"


def test_envelope_frame_splices_between_the_request_fields():
    head, mid, tail = _envelope_frame({"v": 1, "source": "s", "receivedAt": 5, "requestId": "r", "ip": "i",
                                       "userAgent": None, "route": "t", "routeType": "track",
                                       "batch": orjson.Fragment(b"null")})
    assert head + b"7" + mid + b'{"a":1}' + tail == (
        b'{"v":1,"source":"s","receivedAt":5,"requestId":"r","index":7,"ip":"i","userAgent":null,"route":"t",'
        b'"routeType":"track","message":{"a":1},"batch":null}\n')


def test_processes_and_threads_opening_a_new_stream_at_once_all_succeed(tmp_path):
    """The collector, the consumer process and the CLI may open a stream file that does not exist
    yet at the same moment; switching it to WAL must not fail any of them with "database is locked"."""
    errors: list[Exception] = []
    for i in range(40):
        barrier = threading.Barrier(6)

        def open_it(folder=tmp_path / f"s{i}", barrier=barrier) -> None:
            barrier.wait()
            try:
                LocalStream(folder).close()
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    stream = LocalStream(tmp_path / "s0")
    try:
        assert stream._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        stream.close()
