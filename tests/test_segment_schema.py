"""Segment's naming, flattening and typing rules (clickstream.segment_schema), without a database."""

from __future__ import annotations

import pytest
import sqlglot

from clickstream import segment_schema as ss


# The cases of go-snakecase's own test table (snake_test.go), plus the examples of Segment's docs.
@pytest.mark.parametrize(("name", "slug"), [
    ("sample text", "sample_text"),
    ("sample-text", "sample_text"),
    ("sample_text", "sample_text"),
    ("sample___text", "sample_text"),
    ("sampleText", "sample_text"),
    ("inviteYourCustomersAddInvites", "invite_your_customers_add_invites"),
    ("sample 2 Text", "sample_2_text"),
    ("   sample   2    Text   ", "sample_2_text"),
    ("   $#$sample   2    Text   ", "sample_2_text"),
    ("SAMPLE 2 TEXT", "sample_2_text"),
    ("___$$Base64Encode", "base64_encode"),
    ("FOO:BAR$BAZ", "foo_bar_baz"),
    ("FOO#BAR#BAZ", "foo_bar_baz"),
    ("something.com", "something_com"),
    ("$something%", "something"),
    ("•¶§ƒ˚foo˙∆˚¬", "foo"),
    ("CStringRef", "cstring_ref"),
    ("Order Completed", "order_completed"),
    ("productViewed", "product_viewed"),
    ("Signed Up", "signed_up"),
    ("accountType", "account_type"),
    ("Éclair Ordered", "clair_ordered"),  # non-ASCII bytes separate words, like the Go code
])
def test_snakecase_matches_go_snakecase(name, slug):
    assert ss.snakecase(name) == slug


def test_event_table_names():
    assert ss.event_table("Order Completed") == "order_completed"
    assert ss.event_table("productViewed") == "product_viewed"
    # a slug naming a standard table gets a leading underscore, which no slug can have
    assert ss.event_table("Pages") == "_pages" and ss.event_table("users") == "_users"
    assert ss.event_table("???") is None  # no letter or digit: the event is in `tracks` only
    long = ss.event_table("é" + "x" * 300)
    assert len(long.encode()) <= ss.MAX_IDENTIFIER_BYTES


def test_column_names_flatten_with_underscores():
    assert ss.column_name(("address", "city")) == "address_city"
    assert ss.column_name(("app", "version"), "context") == "context_app_version"
    assert ss.column_name(("productId", "SKU")) == "product_id_sku"
    assert ss.column_name(("%%",)) is None


def test_schema_per_source_avoids_pipeline_and_system_schemas():
    assert ss.schema_name("web") == "web"
    assert ss.schema_name("iOS App") == "i_os_app"
    assert ss.schema_name("clickstream", taken=["clickstream"]) == "clickstream_source"
    assert ss.schema_name("public") == "public_source" and ss.schema_name("pg_x") == "pg_x_source"


def test_flatten_objects_arrays_nulls_and_truncation():
    flat = ss.flatten({"address": {"city": "Paris", "geo": {"lat": 1.5}}, "tags": ["a", "b"], "gone": None,
                       "productId": "p1", "long": "é" * 600})
    assert flat == {"address_city": "Paris", "address_geo_lat": 1.5, "tags": '["a","b"]', "product_id": "p1",
                    "long": "é" * ss.STRING_CHARS}
    assert ss.flatten({"version": "1.0.0"}, "context") == {"context_version": "1.0.0"}


def test_kinds_and_widening():
    assert ss.kind_of(True) is ss.Kind.BOOLEAN and ss.kind_of(3) is ss.Kind.INTEGER
    assert ss.kind_of(2**64) is ss.Kind.FLOAT and ss.kind_of(1.5) is ss.Kind.FLOAT
    assert ss.kind_of("2026-11-30T10:00:00.000Z") is ss.Kind.TIMESTAMP and ss.kind_of("soon") is ss.Kind.STRING
    assert ss.kind_of([1]) is ss.Kind.STRING and ss.kind_of(None) is None
    assert ss.widest([ss.Kind.INTEGER, ss.Kind.FLOAT]) is ss.Kind.FLOAT
    assert ss.widest([ss.Kind.INTEGER, ss.Kind.BOOLEAN]) is ss.Kind.STRING
    # strings fit their column in bytes: 512 four-byte characters
    assert ss.Kind.STRING.redshift == "VARCHAR(2048)" and ss.STRING_BYTES <= 65535


def _obs(table: str, path: tuple[str, ...], kind: ss.Kind, root: str = "properties") -> ss.Observation:
    return ss.Observation("web", table, root, path, kind)


def test_plan_creates_then_adds_and_discards_reserved_names():
    first = ss.plan([_obs("event:Order Completed", ("total",), ss.Kind.FLOAT),
                     _obs("event:Order Completed", ("user_id",), ss.Kind.STRING),
                     _obs("event:Order Completed", ("address", "city"), ss.Kind.STRING)],
                    {}, batch_tables=[("web", "event:Order Completed"), ("web", "tracks")])
    tables = {t.table: t for t in first.tables}
    assert set(tables) == {"order_completed", "tracks"} and all(t.create for t in first.tables)
    oc = tables["order_completed"]
    assert oc.columns["total"] is ss.Kind.FLOAT and oc.columns["address_city"] is ss.Kind.STRING
    assert "user_id" not in oc.sources  # a property named like a common column is discarded
    [ddl] = ss.table_ddl(oc)
    assert '"total" DOUBLE PRECISION' in ddl and "SORTKEY (received_at)" in ddl
    # the next batch brings a new property: one ALTER TABLE per column, existing ones untouched
    existing = {("web", "order_completed"): dict(oc.columns)}
    second = ss.plan([_obs("event:Order Completed", ("total",), ss.Kind.STRING),
                      _obs("event:Order Completed", ("coupon",), ss.Kind.STRING)],
                     existing, batch_tables=[("web", "event:Order Completed")])
    [oc2] = second.tables
    assert not oc2.create and oc2.add == ["coupon"] and oc2.columns["total"] is ss.Kind.FLOAT
    assert ss.table_ddl(oc2) == ['ALTER TABLE "web"."order_completed" ADD COLUMN "coupon" VARCHAR(2048);']


def test_plan_bounds_new_tables_and_columns_per_run():
    obs = [_obs(f"event:E{i}", (f"p{j}",), ss.Kind.INTEGER) for i in range(5) for j in range(3)]
    pairs = [("web", f"event:E{i}") for i in range(5)]
    p = ss.plan(obs, {}, batch_tables=pairs, limits=ss.Limits(new_tables=3, new_columns=4))
    assert len(p.tables) == 3 and p.deferred_tables == 2
    assert sum(len([c for c in t.columns if c.startswith("p")]) for t in p.tables) == 4
    assert p.deferred_columns == 5


def test_generated_sql_parses_as_redshift():
    p = ss.plan([_obs("event:Order Completed", ("total",), ss.Kind.FLOAT),
                 _obs("identifies", ("email",), ss.Kind.STRING, "traits"),
                 _obs("identifies", ("plan", "seats"), ss.Kind.INTEGER, "traits"),
                 _obs("pages", ("url",), ss.Kind.STRING)],
                {}, batch_tables=[("web", "event:Order Completed"), ("web", "identifies"), ("web", "pages")])
    tables = {t.table: t for t in p.tables}
    assert set(tables) == {"order_completed", "identifies", "users", "pages"}
    assert list(tables["users"].columns) == ["id", "received_at", "uuid_ts", "email", "plan_seats"]
    stmts = [s for t in p.tables for s in ss.table_ddl(t)]
    stmts += [ss.insert_sql(t, "segment_batch", "segment_event_map") for t in p.tables if t.kind != "users"]
    stmts += ss.users_sql(tables["users"], tables["identifies"], "segment_batch", "scratch")
    for sql in stmts:
        assert sqlglot.parse_one(sql, read="redshift") is not None, sql
    insert = ss.insert_sql(tables["identifies"], "segment_batch", "segment_event_map")
    assert "JSON_EXTRACT_PATH_TEXT(b.traits, 'plan', 'seats')" in insert
    assert "LEFT(b.message_id, 512)" in insert
