"""How the local loader feeds DuckDB: load sizes, progress, and the benchmark measuring the same."""

from __future__ import annotations

import json
from pathlib import Path

from clickstream.contract import Record
from clickstream.stream import LocalStream
from clickstream.warehouse import LOAD_BATCH, Warehouse

T0 = 1_764_460_800_000  # 2025-11-30T00:00:00Z


def _envelope(i: int) -> bytes:
    return json.dumps({"v": 1, "source": "web", "receivedAt": T0 + i, "requestId": "r", "index": i,
                       "route": "batch", "batch": {},
                       "message": {"type": "track", "event": "E", "userId": "u", "messageId": f"m-{i}"}}).encode()


def _put(data_dir: Path, first: int, count: int) -> None:
    stream = LocalStream(data_dir)
    try:
        stream.put([Record("k", _envelope(i)) for i in range(first, first + count)])
    finally:
        stream.close()


def test_last_loaded_seq_after_loads_a_rolled_back_refresh_a_hand_written_row_and_reopening(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    assert wh.last_loaded_seq() == 0
    _put(tmp_path, 0, 3)
    stream = LocalStream(tmp_path)
    assert wh.load_from(stream) == 3 and wh.last_loaded_seq() == 3
    _put(tmp_path, 3, 2)
    assert wh.load_from(stream) == 2 and wh.last_loaded_seq() == 5  # the latest refresh holds seq 4 and 5
    wh._refresh_time()  # a refresh whose load was rolled back: no row has its refresh_time
    assert wh.last_loaded_seq() == 5
    # a row written by another hand after the latest load (as tests and tools do)
    wh.conn.execute("INSERT INTO clickstream.clickstream_stream (shard_id, sequence_number, refresh_time) "
                    "VALUES ('local', lpad('9', 20, '0'), now()::TIMESTAMP)")
    assert wh.last_loaded_seq() == 9
    wh.close()
    stream.close()
    wh = Warehouse(tmp_path / "w.duckdb")
    assert wh.last_loaded_seq() == 9
    wh.close()


def test_a_catch_up_load_is_written_to_the_file_not_to_the_wal(tmp_path):
    """A load of LOAD_BATCH records fills whole row groups, which DuckDB writes into the database
    file at commit: nothing is left in the WAL for a checkpoint to write a second time."""
    _put(tmp_path, 0, LOAD_BATCH + 10)
    wh = Warehouse(tmp_path / "w.duckdb")
    stream = LocalStream(tmp_path)
    records = stream.read(0, LOAD_BATCH)
    assert len(records) == LOAD_BATCH
    wal = tmp_path / "w.duckdb.wal"
    wh.conn.execute("CHECKPOINT")
    wh.load(records)
    assert wh.query("SELECT COUNT(*) FROM clickstream.events")[1] == [(LOAD_BATCH,)]
    assert not wal.exists() or wal.stat().st_size < 1_000_000  # row-group pointers, not 100+ MB of rows
    # a smaller load (what arrives between two polls once caught up) goes to the WAL as usual
    assert wh.load_from(stream) == 10
    assert wh.query("SELECT COUNT(*) FROM clickstream.events")[1] == [(LOAD_BATCH + 10,)]
    wh.close()
    stream.close()


def test_the_load_benchmark_runs_the_loader_as_the_local_loader_does():
    from clickstream import bench

    figures = bench.bench_loader(2_000)
    assert figures.batch == LOAD_BATCH
    assert figures.rows_in_events == figures.events == figures.segment_rows_in_tracks == 2_000
    assert 0 <= figures.checkpoint_seconds <= figures.seconds  # the final checkpoint is timed too


def test_streaming_table_keeps_records_zstd_compressed(tmp_path):
    """The records are most of what the loader writes; zstd keeps them at ~40% of the default
    string compression's size, and the loads got ~10% faster for it (docs/benchmarks.md)."""
    _put(tmp_path, 0, LOAD_BATCH)
    wh = Warehouse(tmp_path / "w.duckdb")
    stream = LocalStream(tmp_path)
    assert wh.load_from(stream) == LOAD_BATCH
    wh.conn.execute("CHECKPOINT")
    kinds = {r[0] for r in wh.conn.execute(
        "SELECT compression FROM pragma_storage_info('clickstream.clickstream_stream') "
        "WHERE column_name = 'payload' AND segment_type <> 'VALIDITY'").fetchall()}
    assert kinds == {"ZSTD"}, kinds
    stream.close()
    wh.close()
