"""The Redshift side of Segment's tables: the SQL the refresh workflow's Lambda generates, run on a
DuckDB stand-in (transpiled by sqlglot) against the local layer's results, and the handler on moto."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlglot
from moto import mock_aws
from moto.redshiftdata import models as rsd_models
from moto.redshiftdata import responses as rsd_responses

from clickstream import segment_schema as ss
from clickstream import segment_tables as st
from clickstream.sqlmodel import ModelNames, transpile
from clickstream.warehouse import Warehouse
from tests.test_segment_tables import feed, rows


def _handler_module():
    path = Path(__file__).resolve().parent.parent / "functions" / "segment_tables" / "handler.py"
    spec = importlib.util.spec_from_file_location("segment_tables_handler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lambda_handler = _handler_module()

_TYPES = {"VARCHAR": "character varying", "BIGINT": "bigint", "DOUBLE": "double precision", "BOOLEAN": "boolean",
          "TIMESTAMP WITH TIME ZONE": "timestamp with time zone"}


class DuckDBRedshift(st.Executor):
    """Redshift stand-in: every statement must parse as Redshift SQL, then runs transpiled onto DuckDB.
    The PartiQL discovery query (no DuckDB equivalent) is answered in Python from the batch's JSON."""

    def __init__(self, wh: Warehouse) -> None:
        self.conn = wh.conn
        self.batches: list[list[str]] = []

    def _one(self, sql: str) -> list[list[Any]]:
        if sql.startswith(("SET ", "GRANT ")):  # session settings and roles: nothing to do on DuckDB
            return []
        assert sqlglot.parse_one(sql, read="redshift") is not None
        if "UNPIVOT" in sql:
            return self._discover(sql)
        if "svv_columns" in sql:
            out = self.conn.execute(transpile(sql.replace("svv_columns", "information_schema.columns"))).fetchall()
            return [[s, t, c, _TYPES[d]] for s, t, c, d in out] if len(out[0] if out else ()) == 4 else out
        result = self.conn.execute(transpile(sql))
        return [list(r) for r in result.fetchall()] if result.description else []

    def run(self, sqls: list[str]) -> None:
        assert len(sqls) <= st.MAX_BATCH_STATEMENTS
        self.batches.append(sqls)
        self.conn.execute("BEGIN")
        try:
            for sql in sqls:
                self._one(sql)
            self.conn.execute("COMMIT")
        except Exception:
            self.conn.execute("ROLLBACK")
            raise

    def query(self, sqls: list[str]) -> list[list[Any]]:
        out: list[list[Any]] = []
        for sql in sqls:
            out = self._one(sql)
        return out

    def _discover(self, sql: str) -> list[list[Any]]:
        after, upto = re.findall(r"loaded_at [<>]=? CAST\('([^']+)' AS TIMESTAMPTZ\)", sql)[:2]
        parents = [(int(i), root, tuple(json.loads(p))) for i, root, p in re.findall(
            r"SELECT b\.source, b\.type, b\.ev, b\.root, (\d+) AS parent.*?WHERE b\.root = '(\w+)' "
            r"AND IS_OBJECT\(.*?\) -- '(.*?)'\n", sql, re.S)]
        context = "'context' AS root" in sql
        batch = self.conn.execute(
            "SELECT source, type, CASE WHEN type = 'track' THEN event_text END, properties, traits, "
            f"{'context' if context else 'NULL'} FROM clickstream.events "
            "WHERE loaded_at > CAST(? AS TIMESTAMPTZ) AND loaded_at <= CAST(? AS TIMESTAMPTZ)",
            [after, upto]).fetchall()
        groups: dict[tuple, list[Any]] = {}
        for source, msg_type, ev, props, traits, ctx in batch:
            docs = {"properties": props if msg_type in ("track", "page", "screen") else None,
                    "traits": traits if msg_type in ("identify", "group") else None, "context": ctx}
            for i, root, path in parents:
                node = json.loads(docs[root]) if docs[root] else None
                for key in path:
                    node = node.get(key) if isinstance(node, dict) else None
                if not isinstance(node, dict):
                    continue
                for k, v in node.items():
                    kind = ("null" if v is None else "boolean" if isinstance(v, bool) else "number"
                            if isinstance(v, int | float) else "string" if isinstance(v, str) else "array"
                            if isinstance(v, list) else "object")
                    g = groups.setdefault((source, msg_type, ev, root, i, k, kind), [None, None])
                    if kind == "number":
                        g[0] = (g[0] is not False) and isinstance(v, int) and -(2**63) <= v < 2**63
                    if kind == "string":
                        g[1] = (g[1] is not False) and bool(re.match(ss.SQL_TIMESTAMP_PATTERN, v))
        return [[*key, *agg] for key, agg in groups.items()]


MESSAGES = [
    {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "t1",
     "properties": {"total": 12.5, "orderId": "o-1", "address": {"city": "Paris", "geo": {"lat": 48.8}},
                    "products": [{"sku": "a"}], "shippedAt": "2026-11-02T08:00:00.000Z", "gift": False, "items": 3,
                    "Plan": "x", "plan": "y"}},
    {"type": "track", "event": "productViewed", "anonymousId": "a1", "messageId": "t2", "properties": {"sku": "r"}},
    {"type": "page", "anonymousId": "a1", "messageId": "p1", "name": "Pricing",
     "properties": {"url": "https://shop.example/pricing", "path": "/pricing", "title": "Pricing", "search": ""}},
    {"type": "screen", "anonymousId": "a2", "messageId": "s1", "name": "Welcome", "properties": {"tab": "home"}},
    {"type": "identify", "userId": "u1", "messageId": "i1", "traits": {"email": "a@example.com", "plan": "free"}},
    {"type": "identify", "userId": "u1", "messageId": "i2", "timestamp": "2030-01-01T00:00:00Z",
     "traits": {"plan": "pro", "seats": 3}},
    {"type": "group", "userId": "u1", "messageId": "g1", "groupId": "acme", "traits": {"name": "ACME"}},
    {"type": "alias", "userId": "u1", "previousId": "a1", "messageId": "al1"},
]
LATER = [{"type": "track", "event": "Order Completed", "userId": "u2", "messageId": "t3",
          "properties": {"total": "n/a", "coupon": "X1"}},
         {"type": "identify", "userId": "u1", "messageId": "i3", "traits": {"email": "b@example.com"}}]
T0 = 1_764_000_000_000
TABLES = ["tracks", "order_completed", "product_viewed", "pages", "screens", "identifies", "groups", "aliases", "users"]


def _snapshot(wh: Warehouse) -> dict[str, Any]:
    out = {}
    for table in TABLES:
        cols = rows(wh, f"SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'web' "
                        f"AND table_name = '{table}' ORDER BY column_name")
        data = rows(wh, f"SELECT * EXCLUDE (uuid_ts) FROM web.{table} ORDER BY id")
        out[table] = (cols, data)
    return out


def test_redshift_sql_transpiled_gives_the_same_tables_as_the_local_layer(tmp_path, monkeypatch):
    local = Warehouse(tmp_path / "local.duckdb")
    feed(local, MESSAGES, received_ms=T0)
    feed(local, LATER, received_ms=T0 + 1000)
    monkeypatch.setattr(st, "after_merge", lambda *a: None)  # the other one is filled by the Redshift run
    remote = Warehouse(tmp_path / "remote.duckdb")
    ex = DuckDBRedshift(remote)
    feed(remote, MESSAGES, received_ms=T0)
    first = st.RedshiftRun(ex, remote.names).run()
    assert first["rows"] == len(MESSAGES) and first["tablesCreated"] == len(TABLES)
    feed(remote, LATER, received_ms=T0 + 1000)
    second = st.RedshiftRun(ex, remote.names).run()
    assert second["columnsAdded"] == 1  # coupon
    assert st.RedshiftRun(ex, remote.names).run()["rows"] == 0  # nothing new: nothing done
    expected, got = _snapshot(local), _snapshot(remote)
    for table in TABLES:
        assert got[table] == expected[table], table
    [order] = [r for r in got["order_completed"][1] if r["id"] == "t1"]
    # "Plan" and "plan" share a column: the first key in sorted order that has a value fills it
    assert (order["address_geo_lat"], order["plan"], order["items"]) == (48.8, "x", 3)
    # one ALTER TABLE per new column, each statement on its own
    alters = [s for b in ex.batches for s in b if s.startswith("ALTER TABLE")]
    assert alters == ['ALTER TABLE "web"."order_completed" ADD COLUMN "coupon" VARCHAR(2048);']
    local.close()
    remote.close()


def test_context_json_gives_the_same_columns_on_both_warehouses(tmp_path, monkeypatch):
    context = ('{"app": {"version": "1.0.0", "build": 321}, "device": {"type": "ios"}, "Os": {"Name": "iOS"}, '
               '"page": {"url": "https://ignored.example/"}}')
    monkeypatch.setattr(st, "after_merge", lambda *a: None)
    snapshots = []
    for name in ("local", "remote"):
        wh = Warehouse(tmp_path / f"{name}.duckdb")
        feed(wh, MESSAGES, received_ms=T0)
        wh.conn.execute(f"UPDATE clickstream.events SET context = '{context}'")
        if name == "local":
            st.DuckDBSegment(wh.conn, wh.names).spread()
        else:
            st.RedshiftRun(DuckDBRedshift(wh), wh.names).run()
        snapshots.append(_snapshot(wh))
        wh.close()
    local, remote = snapshots
    assert remote == local
    [screen] = remote["screens"][1]
    assert (screen["context_app_version"], screen["context_app_build"], screen["context_os_name"]) == (
        "1.0.0", 321, "iOS")
    assert screen["context_page_url"] is None  # the combined table's own context_page_url wins


def test_a_run_redone_after_a_failed_chunk_adds_no_duplicates(tmp_path, monkeypatch):
    monkeypatch.setattr(st, "after_merge", lambda *a: None)
    monkeypatch.setattr(st, "MAX_BATCH_STATEMENTS", 12)  # many chunks for a few tables
    wh = Warehouse(tmp_path / "wh.duckdb")
    ex = DuckDBRedshift(wh)
    feed(wh, [{"type": "track", "event": f"E{i}", "userId": "u", "messageId": f"m{i}", "properties": {"n": i}}
              for i in range(30)])
    real_run, calls = ex.run, []

    def dying(sqls):
        if any(s.startswith("INSERT INTO \"web\"") for s in sqls):
            calls.append(sqls)
            if len(calls) == 2:  # the first data chunk commits, the second dies
                raise RuntimeError("connection lost")
        real_run(sqls)

    ex.run = dying
    with pytest.raises(RuntimeError):
        st.RedshiftRun(ex, wh.names).run()
    assert rows(wh, "SELECT loaded_at FROM clickstream.segment_load_state")[0]["loaded_at"].year == 1970
    filled = sum(rows(wh, f"SELECT COUNT(*) AS n FROM web.e{i}")[0]["n"] for i in range(30))
    assert 0 < filled < 30  # the first chunk committed, the rest did not
    ex.run = real_run
    result = st.RedshiftRun(ex, wh.names).run()
    assert result["transactions"] > 1
    assert rows(wh, "SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS d FROM web.tracks") == [{"n": 30, "d": 30}]
    assert all(rows(wh, f"SELECT COUNT(*) AS n FROM web.e{i}")[0]["n"] == 1 for i in range(30))
    wh.close()


# --- the handler, through boto3 against moto's Data API ----------------------------------------------

class FakeDataApi:
    """moto's Data API has no BatchExecuteStatement and canned results: add both."""

    def __init__(self, monkeypatch, answers: list[tuple[str, list[list[Any]]]]) -> None:
        self.batches: list[dict] = []
        self.answers = answers
        fake = self
        backend = rsd_models.RedshiftDataAPIServiceBackend

        def batch_execute_statement(resp):
            params = json.loads(resp.body)
            fake.batches.append(params)
            statement = resp.redshiftdata_backend.execute_statement(
                cluster_identifier=params.get("ClusterIdentifier"), database=params.get("Database"),
                db_user=params.get("DbUser"), parameters=None, secret_arn=params.get("SecretArn"),
                sql=";\n".join(params["Sqls"]))
            statement.status = "FINISHED"
            return 200, {}, json.dumps({"Id": statement.id, "Database": params.get("Database")})

        def get_statement_result(self, statement_id):
            sql = self.statements[statement_id].query_string
            for needle, records in fake.answers:
                if needle in sql:
                    return rsd_models.StatementResult([], [[_cell(v) for v in r] for r in records], len(records))
            return rsd_models.StatementResult([], [], 0)

        monkeypatch.setattr(rsd_responses.RedshiftDataAPIServiceResponse, "batch_execute_statement",
                            batch_execute_statement, raising=False)
        monkeypatch.setattr(backend, "get_statement_result", get_statement_result)


def _cell(v: Any) -> dict:
    if v is None:
        return {"isNull": True}
    if isinstance(v, bool):
        return {"booleanValue": v}
    if isinstance(v, int):
        return {"longValue": v}
    return {"stringValue": str(v)}


def test_handler_discovers_creates_and_adds_through_the_data_api(monkeypatch):
    env = {"WORKGROUP_NAME": "clickstream", "DATABASE": "dev", "SCHEMA": "clickstream"}
    existing = [["web", "order_completed", c, t] for c, t in
                [("id", "character varying(2048)"), ("received_at", "timestamp with time zone"),
                 ("total", "double precision")]]
    fake = FakeDataApi(monkeypatch, [
        ("AS after_ts", [["1970-01-01 00:00:00+00", "2026-11-30 10:00:00+00"]]),
        ("column_name = 'context'", [[0]]),  # events without a context JSON column
        ("COUNT(*) AS n", [["web", "track", "Order Completed", 1]]),
        ("UNPIVOT b.j.\"address\"", [["web", "track", "Order Completed", "properties", 0, "city", "string",
                                      None, False]]),
        ("UNPIVOT b.j AS v", [["web", "track", "Order Completed", "properties", 0, "total", "number", False, None],
                              ["web", "track", "Order Completed", "properties", 0, "address", "object", None, None],
                              ["web", "track", "Order Completed", "properties", 0, "orderId", "string", None, False]]),
        ("svv_columns", existing),
    ])
    with mock_aws():
        client = boto3.client("redshift-data", region_name="us-east-1")
        result = lambda_handler.run({"maxNewColumns": 10}, client, env)
    assert result == {"rows": 1, "tablesCreated": 1, "columnsAdded": 2, "deferred": 0,
                      "loadedAt": "2026-11-30 10:00:00+00", "transactions": 1}
    assert all(b["WorkgroupName"] == "clickstream" and b["Database"] == "dev" for b in fake.batches)
    assert all(len(b["Sqls"]) <= st.MAX_BATCH_STATEMENTS for b in fake.batches)
    sqls = [s for b in fake.batches for s in b["Sqls"]]
    discovery = [b["Sqls"] for b in fake.batches if any("UNPIVOT" in s for s in b["Sqls"])]
    assert len(discovery) == 2 and all(d[:2] == st.CASE_SENSITIVE for d in discovery)
    assert 'ALTER TABLE "web"."order_completed" ADD COLUMN "address_city" VARCHAR(2048);' in sqls
    assert 'ALTER TABLE "web"."order_completed" ADD COLUMN "order_id" VARCHAR(2048);' in sqls
    assert any(s.startswith('CREATE TABLE IF NOT EXISTS "web"."tracks"') for s in sqls)
    # the setup's reader role (BI tools, dbt) can read the source schema and its new tables
    assert 'GRANT SELECT ON ALL TABLES IN SCHEMA "web" TO ROLE "clickstream_reader";' in sqls
    assert sqls.index('GRANT USAGE ON SCHEMA "web" TO ROLE "clickstream_reader";') > max(
        i for i, s in enumerate(sqls) if s.startswith("CREATE TABLE"))
    insert = next(s for s in sqls if s.startswith('INSERT INTO "web"."order_completed"'))
    assert "JSON_EXTRACT_PATH_TEXT(b.properties, 'address', 'city')" in insert
    assert "JSON_EXTRACT_PATH_TEXT(b.properties, 'orderId')" in insert and "NOT EXISTS" in insert
    last = fake.batches[-1]["Sqls"]
    assert last[-1].startswith("UPDATE clickstream.segment_load_state SET loaded_at = CAST('2026-11-30 10:00:00+00'")
    for sql in sqls:
        if not sql.startswith("SET "):
            assert sqlglot.parse_one(sql, read="redshift") is not None


def test_handler_target_from_environment():
    assert lambda_handler.target_from_env({"DATABASE": "dev", "WORKGROUP_NAME": "wg"}) == {
        "Database": "dev", "WorkgroupName": "wg"}
    assert lambda_handler.target_from_env({"DATABASE": "dev", "CLUSTER_IDENTIFIER": "c", "DB_USER": "u"}) == {
        "Database": "dev", "ClusterIdentifier": "c", "DbUser": "u"}
    assert ModelNames().schema == "clickstream"


@pytest.mark.parametrize("mode, secret, user", [("serverless", "", ""), ("provisioned", "arn:secret", ""),
                                                 ("provisioned", "", "loader")])
def test_the_stacks_environment_reads_back_as_the_workflows_connection(mode, secret, user):
    """The warehouse stack writes the function's environment with lambda_environment; the handler
    must read back exactly the connection and names the workflows use (one definition of both)."""
    from clickstream import workflows

    connection = workflows.connection_parameters(mode, "wh", "analytics", secret_arn=secret, db_user=user)
    names = ModelNames(schema="events_s", kinesis_schema="kds", reader_role="bi")
    env = st.lambda_environment(connection, names)
    assert lambda_handler.target_from_env(env) == connection
    assert st.names_from_env(env) == st.SchemaNames(schema="events_s", kinesis_schema="kds", reader_role="bi")


def test_the_lambda_bundle_imports_without_sqlglot_or_duckdb(tmp_path):
    """What CDK's bundling copies (handler + the listed clickstream modules) imports on a runtime that
    has boto3 and Powertools but neither sqlglot nor duckdb."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "clickstream").mkdir()
    shutil.copyfile(root / "functions" / "segment_tables" / "handler.py", tmp_path / "handler.py")
    for module in ("__init__", "segment_schema", "segment_tables"):
        shutil.copyfile(root / "clickstream" / f"{module}.py", tmp_path / "clickstream" / f"{module}.py")
    code = ("import sys; sys.modules['sqlglot'] = None; sys.modules['duckdb'] = None; "
            f"sys.path.insert(0, {str(tmp_path)!r}); import handler; "
            "print(handler.RedshiftRun.__name__, handler.names_from_env({}).schema)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env={"POWERTOOLS_TRACE_DISABLED": "1", "AWS_DEFAULT_REGION": "us-east-1",
                                            "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["RedshiftRun", "clickstream"]
