"""Queries cannot write or reconfigure the warehouse, whatever their SQL says.

The syntactic check (``check_read_only``) is only a friendly early error; these tests go around it
and send each attack straight to where queries run: the loader process of a live pipeline, and a
warehouse opened in process. The data, the load state and the settings must be unchanged after.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from clickstream.collector import ADMIN_QUERY_PATH, ADMIN_TOKEN_HEADER, Collector
from clickstream.stream import GroupCommitWriter
from clickstream.warehouse import QueryFailed, Warehouse, lock_down
from tests.conftest import KEY, WRITE_KEYS

ATTACKS = [
    # a data-modifying CTE under a SELECT root: deletes every event
    "WITH g AS (DELETE FROM clickstream.events RETURNING *) SELECT count(*) FROM g",
    # forges rows (each event copied)
    "WITH g AS (INSERT INTO clickstream.events SELECT * FROM clickstream.events RETURNING 1) SELECT count(*) FROM g",
    "INSERT INTO clickstream.events SELECT * FROM clickstream.events",
    # moves the merge's watermark back: the next merge would redo or skip work
    "WITH g AS (UPDATE clickstream.load_state SET watermark = NULL RETURNING *) SELECT * FROM g",
    "UPDATE clickstream.load_state SET watermark = NULL",
    # starves the loader, or changes what it computes
    "PRAGMA memory_limit='1MB'",
    "SET memory_limit = '1MB'",
    "SET threads = 64",
    "SET TimeZone = 'Pacific/Kiritimati'",
    "RESET checkpoint_threshold",
    # several statements, and transaction control
    "SELECT 1; DELETE FROM clickstream.events",
    "COMMIT",
    # beyond the warehouse: files and other databases
    "COPY (SELECT * FROM clickstream.events) TO '{tmp}/leak.csv'",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "SELECT * FROM read_text('/etc/hostname')",
    "CREATE MACRO clickstream.m() AS 1",
    "SELECT nextval('clickstream.no_such_seq')",
]
SNAPSHOT = {
    "events": "SELECT message_id, type, event FROM clickstream.events ORDER BY message_id",
    "load_state": "SELECT * FROM clickstream.load_state ORDER BY name",
    "settings": "SELECT name, value FROM duckdb_settings() WHERE name IN "
                "('memory_limit', 'threads', 'TimeZone', 'checkpoint_threshold', 'enable_external_access') "
                "ORDER BY name",
    "databases": "SELECT database_name FROM duckdb_databases() ORDER BY 1",
}


def snapshot(query) -> dict[str, list]:
    return {name: query(sql)[1] for name, sql in SNAPSHOT.items()}


def test_attacks_sent_to_the_loader_process_change_nothing(live_pipeline, tmp_path):
    batch = [{"type": "track", "event": f"E{i}", "userId": "u", "messageId": f"guard-{i}"} for i in range(5)]
    r = httpx.post(live_pipeline.url + "/v1/batch", json={"batch": batch, "writeKey": KEY}, timeout=10)
    assert r.status_code == 200
    live_pipeline.wait_loaded()
    warehouse = live_pipeline.pipeline.warehouse
    before = snapshot(warehouse.query)
    assert [row[0] for row in before["events"]] == [f"guard-{i}" for i in range(5)]
    for attack in ATTACKS:
        with pytest.raises(QueryFailed) as failed:
            warehouse.query(attack.format(tmp=tmp_path))
        assert not failed.value.server_fault, attack  # the query's fault: answered 400, not 5xx
        assert snapshot(warehouse.query) == before, attack
    assert not (tmp_path / "leak.csv").exists() and not (tmp_path / "other.duckdb").exists()
    # and the loader still works with its own settings: a new event lands
    r = httpx.post(live_pipeline.url + "/v1/track", json={"type": "track", "event": "After", "userId": "u",
                                                            "messageId": "guard-after", "writeKey": KEY})
    assert r.status_code == 200
    live_pipeline.wait_loaded()
    assert live_pipeline.query("SELECT count(*) AS n FROM clickstream.events")[0]["n"] == 6


def test_attacks_through_the_admin_endpoint_get_400_and_change_nothing(live_pipeline):
    batch = [{"type": "track", "event": "E", "userId": "u", "messageId": "admin-1"}]
    assert httpx.post(live_pipeline.url + "/v1/batch", json={"batch": batch, "writeKey": KEY}).status_code == 200
    live_pipeline.wait_loaded()
    app = live_pipeline.app
    before = snapshot(live_pipeline.pipeline.warehouse.query)
    for attack in ATTACKS[:6]:
        r = httpx.post(live_pipeline.url + ADMIN_QUERY_PATH, json={"sql": attack},
                       headers={ADMIN_TOKEN_HEADER: app.admin_token}, timeout=10)
        assert r.status_code == 400 and r.json()["code"] == "invalid_request", (attack, r.text)
        assert "retry-after" not in r.headers
    assert snapshot(live_pipeline.pipeline.warehouse.query) == before


def test_an_offline_query_cannot_touch_files(tmp_path):
    from clickstream.query import QueryError, run_query

    Warehouse.in_dir(tmp_path).close()
    (tmp_path / "secret.csv").write_text("a\n1\n")
    with pytest.raises(QueryError, match="disabled by configuration"):
        run_query(tmp_path, f"SELECT * FROM read_csv('{tmp_path}/secret.csv')")
    with pytest.raises(QueryError, match="read-only"):  # refused early already; the engine would too
        run_query(tmp_path, f"COPY (SELECT 1) TO '{tmp_path}/out.csv'")
    assert not (tmp_path / "out.csv").exists()


def test_out_of_memory_is_a_server_fault_not_a_bad_query(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    try:
        wh.conn.execute("SET memory_limit = '32MB'")
        lock_down(wh.conn)
        with pytest.raises(QueryFailed) as failed:
            wh.query("SELECT max(len(l)) FROM (SELECT list(range) AS l FROM range(50000000))")
        assert failed.value.server_fault and "memory" in str(failed.value).lower()
        with pytest.raises(QueryFailed) as failed:
            wh.query("SELECT nope FROM clickstream.events")
        assert not failed.value.server_fault and "nope" in str(failed.value)
    finally:
        wh.close()


@pytest.mark.parametrize("server_fault,status,code", [(True, 503, "unavailable"), (False, 400, "invalid_request")])
def test_admin_query_answers_5xx_for_server_faults(tmp_path, server_fault, status, code):
    def query(sql: str):
        raise QueryFailed("Out of Memory Error: failed to allocate" if server_fault else "Binder Error: nope",
                          server_fault=server_fault)

    app = Collector(WRITE_KEYS, GroupCommitWriter(tmp_path), query=query, admin_token="t" * 24)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://local") as client:
            return await client.post(ADMIN_QUERY_PATH, json={"sql": "SELECT 1"},
                                     headers={ADMIN_TOKEN_HEADER: "t" * 24})

    r = asyncio.run(call())
    assert r.status_code == status and r.json()["code"] == code
    assert r.json()["message"].startswith("query failed: ")
    assert ("retry-after" in r.headers) == server_fault
