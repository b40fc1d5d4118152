"""sql/redshift is the single source: it must parse as Redshift, and its parts must agree."""

from __future__ import annotations

import re

import pytest
import sqlglot
from sqlglot import exp

from clickstream.sqlmodel import ModelNames, duckdb_statements, fill, redshift_statements, split_statements

NAMES = ModelNames(schema="analytics", mv="events_stream", kinesis_schema="kds", stream_name="my-stream",
                   iam_role="arn:aws:iam::123456789012:role/redshift-streaming")


@pytest.mark.parametrize("phase", ["setup", "refresh"])
def test_every_redshift_statement_parses(phase):
    statements = redshift_statements(phase, NAMES)
    assert statements
    for stmt in statements:
        assert "${" not in stmt.sql, stmt.name
        tree = sqlglot.parse_one(stmt.sql, read="redshift")
        assert tree is not None, stmt.name


def test_placeholders_are_filled_and_unknown_ones_refused():
    setup = "\n".join(s.sql for s in redshift_statements("setup", NAMES))
    assert "CREATE EXTERNAL SCHEMA IF NOT EXISTS kds" in setup
    assert "IAM_ROLE 'arn:aws:iam::123456789012:role/redshift-streaming'" in setup
    assert 'FROM kds."my-stream"' in setup and "CREATE MATERIALIZED VIEW analytics.events_stream" in setup
    with pytest.raises(KeyError):
        fill("${nope}", NAMES)


def test_refresh_sends_refresh_first_then_merge_steps_in_order():
    names = [s.name for s in redshift_statements("refresh", NAMES)]
    assert names == ["refresh/010_refresh_view.sql#1", "refresh/020_set_target.sql#1",
                     "refresh/025_stage_pending.sql#1", "refresh/025_stage_pending.sql#2",
                     "refresh/030_merge_rejected.sql#1", "refresh/040_merge_events.sql#1",
                     "refresh/050_advance_watermark.sql#1"]


def _columns_of_create(sql: str) -> list[str]:
    tree = sqlglot.parse_one(sql, read="redshift")
    return [c.name for c in tree.find_all(exp.ColumnDef)]


def test_events_table_pending_view_and_merge_agree_on_columns():
    setup = {s.name: s.sql for s in redshift_statements("setup", NAMES)}
    events_cols = _columns_of_create(setup["setup/040_tables.sql#1"])
    merge = next(s.sql for s in redshift_statements("refresh", NAMES) if "040_merge_events" in s.name)
    insert = sqlglot.parse_one(merge, read="redshift")
    insert_cols = [c.name for c in insert.this.expressions]
    assert insert_cols == events_cols
    pending = sqlglot.parse_one(setup["setup/050_pending_view.sql#1"], read="redshift")
    pending_cols = set(pending.expression.named_selects)
    assert set(events_cols) - {"sequence_number", "loaded_at"} <= pending_cols


def test_segment_views_use_segment_column_names():
    views = next(s.sql for s in redshift_statements("setup", NAMES) if s.name == "setup/060_segment_views.sql#1")
    cols = sqlglot.parse_one(views, read="redshift").expression.named_selects
    for name in ("id", "anonymous_id", "user_id", "event", "event_text", "received_at", "sent_at",
                 "original_timestamp", "timestamp", "context_ip", "context_user_agent", "context_page_url",
                 "context_page_path", "context_page_title", "context_page_referrer", "context_library_name",
                 "context_library_version", "context_locale", "context_campaign_name", "source", "loaded_at"):
        assert name in cols


def test_setup_is_idempotent_on_duckdb():
    import duckdb

    conn = duckdb.connect()
    for _ in range(2):
        for stmt in duckdb_statements("setup", NAMES):
            conn.execute(stmt.sql)
    assert conn.execute("SELECT COUNT(*) FROM analytics.load_state").fetchone()[0] == 1


def test_redshift_only_statements_are_not_sent_to_duckdb():
    text = "\n".join(s.sql for s in duckdb_statements("setup", NAMES) + duckdb_statements("refresh", NAMES))
    assert "EXTERNAL SCHEMA" not in text and "REFRESH MATERIALIZED VIEW" not in text
    assert "'[^a-z0-9]+', '_', 'g')" in text, "Redshift replaces every match; DuckDB needs 'g'"


def test_split_statements_ignores_comment_only_parts():
    assert split_statements("-- a\nSELECT 1;\n-- only a comment;\nSELECT 2;\n") == ["-- a\nSELECT 1;",
                                                                                      "SELECT 2;"]


def test_sql_lists_agree_with_the_contract():
    """The model repeats two contract facts as SQL literals; this keeps them equal."""
    from clickstream import contract

    pending = next(s.sql for s in redshift_statements("setup", NAMES) if "050_pending_view" in s.name)
    types = re.search(r"\w\.type NOT IN \(([^)]*)\)", pending).group(1)
    assert [t.strip(" '") for t in types.split(",")] == list(contract.MESSAGE_TYPES)
    routes = re.search(r"o\.route IN \(([^)]*)\)", pending).group(1)
    short = [r for r in contract.SINGLE_ROUTES if len(r) == 1] + [r for r in contract.BATCH_ROUTES if len(r) == 1]
    assert sorted(r.strip(" '") for r in routes.split(",")) == sorted(short)


def test_file_markers_set_statement_flags(tmp_path, monkeypatch):
    from clickstream import sqlmodel

    folder = tmp_path / "redshift" / "refresh"
    folder.mkdir(parents=True)
    (folder / "010_plain.sql").write_text("SELECT 1;\n")
    (folder / "020_merge.sql").write_text(f"{sqlmodel.TRANSACTION}\nSELECT 2;\nSELECT 3;\n")
    (folder / "030_grants.sql").write_text(f"{sqlmodel.REDSHIFT_ONLY_MARKER}\nGRANT USAGE ON SCHEMA s TO ROLE r;\n")
    monkeypatch.setattr(sqlmodel, "SQL_DIR", tmp_path)
    statements = sqlmodel.redshift_statements("refresh", sqlmodel.ModelNames())
    assert [(s.name, s.transaction, s.redshift_only) for s in statements] == [
        ("refresh/010_plain.sql#1", False, False),
        ("refresh/020_merge.sql#1", True, False),
        ("refresh/020_merge.sql#2", True, False),
        ("refresh/030_grants.sql#1", False, True),
    ]
    assert [s.name for s in sqlmodel.duckdb_statements("refresh", sqlmodel.ModelNames())] == [
        "refresh/010_plain.sql#1", "refresh/020_merge.sql#1", "refresh/020_merge.sql#2"]
