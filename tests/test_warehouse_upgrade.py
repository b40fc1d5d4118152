"""A warehouse created by the first model (before versioned migrations) upgrades in place, data kept.

tests/fixtures/model_v0_duckdb.json holds that model's local statements exactly as it ran them
(generated from its sql/ and sqlmodel.py). The test builds a warehouse file with it, loads records
with its merge, then opens the file with today's Warehouse, which runs setup and so the migrations.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import pytest

from clickstream.contract import Record
from clickstream.sqlmodel import ModelNames, checksum, redshift_statements
from clickstream.stream import LocalStream
from clickstream.warehouse import Warehouse

V0 = json.loads((Path(__file__).parent / "fixtures" / "model_v0_duckdb.json").read_text())
NOW_MS = int(time.time() * 1000)


def envelope(message_id: str, event: str, **message) -> bytes:
    return json.dumps({"v": 1, "source": "web", "receivedAt": NOW_MS, "requestId": "r", "index": 0,
                       "route": "batch", "batch": {"context": {"locale": "fr-FR"}},
                       "message": {"type": "track", "event": event, "userId": "u", "messageId": message_id,
                                   **message}}).encode()


def build_v0_warehouse(path: Path) -> None:
    """What the first model did: setup, the loader's insert into the 7-column streaming table, merge."""
    conn = duckdb.connect(str(path))
    conn.execute("SET TimeZone = 'UTC'")
    for sql in V0["setup"]:
        conn.execute(sql)
    records = [envelope("old-1", "Signed Up", properties={"plan": "pro"}), envelope("old-2", "Paid"),
               b"not json at all"]
    stream = LocalStream(path.parent)  # the same records in the local stream, as the first loader read them
    stream.put([Record("k", data) for data in records])
    stream.close()
    for seq, data in enumerate(records, 1):
        text = data.decode()
        conn.execute(
            "INSERT INTO clickstream.clickstream_stream SELECT now(), 'k', 'local', lpad(?, 20, '0'), "
            "TIMESTAMP '2026-01-01 00:00:00' + to_seconds(?), TRY_CAST(? AS JSON), "
            "CASE WHEN TRY_CAST(? AS JSON) IS NULL THEN encode(?) END",
            [str(seq), seq, text, text, text])
    for sql in V0["refresh"]:
        conn.execute(sql)
    conn.close()


def rows(conn_or_wh, sql: str) -> list[tuple]:
    if isinstance(conn_or_wh, Warehouse):
        return conn_or_wh.query(sql)[1]
    return conn_or_wh.execute(sql).fetchall()


def test_first_model_warehouse_upgrades_with_its_data(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    build_v0_warehouse(path)
    conn = duckdb.connect(str(path))
    old_events = rows(conn, "SELECT message_id, source, event_text, properties, received_at FROM clickstream.events "
                            "ORDER BY 1")
    old_rejected = rows(conn, 'SELECT reason, raw_format, "raw", raw_hash FROM clickstream.rejected')
    conn.close()
    assert [e[0] for e in old_events] == ["old-1", "old-2"] and len(old_rejected) == 1

    wh = Warehouse(path)
    migrations = [s.migration for s in redshift_statements("setup", wh.names) if s.migration and not s.redshift_only]
    assert wh.applied_migrations() == sorted(migrations)
    assert rows(wh, "SELECT message_id, source, event_text, properties, received_at FROM clickstream.events "
                    "ORDER BY 1") == old_events
    # `raw` is now raw_record, with the same contents; the new columns exist
    assert rows(wh, "SELECT reason, raw_format, raw_record, raw_hash FROM clickstream.rejected") == old_rejected
    assert rows(wh, "SELECT context, batch_context FROM clickstream.events") == [(None, None), (None, None)]
    assert rows(wh, "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'pending'") == [(0,)]

    # the upgraded warehouse keeps merging: a copy of an old event is a duplicate, a new one is added
    stream = LocalStream(tmp_path)
    stream.put([Record("k", envelope("old-1", "Signed Up")), Record("k", envelope("new-1", "Upgraded"))])
    wh.load_from(stream)
    stream.close()
    assert [r[0] for r in rows(wh, "SELECT message_id FROM clickstream.events ORDER BY 1")] == [
        "new-1", "old-1", "old-2"]
    [(ctx, batch_ctx)] = rows(wh, "SELECT context, batch_context FROM clickstream.events WHERE message_id = 'new-1'")
    assert ctx is None and json.loads(batch_ctx) == {"locale": "fr-FR"}
    assert rows(wh, "SELECT COUNT(*) FROM clickstream.tracks") == [(3,)]
    wh.close()

    # opening again applies nothing twice
    wh = Warehouse(path)
    assert wh.applied_migrations() == sorted(migrations)
    assert rows(wh, "SELECT COUNT(*) FROM clickstream.events") == [(3,)]
    wh.close()


def test_a_migration_edited_after_it_was_applied_stops_setup(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    Warehouse(path).close()
    conn = duckdb.connect(str(path))
    conn.execute("UPDATE clickstream.schema_migrations SET checksum = 'edited' WHERE name = 'm002_rename_raw#1'")
    conn.close()
    with pytest.raises(RuntimeError, match="m002_rename_raw#1 was changed after it was applied"):
        Warehouse(path)


def test_redshift_setup_runs_migrations_through_the_procedure_once():
    """On Redshift the guard is the apply_migration procedure: each migration statement is a CALL with
    its name, checksum and text; the streaming view is dropped when its definition changed."""
    setup = redshift_statements("setup", ModelNames())
    calls = [s for s in setup if s.migration]
    assert calls and all(s.sql.startswith("CALL clickstream.apply_migration('" + s.migration + "', '" + s.checksum)
                         for s in calls)
    rename = next(s for s in calls if s.migration == "m002_rename_raw#1")
    assert 'RENAME COLUMN "raw" TO raw_record' in rename.sql
    names = [s.name for s in setup]
    assert names.index("setup/060_streaming_view_check.sql#1") + 1 == names.index("setup/070_streaming_view.sql#1")
    check = setup[names.index("setup/060_streaming_view_check.sql#1")].sql
    view = setup[names.index("setup/070_streaming_view.sql#1")].sql
    assert f"drop_streaming_view_if_changed('{checksum(view)}')" in check
    # views are dropped before the migrations touch the tables and created after
    assert names.index("setup/030_drop_views.sql#1") < min(names.index(s.name) for s in calls)
    assert names.index("setup/080_segment_views.sql#1") > max(names.index(s.name) for s in calls)
