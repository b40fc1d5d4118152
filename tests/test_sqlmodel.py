"""sql/redshift is the single source: it must parse as Redshift, and its parts must agree."""

from __future__ import annotations

import re

import pytest
import sqlglot
from sqlglot import exp

from clickstream import redshift_rules
from clickstream.sqlmodel import (
    ModelNames,
    duckdb_statements,
    model_widths,
    redshift_statements,
    split_statements,
)

NAMES = ModelNames(schema="analytics", mv="events_stream", kinesis_schema="kds", stream_name="my-stream",
                   iam_role="arn:aws:iam::123456789012:role/redshift-streaming")


@pytest.mark.parametrize("phase", ["setup", "refresh"])
def test_every_redshift_statement_passes_the_strict_checks(phase):
    """Parses with sqlglot's Redshift dialect (or is a known command form), no reserved word as an
    identifier, valid VARCHAR widths, DATEADD only with a literal INTEGER interval."""
    statements = redshift_statements(phase, NAMES)
    assert statements
    for stmt in statements:
        assert "${" not in stmt.sql, stmt.name
        violations = redshift_rules.lint(stmt.name, stmt.sql)
        if stmt.body:  # a migration: its statement is checked too, not only the CALL around it
            violations += redshift_rules.lint(stmt.name, stmt.body)
        assert violations == [], "\n".join(map(str, violations))


@pytest.mark.parametrize("sql,expected", [
    ("SELECT raw FROM t", "reserved word used as identifier: raw"),
    ("CREATE TABLE t (tag VARCHAR(10))", "reserved word used as identifier: tag"),
    ('SELECT "user" FROM t', 'reserved word used as identifier: "user"'),
    ("CALL s.p('x', raw)", "reserved word used as identifier: raw"),
    ("SELECT DATEADD(ms, t.received_ms, t.ts) FROM t", "DATEADD interval t.received_ms is not a literal INTEGER"),
    ("SELECT DATEADD(ms, 1800000000000, ts) FROM t", "DATEADD interval 1800000000000 is not a literal INTEGER"),
    ("CREATE TABLE t (a VARCHAR(65536))", "VARCHAR(65536) for a: width must be 1..65535 bytes"),
    ("SELEC 1 FROM", "does not parse as Redshift"),
    # PartiQL: an unquoted attribute is folded to lower case and never finds userId
    ("SELECT r.d.message.userId FROM r", "PartiQL attribute userId in r.d.message.userId must be double-quoted"),
    ('SELECT r.d."a"."b"."c"."d".userId FROM r', "PartiQL attribute userId"),
    ('SELECT r.d."a.b", r.d."x" FROM r', "PartiQL attribute 'a.b': the model reads only attributes named like"),
    # a CTAS column of unknown width (a SUPER cast) would be VARCHAR(256): page URLs are up to 4 KB
    ('CREATE TEMP TABLE s AS SELECT r.d."url"::VARCHAR AS url FROM r', "give VARCHAR a length"),
])
def test_strict_checks_refuse_what_redshift_refuses(sql, expected):
    assert any(expected in v.message for v in redshift_rules.lint("t", sql)), redshift_rules.lint("t", sql)
    assert redshift_rules.lint("t", 'SELECT "timestamp", DATEADD(ms, 5, ts), r.d."message"."userId" FROM t') == []


@pytest.mark.parametrize("sql", [
    "SELECT JSON_EXTRACT_PATH_TEXT(r.raw_json, 'message', 'userId') FROM r",
    "SELECT JSON_PARSE(r.message_text) FROM r",
    "SELECT CASE WHEN CAN_JSON_PARSE(r.t) THEN 1 END FROM r",
])
def test_the_merge_may_not_parse_json_text(sql):
    """One parse per record (the streaming view's JSON_PARSE): a merge statement that parses JSON
    text again is refused; the same SQL in setup is not this rule's concern."""
    assert any("navigates the SUPER record" in v.message for v in redshift_rules.lint("refresh/x.sql", sql))
    assert not any("navigates the SUPER record" in v.message for v in redshift_rules.lint("setup/x.sql", sql))


def test_the_staging_step_reads_the_record_through_paths_only():
    staging = next(s.sql for s in redshift_statements("refresh", NAMES) if "030_stage_events" in s.name)
    tree = redshift_rules.parse(staging)
    paths = [".".join(p.name for p in path) for path in redshift_rules.super_paths(tree)]
    assert {"r.d.message.userId", "r.d.receivedAt", "c.mc.page", "o.page.url"} <= set(paths)
    # every path starts at the parsed record (d; payload only for the id of one too large to
    # serialise) or at an object navigated from it
    assert {p.split(".")[1] for p in paths} == {"d", "payload", "mc", "bc", "page", "library", "campaign"}


def test_reserved_word_list_is_the_documented_one():
    words = redshift_rules.RESERVED_WORDS
    assert len(words) == 156  # as listed on r_pg_keywords
    assert {"RAW", "OFFSET", "OPEN", "NEW", "OLD", "TAG", "TIMESTAMP", "USER", "SNAPSHOT", "SYSTEM", "PARTITION",
            "PERCENT", "TOP", "WALLET"} <= words


def test_final_columns_use_no_reserved_word_but_timestamp():
    """After the migrations, only Segment's "timestamp" is a reserved word (raw became raw_record)."""
    columns = {c for cols in model_widths().values() for c in cols}  # VARCHAR columns, renames applied
    for stmt in redshift_statements("setup", NAMES):
        sql = stmt.body or stmt.sql
        if re.search(r"^(CREATE|ALTER) TABLE", sql, re.M):
            columns |= {c.name for c in sqlglot.parse_one(sql, read="redshift").find_all(exp.ColumnDef)}
    columns -= {"raw"} if "raw_record" in model_widths()["rejected"] else set()
    assert {c.upper() for c in columns} & redshift_rules.RESERVED_WORDS == {"TIMESTAMP"}


def test_refresh_sends_refresh_alone_then_the_merge_as_one_transaction():
    statements = redshift_statements("refresh", NAMES)
    assert [(s.name, s.transaction) for s in statements] == [
        ("refresh/010_refresh_view.sql#1", False), ("refresh/015_session.sql#1", True),
        ("refresh/015_session.sql#2", True), ("refresh/020_stage_new_records.sql#1", True),
        ("refresh/030_stage_events.sql#1", True),
        ("refresh/040_stage_recent_keys.sql#1", True), ("refresh/050_merge_rejected.sql#1", True),
        ("refresh/060_merge_events.sql#1", True), ("refresh/070_advance_watermark.sql#1", True)]
    merge = "\n".join(s.sql for s in statements[1:])
    # TEMP staging (lives as long as the transaction's session), literal bounds through procedures
    assert "CREATE TEMP TABLE staging" in merge and "CALL analytics.stage_new_records()" in merge
    assert f"CALL analytics.stage_recent_keys({NAMES.dedup_window_days})" in merge
    assert "load_state" not in statements[4].sql, "the staging step must not join the watermark table"
    # the batch's session reads quoted attributes with their case before any path is navigated, and
    # checks that it does (else every record would be rejected while the watermark moved on)
    assert statements[1].sql.endswith("SET enable_case_sensitive_identifier TO true;")
    assert statements[2].sql.endswith("CALL analytics.assert_case_sensitive_paths();")
    setup = "\n".join(s.sql for s in redshift_statements("setup", NAMES))
    assert "PROCEDURE analytics.assert_case_sensitive_paths()" in setup and 't.j."aB"' in setup
    assert statements[1].redshift_only and statements[2].redshift_only
    assert not any("SET enable_case" in s.sql for s in duckdb_statements("refresh", NAMES))


def _columns_of_create(sql: str) -> list[str]:
    tree = sqlglot.parse_one(sql, read="redshift")
    return [c.name for c in tree.find_all(exp.ColumnDef)]


def test_events_table_staging_and_merge_agree_on_columns():
    setup = {s.name: s.body or s.sql for s in redshift_statements("setup", NAMES)}
    events_cols = _columns_of_create(setup["setup/050_m001_initial_tables.sql#1"])
    events_cols += [c for name, sql in setup.items() if "m003" in name and ".events " in sql
                    for c in _columns_of_create(sql)]
    assert events_cols[-2:] == ["context", "batch_context"]
    merge = next(s.sql for s in redshift_statements("refresh", NAMES) if "060_merge_events" in s.name)
    insert = sqlglot.parse_one(merge, read="redshift")
    insert_cols = [c.name for c in insert.this.expressions]
    assert insert_cols == events_cols
    staging = next(s.sql for s in redshift_statements("refresh", NAMES) if "030_stage_events" in s.name)
    staging_cols = set(sqlglot.parse_one(staging, read="redshift").expression.named_selects)
    assert set(events_cols) - {"sequence_number", "loaded_at"} <= staging_cols


def test_segment_views_use_segment_column_names():
    views = next(s.sql for s in redshift_statements("setup", NAMES) if s.name == "setup/080_segment_views.sql#1")
    cols = sqlglot.parse_one(views, read="redshift").expression.named_selects
    for name in ("id", "anonymous_id", "user_id", "event", "event_text", "received_at", "sent_at",
                 "original_timestamp", "timestamp", "context_ip", "context_user_agent", "context_page_url",
                 "context_page_path", "context_page_title", "context_page_referrer", "context_library_name",
                 "context_library_version", "context_locale", "context_campaign_name", "source", "loaded_at"):
        assert name in cols


def test_setup_is_idempotent_on_duckdb(tmp_path):
    from clickstream.warehouse import Warehouse

    for _ in range(2):
        wh = Warehouse(tmp_path / "w.duckdb", NAMES)
        assert wh.query("SELECT COUNT(*) FROM analytics.load_state")[1] == [(1,)]
        applied = wh.applied_migrations()
        wh.close()
    assert applied == sorted(s.migration for s in redshift_statements("setup", NAMES)
                             if s.migration and not s.redshift_only)


def test_redshift_only_statements_are_not_sent_to_duckdb():
    text = "\n".join(s.sql for s in duckdb_statements("setup", NAMES) + duckdb_statements("refresh", NAMES))
    assert "EXTERNAL SCHEMA" not in text and "REFRESH MATERIALIZED VIEW" not in text
    assert "'[^[:alnum:]]+', '_', 'g')" in text, "Redshift replaces every match; DuckDB needs 'g'"
    assert "'\\1_\\2', 'g')" in text  # the event slug's word breaks: every match too


def test_split_statements_ignores_comment_only_parts():
    assert split_statements("-- a\nSELECT 1;\n-- only a comment;\nSELECT 2;\n") == ["-- a\nSELECT 1;",
                                                                                      "SELECT 2;"]


def test_sql_lists_agree_with_the_contract():
    """The model repeats two contract facts as SQL literals; this keeps them equal."""
    from clickstream import contract

    pending = next(s.sql for s in redshift_statements("refresh", NAMES) if "030_stage_events" in s.name)
    types = re.search(r"\w\.type NOT IN \(([^)]*)\)", pending).group(1)
    assert [t.strip(" '") for t in types.split(",")] == list(contract.MESSAGE_TYPES)
    routes = re.search(r"\w\.route IN \(([^)]*)\)", pending).group(1)
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


@pytest.mark.parametrize("width", [1, 3, 64, 100, 1024])
def test_truncation_function_is_byte_safe_and_matches_the_reference(width):
    """f_clickstream_truncate (the Redshift SQL UDF, run as the DuckDB macro made from it) never
    exceeds n bytes, never splits a character, and keeps n characters of ASCII."""
    import duckdb

    conn = duckdb.connect()
    setup = duckdb_statements("setup", NAMES)
    conn.execute(next(s.sql for s in setup if s.name.startswith("setup/047_functions")))
    samples = ["", "a" * 2000, "é" * 900, "日本語" * 500, "😀" * 400, "a" + "é" * 700, "ab😀" * 300, "x" * width]
    for text in samples:
        [(out,)] = conn.execute("SELECT f_clickstream_truncate(?, ?)", [text, width]).fetchall()
        assert out == redshift_rules.truncate_utf8(text, width)
        assert len(out.encode()) <= width and text.startswith(out)
        if text.isascii():
            assert out == text[:width]


def test_the_record_size_limit_in_the_sql_is_the_one_the_local_loader_applies():
    """The streaming view and the merge write the 64,000-byte limit as a literal (Redshift SQL has no
    constants); the local loader applies redshift_rules.MAX_RECORD_BYTES. They must be one number."""
    from clickstream.redshift_rules import MAX_RECORD_BYTES
    from clickstream.sqlmodel import SQL_DIR

    view = (SQL_DIR / "redshift" / "setup" / "070_streaming_view.sql").read_text()
    stage = (SQL_DIR / "redshift" / "refresh" / "030_stage_events.sql").read_text()
    limits = re.findall(r"OCTET_LENGTH\(kinesis_data\) <= (\d+)", view) + re.findall(r"record_bytes > (\d+)", stage)
    assert len(limits) == 3 and {int(n) for n in limits} == {MAX_RECORD_BYTES}


def test_the_lambdas_default_names_are_the_models():
    """The Segment-tables Lambda cannot bundle sqlmodel (sqlglot), so SchemaNames repeats three of
    ModelNames' defaults: held equal here."""
    from clickstream.segment_tables import SchemaNames

    model, lam = ModelNames(), SchemaNames()
    assert (lam.schema, lam.kinesis_schema, lam.reader_role) == (model.schema, model.kinesis_schema,
                                                                 model.reader_role)


def test_setup_engine_checks_expect_what_the_local_model_computes(tmp_path):
    """setup/048 checks, on the Redshift it deploys to, behaviours the merge relies on and the
    documentation does not state; each expected value is what the same SQL gives on the local model
    (transpiled to DuckDB), so the two engines are held to one answer."""
    from clickstream.sqlmodel import transpile
    from clickstream.warehouse import Warehouse

    check = next(s.sql for s in redshift_statements("setup", NAMES) if s.name == "setup/048_engine_checks.sql#1")
    body = check.split("BEGIN", 1)[1]
    expected = r"(CAST\('[^']*' AS TIMESTAMP\)|'[^']*')"
    probes = re.findall(r"SELECT (.*?) INTO (\w+)(.*?);\s*IF \2 IS NULL OR \2 <> " + expected, body, re.S)
    assert [p[1] for p in probes] == ["slug", "object_text", "at_time", "serialised"]
    wh = Warehouse(tmp_path / "w.duckdb")
    for expression, name, source, expected in probes:
        [(got, want)] = wh.conn.execute(transpile(f"SELECT {expression}, {expected} {source}")).fetchall()
        assert got == want, (name, got, want)
    assert f"CALL {NAMES.schema}.check_engine();" in [s.sql for s in redshift_statements("setup", NAMES)]
    wh.close()


def test_first_character_type_tests_agree_with_the_local_json_typeof(tmp_path):
    """The transpiler's JSON_TYPEOF(path) = '<type>' rewrite and the super_typeof macro encode the
    same first-character rule; both must give DuckDB's own json_type for values json_extract writes."""
    from clickstream.sqlmodel import _JSON_TYPEOF_FIRST_CHARACTERS
    from clickstream.warehouse import Warehouse

    wh = Warehouse(tmp_path / "w.duckdb")
    samples = ('{"o":{"a":1},"a":[1],"s":"x","t":true,"f":false,"n":null,'
               '"i":-5,"d":0.5,"e":1e5,"u":18446744073709551615}')
    for key in "oastfnideu":
        [(value, exact, macro)] = wh.conn.execute(
            f"SELECT v, json_typeof(v), super_typeof(v) FROM (SELECT json_extract(?::JSON, '$.{key}') AS v)",
            [samples]).fetchall()
        assert exact == macro, (key, value)
        assert value[0] in _JSON_TYPEOF_FIRST_CHARACTERS[exact], (key, value)
    wh.close()
