"""A dbt project written against Segment's schema builds on the local warehouse after a simulated run."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import duckdb
import pytest
from segment.analytics import Client

from clickstream.simulate import Simulator
from tests.conftest import KEY

PROJECT = Path(__file__).resolve().parent / "dbt_project"
SPREAD = ("SELECT (SELECT MAX(loaded_at) FROM clickstream.events) > (SELECT loaded_at FROM "
          "clickstream.segment_load_state) AS behind")


class AnalyticsJsPages:
    """The SDK client, sending page calls as analytics.js does: url, path, title, referrer and search
    as page properties (as well as in context.page)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def __getattr__(self, name: str):
        return getattr(self.client, name)

    def page(self, **kwargs):
        page = (kwargs.get("context") or {}).get("page") or {}
        defaults = {k: page[k] for k in ("url", "path", "title", "referrer", "search") if k in page}
        kwargs["properties"] = {**defaults, **(kwargs.get("properties") or {})}
        return self.client.page(**kwargs)


@pytest.mark.slow  # a simulated run through the SDK and the local pipeline, then one `dbt build` (~10-20 s)
def test_dbt_models_over_pages_identifies_users_and_an_event_table_build(live_pipeline, tmp_path, monkeypatch):
    dbt_main = pytest.importorskip("dbt.cli.main")
    errors = []
    client = Client(KEY, host=live_pipeline.url, upload_size=100, max_queue_size=100_000,
                    on_error=lambda error, batch: errors.append(error))
    summary = Simulator(AnalyticsJsPages(client), users=40, seed=7).run(events=1500)
    client.flush()
    client.join()
    assert not errors
    live_pipeline.wait_loaded()
    deadline = time.monotonic() + 30
    while live_pipeline.query(SPREAD)[0]["behind"]:  # the Segment layer runs right after each merge
        assert time.monotonic() < deadline, "the Segment tables did not catch up"
        time.sleep(0.05)
    # The loader owns the file (and queries cannot write, not even CHECKPOINT): build on a copy of the
    # idle, caught-up file and its write-ahead log, which DuckDB replays when dbt opens the copy.
    warehouse = tmp_path / "copy.duckdb"
    shutil.copyfile(live_pipeline.data_dir / "warehouse.duckdb", warehouse)
    wal = live_pipeline.data_dir / "warehouse.duckdb.wal"
    if wal.exists():
        shutil.copyfile(wal, tmp_path / "copy.duckdb.wal")
    project = tmp_path / "dbt"
    shutil.copytree(PROJECT, project)
    monkeypatch.setenv("CLICKSTREAM_WAREHOUSE", str(warehouse))
    result = dbt_main.dbtRunner().invoke(["build", "--project-dir", str(project), "--profiles-dir", str(project),
                                          "--no-use-colors", "--quiet"])
    assert result.success, result.exception or [str(r.message) for r in (result.result or [])]
    with duckdb.connect(str(warehouse)) as con:  # dbt-duckdb keeps its (read-write) instance open
        pages = con.execute("SELECT COUNT(*), COUNT(DISTINCT anonymous_id) FROM web.pages").fetchone()
        sessions = con.execute("SELECT COUNT(*), SUM(page_views), COUNT(landing_url) FROM analytics.page_sessions"
                               ).fetchone()
        assert pages[0] == summary.by_type["page"] > 0
        assert sessions[1] == pages[0] and sessions[0] >= pages[1] and sessions[2] == sessions[0]
        orders = con.execute("SELECT SUM(orders), COUNT(email) FROM analytics.orders_by_user").fetchone()
        completed = con.execute("SELECT COUNT(*) FROM web.tracks WHERE event = 'order_completed' "
                                "AND user_id IS NOT NULL").fetchone()[0]
        assert orders[0] == completed
        stitched = con.execute("SELECT COUNT(*) FROM analytics.user_stitching").fetchone()[0]
        identified = con.execute("SELECT COUNT(DISTINCT anonymous_id) FROM web.identifies").fetchone()[0]
        assert stitched == identified > 0
        assert con.execute("SELECT SUM(viewers) FROM analytics.funnel").fetchone()[0] > 0
