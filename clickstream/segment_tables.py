"""Segment's per-source tables, filled from the combined `events` table after merges.

`events` stays the lossless record (full ``properties`` and ``traits`` JSON). After merges (locally
once the loader has caught up, on Redshift after each refresh) the rows it gained are spread into
Segment's schema (:mod:`clickstream.segment_schema` holds the rules): a schema per source (source
``web`` -> ``web.pages``, ``web.order_completed``...), tables and columns created as names first arrive. A run:

1. stages the new rows: `events` rows with ``loaded_at`` past the layer's own watermark
   (``<schema>.segment_load_state``), plus ``uuid_ts`` (this run's time);
2. discovers which tables and flattened keys (with JSON types) the batch has;
3. plans with :func:`clickstream.segment_schema.plan` against the columns that exist;
4. creates tables / adds columns, inserts into every table, upserts `users` and moves the
   watermark, in one transaction (a failed run changes nothing and the next one redoes it).

Locally the loader calls :func:`after_merge` (DuckDB, statements transpiled from the Redshift SQL
the module generates). On AWS the refresh workflow's ``segment_tables`` Lambda runs the same plan
through the Redshift Data API (:class:`RedshiftRun`).

The watermark relies on `events.loaded_at` being one value per merge transaction that grows from
merge to merge (``GETDATE()`` in the merge), with merges run one at a time.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from clickstream import segment_schema as ss

if TYPE_CHECKING:  # the Lambda bundles this module without sqlglot, which sqlmodel imports
    from clickstream.sqlmodel import ModelNames

log = logging.getLogger("clickstream.segment")

STATE_TABLE = "segment_load_state"
STATE_NAME = "segment"
BATCH = "segment_batch"
EVENT_MAP = "segment_event_map"
USERS_SCRATCH = "segment_users_new"
EPOCH = "1970-01-01 00:00:00+00"
# Message type -> the JSON column whose keys become columns.
ROOTS = {"track": "properties", "page": "properties", "screen": "properties", "identify": "traits",
         "group": "traits"}


def _schemas(pairs: Iterable[tuple[str, Any]], taken: list[str]) -> list[str]:
    """The source schemas of a batch's (source, table) pairs (sources with no usable name left out)."""
    return sorted({name for source, _ in pairs if (name := ss.schema_name(source, taken)) is not None})


class Names(Protocol):
    """The names the layer's SQL is written against: a ModelNames locally, SchemaNames in the Lambda."""

    @property
    def schema(self) -> str: ...
    @property
    def kinesis_schema(self) -> str: ...
    @property
    def reader_role(self) -> str: ...


def state_sql(names: Names) -> list[str]:
    """The layer's watermark table (Redshift SQL): how far `events` has been spread."""
    table = f"{names.schema}.{STATE_TABLE}"
    return [
        f"CREATE TABLE IF NOT EXISTS {table} (name VARCHAR(64) NOT NULL, loaded_at TIMESTAMPTZ NOT NULL);",
        f"INSERT INTO {table} (name, loaded_at) SELECT '{STATE_NAME}', CAST('{EPOCH}' AS TIMESTAMPTZ) "
        f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE name = '{STATE_NAME}');",
    ]


def stage_sql(names: Names, after: str, upto: str, uuid_ts: str, *, view: bool = False) -> list[str]:
    """The batch: `events` rows in (after, upto] of ``loaded_at`` (literal bounds), plus ``uuid_ts``.

    A TEMP table on Redshift (one scan of `events`, then the INSERTs read the small copy). DuckDB has
    temporary views: there the copy would cost more than it saves, as `events` is in ``loaded_at``
    order and each INSERT's scan skips everything older than the batch (zone maps).
    """
    select = (f"SELECT e.*, CAST('{uuid_ts}' AS TIMESTAMPTZ) AS uuid_ts FROM {names.schema}.events AS e "
              f"WHERE e.loaded_at > CAST('{after}' AS TIMESTAMPTZ) AND e.loaded_at <= CAST('{upto}' AS TIMESTAMPTZ)")
    if view:
        return [f"CREATE OR REPLACE TEMP VIEW {BATCH} AS {select};"]
    return [f"DROP TABLE IF EXISTS {BATCH};", f"CREATE TEMP TABLE {BATCH} AS {select};"]


def advance_sql(names: Names, upto: str) -> str:
    return (f"UPDATE {names.schema}.{STATE_TABLE} SET loaded_at = CAST('{upto}' AS TIMESTAMPTZ) "
            f"WHERE name = '{STATE_NAME}';")


def event_map_sql(event_names: Mapping[str, str], dialect: str = "redshift") -> list[str]:
    """The batch's event names and their tables, for the `tracks` and per-event INSERTs."""
    stmts = [f"DROP TABLE IF EXISTS {EVENT_MAP};",
             f"CREATE TEMP TABLE {EVENT_MAP} (event_text VARCHAR(1024), event VARCHAR({ss.MAX_IDENTIFIER_BYTES}));"]
    rows = [f"({ss.literal(text, dialect)}, {ss.literal(table) if table else 'NULL'})"
            for text, table in sorted(event_names.items())]
    for i in range(0, len(rows), 500):
        stmts.append(f"INSERT INTO {EVENT_MAP} (event_text, event) VALUES {', '.join(rows[i:i + 500])};")
    return stmts


def data_sql(plan: ss.Plan, names: Names, upto: str, dialect: str = "redshift") -> list[str]:
    """Everything after staging, in order: DDL, INSERTs, the `users` upsert, the watermark."""
    stmts: list[str] = []
    for schema in sorted({t.schema for t in plan.tables}):
        stmts.append(f"CREATE SCHEMA IF NOT EXISTS {ss.quote(schema)};")
    for tp in plan.tables:
        stmts.extend(ss.table_ddl(tp, dialect))
    for tp in plan.tables:
        if tp.kind != "users":
            stmts.append(ss.insert_sql(tp, BATCH, EVENT_MAP, dialect))
    for tp in plan.tables:
        if tp.kind == "users":
            ident = next(t for t in plan.tables if (t.schema, t.table) == (tp.schema, "identifies"))
            stmts.extend(ss.users_sql(tp, ident, BATCH, USERS_SCRATCH, dialect))
    stmts.append(advance_sql(names, upto))
    return stmts


def batch_tables(rows: Iterable[tuple[str, str, str | None]]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(source, type, event_text) of the batch -> (source, table) pairs and event_text -> table."""
    pairs: set[tuple[str, str]] = set()
    events: dict[str, str] = {}
    for source, msg_type, event_text in rows:
        if msg_type == "track":
            pairs.add((source, "tracks"))
            if event_text is not None:
                pairs.add((source, "event:" + event_text))
                events[event_text] = ss.event_table(event_text) or ""
        elif msg_type in ss.TYPE_TABLE:
            pairs.add((source, ss.TYPE_TABLE[msg_type]))
    return sorted(pairs), events


def tables_of(source: str, msg_type: str, event_text: str | None, root: str) -> list[str]:
    """Which tables a key of ``root`` in a message of this type feeds."""
    if root == "context":
        if msg_type == "track":
            return ["tracks", "event:" + event_text] if event_text is not None else ["tracks"]
        return [ss.TYPE_TABLE[msg_type]] if msg_type in ss.TYPE_TABLE else []
    if msg_type == "track":
        return ["event:" + event_text] if event_text is not None else []
    return [ss.TYPE_TABLE[msg_type]] if ROOTS.get(msg_type) == root else []


# --- DuckDB -----------------------------------------------------------------------------------------

_DUCKDB_KINDS = {"BOOLEAN": ss.Kind.BOOLEAN, "BIGINT": ss.Kind.INTEGER, "UBIGINT": ss.Kind.INTEGER,
                 "DOUBLE": ss.Kind.FLOAT, "VARCHAR": ss.Kind.STRING}
_COLUMN_TYPES = {"BOOLEAN": ss.Kind.BOOLEAN, "BIGINT": ss.Kind.INTEGER, "DOUBLE": ss.Kind.FLOAT,
                 "TIMESTAMP WITH TIME ZONE": ss.Kind.TIMESTAMP, "VARCHAR": ss.Kind.STRING}


def walk_structure(structure: Any, path: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], ss.Kind]]:
    """Leaves of a DuckDB ``json_structure`` value: objects are walked, arrays are strings (stored as
    JSON text), nulls and empty objects make no column."""
    if isinstance(structure, dict):
        for key, sub in structure.items():
            yield from walk_structure(sub, (*path, key))
    elif isinstance(structure, list):
        if path:
            yield path, ss.Kind.STRING
    elif path and structure not in ("NULL", "JSON"):
        yield path, _DUCKDB_KINDS.get(structure, ss.Kind.STRING)


json_pointer = ss.json_pointer


@lru_cache(maxsize=16384)
def _duckdb(sql: str) -> str:
    from clickstream.sqlmodel import transpile

    return transpile(sql)


@dataclass
class SpreadStats:
    runs: int = 0
    rows: int = 0
    tables_created: int = 0
    columns_added: int = 0
    deferred: int = 0
    seconds: float = 0.0
    last_error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


class DuckDBSegment:
    """The layer on the local warehouse: one instance per DuckDB connection (the loader's)."""

    def __init__(self, conn: Any, names: ModelNames | None = None, limits: ss.Limits | None = None) -> None:
        from clickstream.sqlmodel import ModelNames

        self.conn = conn
        self.names = names or ModelNames()
        self.limits = limits or ss.Limits()
        self.stats = SpreadStats()
        for sql in state_sql(self.names):
            self.conn.execute(_duckdb(sql))
        events_cols = {r[0] for r in self.conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = 'events'",
            [self.names.schema]).fetchall()}
        # `context` JSON, when the combined table keeps it, is flattened too (context_app_version...).
        self.roots = ("properties", "traits", "context") if "context" in events_cols else ("properties", "traits")
        self.taken = [self.names.schema, self.names.kinesis_schema]
        # Columns of the tables of the schemas seen so far, as of the last committed run: the catalog
        # is read once per schema, not per run (it grows with every event table).
        self._columns: dict[str, dict[tuple[str, str], dict[str, ss.Kind]]] = {}

    def spread(self) -> int:
        """Spread the rows `events` gained since the last run; returns how many rows were spread."""
        start = time.perf_counter()
        c = self.conn
        c.execute("BEGIN")
        try:
            n, plan = self._spread()
            c.execute("COMMIT")
        except Exception:
            c.execute("ROLLBACK")
            self._columns.clear()  # read the catalog again: the run's DDL is undone
            raise
        for tp in plan.tables if plan else ():
            self._columns.setdefault(tp.schema, {})[(tp.schema, tp.table)] = dict(tp.columns)
        self.stats.seconds += time.perf_counter() - start
        self.stats.runs += 1
        self.stats.rows += n
        return n

    def _spread(self) -> tuple[int, ss.Plan | None]:
        c = self.conn
        after = c.execute(f"SELECT loaded_at FROM {self.names.schema}.{STATE_TABLE} WHERE name = ?",
                          [STATE_NAME]).fetchone()[0]
        upto = c.execute(f"SELECT MAX(loaded_at) FROM {self.names.schema}.events WHERE loaded_at > ?",
                         [after]).fetchone()[0]
        if upto is None:
            return 0, None
        after_s, upto_s = _ts(after), _ts(upto)
        for sql in stage_sql(self.names, after_s, upto_s, _ts(dt.datetime.now(dt.UTC)), view=True):
            c.execute(_duckdb(sql))
        rows, observations, n = self._discover()
        pairs, events = batch_tables(rows)
        existing = self._existing(_schemas(pairs, self.taken))
        plan = ss.plan(observations, existing, batch_tables=pairs, taken_schemas=self.taken,
                       known_events=None, limits=self.limits)
        self._timestamps(plan, existing)
        for sql in event_map_sql(events, "duckdb"):
            c.execute(sql)
        for sql in data_sql(plan, self.names, upto_s, "duckdb"):
            c.execute(sql)
        self.stats.tables_created += sum(t.create for t in plan.tables)
        self.stats.columns_added += sum(len(t.add) for t in plan.tables)
        self.stats.deferred += plan.deferred_tables + plan.deferred_columns
        if plan.deferred_tables or plan.deferred_columns:
            log.warning("segment tables: %d new tables and %d new columns wait for a later run (limits %s)",
                        plan.deferred_tables, plan.deferred_columns, self.limits)
        return n, plan

    def _discover(self) -> tuple[list[tuple[str, str, str | None]], list[ss.Observation], int]:
        """Distinct key structures of the batch (one ``json_structure`` per JSON value, grouped), walked
        in Python: a batch of 50K events has only a few hundred distinct structures."""
        roots = ", ".join(f"json_structure({r}) AS s_{r}" for r in self.roots)
        result = self.conn.execute(
            f"SELECT source, type, CASE WHEN type = 'track' THEN event_text END AS ev, {roots}, COUNT(*) "
            f"FROM {BATCH} GROUP BY ALL").fetchall()
        rows: set[tuple[str, str, str | None]] = set()
        seen: set[ss.Observation] = set()
        total = 0
        for source, msg_type, ev, *structures, count in result:
            total += count
            rows.add((source, msg_type, ev))
            for root, structure in zip(self.roots, structures, strict=True):
                if structure is None:
                    continue
                targets = tables_of(source, msg_type, ev, root)
                if not targets:
                    continue
                for path, kind in walk_structure(json.loads(structure)):
                    for table in targets:
                        seen.add(ss.Observation(source, table, root, path, kind))
        return sorted(rows, key=lambda r: (r[0], r[1], r[2] or "")), sorted(
            seen, key=lambda o: (o.source, o.table, o.root, o.path, o.kind.value)), total

    def _existing(self, schemas: list[str]) -> dict[tuple[str, str], dict[str, ss.Kind]]:
        missing = [s for s in schemas if s not in self._columns]
        if missing:
            for schema in missing:
                self._columns[schema] = {}
            for schema, table, column, dtype in self.conn.execute(
                    "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema IN (SELECT UNNEST(?)) ORDER BY table_schema, table_name, ordinal_position",
                    [missing]).fetchall():
                self._columns[schema].setdefault((schema, table), {})[column] = _COLUMN_TYPES.get(
                    dtype, ss.Kind.STRING)
        return {k: dict(v) for s in schemas for k, v in self._columns[s].items()}

    def _timestamps(self, plan: ss.Plan, existing: Mapping[tuple[str, str], Mapping[str, ss.Kind]]) -> None:
        """A new string column whose values in this batch are all ISO-8601 date-times is a timestamp
        column (Segment's `timestamp` type). Checked only for columns this run creates."""
        candidates: list[tuple[Any, ...]] = []
        for tp in plan.tables:
            old = existing.get((tp.schema, tp.table), {})
            for col, (root, paths) in tp.sources.items():
                if col not in old and tp.columns.get(col) is ss.Kind.STRING and len(paths) == 1:
                    msg_type = ss.TABLE_KINDS[tp.kind][0]
                    texts: list[str | None] = list(tp.event_texts) or [None]
                    for ev in texts:
                        candidates.append((len(candidates), tp, col, tp.source, msg_type, ev, root,
                                           json_pointer(paths[0])))
        if not candidates:
            return
        cols = list(zip(*[(i, src, t, ev, root, ptr) for i, _, _, src, t, ev, root, ptr in candidates], strict=True))
        found = self.conn.execute(
            f"""SELECT c.i, bool_and(regexp_full_match(v, ?))
                FROM (SELECT c.i, json_extract_string(CASE c.root WHEN 'properties' THEN b.properties
                             WHEN 'traits' THEN b.traits ELSE {'b.context' if 'context' in self.roots else 'NULL'} END,
                             c.ptr) AS v
                      FROM (SELECT UNNEST(?) AS i, UNNEST(?) AS source, UNNEST(?) AS type, UNNEST(?::VARCHAR[]) AS ev,
                                   UNNEST(?) AS root, UNNEST(?) AS ptr) AS c
                      JOIN {BATCH} AS b ON b.source = c.source AND b.type = c.type
                           AND (c.ev IS NULL OR b.event_text = c.ev)) AS c
                WHERE v IS NOT NULL GROUP BY c.i""",
            [ss.ISO_TIMESTAMP.pattern, *[list(x) for x in cols]]).fetchall()
        is_ts: dict[tuple[int, str], bool] = {}
        for i, ok in found:
            _, tp, col, *_ = candidates[i]
            key = (id(tp), col)
            is_ts[key] = is_ts.get(key, True) and bool(ok)
        for _, tp, col, *_ in candidates:
            if is_ts.get((id(tp), col)):
                tp.columns[col] = ss.Kind.TIMESTAMP
        for tp in plan.tables:  # users' new trait columns take identifies' types
            if tp.kind == "users":
                ident = next(t for t in plan.tables if (t.schema, t.table) == (tp.schema, "identifies"))
                old = existing.get((tp.schema, tp.table), {})
                for col in tp.columns:
                    if col not in old and col in ident.columns:
                        tp.columns[col] = ident.columns[col]


def _ts(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


_layers: dict[int, DuckDBSegment] = {}
# Set to "off" to leave the Segment tables out of the local loader (they roughly double what each
# merge writes; see docs/warehouse-segment.md, Cost).
ENABLE_ENV = "CLICKSTREAM_SEGMENT_TABLES"


def after_merge(conn: Any, names: ModelNames) -> bool:
    """The local loader's hook: spread what the merge added. A failure is logged and returns False:
    the loader retries it (the watermark did not move); it never stops the combined tables from
    loading."""
    if os.environ.get(ENABLE_ENV, "on").lower() in ("off", "0", "false", "no"):
        return True
    layer = _layers.get(id(conn))
    try:
        if layer is None or layer.conn is not conn:
            while len(_layers) >= 16:  # connections come and go (tests); a dropped layer is rebuilt
                _layers.pop(next(iter(_layers)))
            layer = _layers[id(conn)] = DuckDBSegment(conn, names)
        layer.spread()
        layer.stats.last_error = None
        return True
    except Exception as exc:
        if layer is not None:
            layer.stats.last_error = str(exc)
        log.exception("segment tables: spreading the merged events failed; the loader retries")
        return False


# --- Redshift ---------------------------------------------------------------------------------------

# The Data API runs at most 40 statements per BatchExecuteStatement
# (https://docs.aws.amazon.com/redshift-data/latest/APIReference/API_BatchExecuteStatement.html).
MAX_BATCH_STATEMENTS = 40
MAX_DEPTH = 4  # nesting levels of objects discovered on Redshift (deeper keys stay in `events`)
MAX_OBJECT_PATHS = 100  # object paths explored per level and run
# SUPER navigation is case-insensitive unless this is on; keys differing only in case are distinct
# properties. https://docs.aws.amazon.com/redshift/latest/dg/r_enable_case_sensitive_super_attribute.html
CASE_SENSITIVE = ["SET enable_case_sensitive_identifier TO true;", "SET enable_case_sensitive_super_attribute TO true;"]
_REDSHIFT_COLUMN_TYPES = {"boolean": ss.Kind.BOOLEAN, "bigint": ss.Kind.INTEGER, "double precision": ss.Kind.FLOAT,
                          "timestamp with time zone": ss.Kind.TIMESTAMP, "character varying": ss.Kind.STRING}


def bounds_sql(names: Names) -> str:
    """The layer's watermark and the newest `loaded_at` past it: the batch is (after, upto]."""
    return (f"SELECT CAST(s.loaded_at AS VARCHAR) AS after_ts, CAST(MAX(e.loaded_at) AS VARCHAR) AS upto_ts "
            f"FROM {names.schema}.{STATE_TABLE} AS s LEFT JOIN {names.schema}.events AS e "
            f"ON e.loaded_at > s.loaded_at WHERE s.name = '{STATE_NAME}' GROUP BY s.loaded_at;")


def _batch_json(names: Names, after: str, upto: str, context: bool = False) -> str:
    bounds = (f"loaded_at > CAST('{after}' AS TIMESTAMPTZ) AND loaded_at <= CAST('{upto}' AS TIMESTAMPTZ)")
    parts = []
    roots = [("properties", ("track", "page", "screen")), ("traits", ("identify", "group"))]
    if context:
        roots.append(("context", ("track", "page", "screen", "identify", "group", "alias")))
    for root, types in roots:
        in_types = ", ".join(f"'{t}'" for t in types)
        parts.append(
            f"SELECT source, type, CASE WHEN type = 'track' THEN event_text END AS ev, '{root}' AS root, "
            f"JSON_PARSE({root}) AS j FROM {names.schema}.events "
            f"WHERE {bounds} AND type IN ({in_types}) AND {root} LIKE '{{%'")
    return "\n    UNION ALL\n    ".join(parts)


def discovery_sql(names: Names, after: str, upto: str, parents: list[tuple[str, tuple[str, ...]]],
                  context: bool = False) -> str:
    """Keys one level below each (root, object path) of the batch, with their JSON types (Redshift:
    JSON_PARSE once per value, PartiQL UNPIVOT over the object's attributes).
    https://docs.aws.amazon.com/redshift/latest/dg/query-super.html#unpivoting
    Columns: source, type, ev, root, parent (JSON array of the path), k, json type, and whether all
    numbers are integers / all strings ISO-8601 date-times (Segment's integer and timestamp types).
    """
    branches = []
    for i, (root, path) in enumerate(parents):
        nav = "b.j" + "".join(f'."{k}"' for k in path)
        parent = ss.literal(json.dumps(list(path)))
        branches.append(
            f"SELECT b.source, b.type, b.ev, b.root, {i} AS parent, k, JSON_TYPEOF(v) AS kind,\n"
            f"       BOOL_AND(CASE WHEN JSON_TYPEOF(v) = 'number' THEN IS_BIGINT(v) END) AS all_integers,\n"
            f"       BOOL_AND(CASE WHEN JSON_TYPEOF(v) = 'string' THEN CAST(v AS VARCHAR) ~ "
            f"'{ss.SQL_TIMESTAMP_PATTERN}' END) AS all_timestamps\n"
            f"FROM b, UNPIVOT {nav} AS v AT k\n"
            f"WHERE b.root = '{root}' AND IS_OBJECT({nav}) -- {parent}\n"
            f"GROUP BY b.source, b.type, b.ev, b.root, k, JSON_TYPEOF(v)")
    return (f"WITH b AS (\n    {_batch_json(names, after, upto, context)}\n)\n" + "\nUNION ALL\n".join(branches)
            + ";")


def context_column_sql(names: Names) -> str:
    """Whether `events` keeps the whole context as JSON (then its keys become context_* columns)."""
    return (f"SELECT COUNT(*) FROM svv_columns WHERE table_schema = {ss.literal(names.schema)} "
            "AND table_name = 'events' AND column_name = 'context';")


def columns_sql(schemas: list[str]) -> str:
    in_list = ", ".join(ss.literal(s) for s in schemas)
    return ("SELECT table_schema, table_name, column_name, data_type FROM svv_columns "
            f"WHERE table_schema IN ({in_list}) ORDER BY table_schema, table_name, ordinal_position;")


def batch_rows_sql(names: Names, after: str, upto: str) -> str:
    return (f"SELECT source, type, CASE WHEN type = 'track' THEN event_text END AS ev, COUNT(*) AS n "
            f"FROM {names.schema}.events WHERE loaded_at > CAST('{after}' AS TIMESTAMPTZ) "
            f"AND loaded_at <= CAST('{upto}' AS TIMESTAMPTZ) GROUP BY 1, 2, 3;")


def kind_from_redshift(json_type: str, all_integers: Any, all_timestamps: Any) -> ss.Kind | None:
    if json_type == "number":
        return ss.Kind.INTEGER if _true(all_integers) else ss.Kind.FLOAT
    if json_type == "string":
        return ss.Kind.TIMESTAMP if _true(all_timestamps) else ss.Kind.STRING
    return {"boolean": ss.Kind.BOOLEAN, "array": ss.Kind.STRING}.get(json_type)


def _true(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "t", "1")


class Executor:
    """Where the Redshift SQL runs: the Data API in the Lambda (:class:`DataApiExecutor`)."""

    def query(self, sqls: list[str]) -> list[list[Any]]:
        """Run statements in one session; rows of the last one."""
        raise NotImplementedError

    def run(self, sqls: list[str]) -> None:
        """Run statements as one transaction."""
        raise NotImplementedError


def chunks(setup: list[str], body: list[str], size: int | None = None) -> list[list[str]]:
    """``body`` split so that each chunk, with ``setup`` in front (the session's temp tables), fits
    one BatchExecuteStatement."""
    room = max(1, (size or MAX_BATCH_STATEMENTS) - len(setup))
    return [setup + body[i:i + room] for i in range(0, len(body), room)] or [setup]


@dataclass(frozen=True)
class SchemaNames:
    """The names a Redshift run needs (a :class:`clickstream.sqlmodel.ModelNames` has them too)."""

    schema: str = "clickstream"
    kinesis_schema: str = "kinesis"
    reader_role: str = "clickstream_reader"  # the setup's read-only role for BI tools and dbt


# The function's environment: Data API connection fields and the model's names. The warehouse stack
# writes it (lambda_environment) and the handler reads it (target_from_env, names_from_env).
_CONNECTION_ENV = {"Database": "DATABASE", "WorkgroupName": "WORKGROUP_NAME",
                   "ClusterIdentifier": "CLUSTER_IDENTIFIER", "SecretArn": "SECRET_ARN", "DbUser": "DB_USER"}
_NAMES_ENV = {"schema": "SCHEMA", "kinesis_schema": "KINESIS_SCHEMA", "reader_role": "READER_ROLE"}


def lambda_environment(connection: Mapping[str, str], names: Names) -> dict[str, str]:
    """The function's environment for a Data API connection (as the workflows use) and names."""
    env = {_CONNECTION_ENV[key]: value for key, value in connection.items()}
    env |= {var: getattr(names, field) for field, var in _NAMES_ENV.items()}
    return env


def target_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """The Data API connection fields back from :func:`lambda_environment`'s variables."""
    return {key: env[var] for key, var in _CONNECTION_ENV.items() if env.get(var)}


def names_from_env(env: Mapping[str, str]) -> SchemaNames:
    return SchemaNames(**{field: env.get(var, getattr(SchemaNames, field)) for field, var in _NAMES_ENV.items()})


class RedshiftRun:
    """One run of the layer on Redshift: what the ``segment_tables`` Lambda does after each merge.

    The Data API takes at most 40 statements per transaction, so a run with many tables commits in
    chunks; the watermark moves in the last one, and each INSERT skips ids its table already has
    in the batch's ``received_at`` range, so a run that dies between chunks is redone without
    duplicates. DDL runs first, on its own (a rerun sees what exists and adds only what is missing).
    """

    def __init__(self, executor: Executor, names: Names,
                 limits: ss.Limits | None = None) -> None:
        self.ex = executor
        self.names = names
        self.limits = limits or ss.Limits()
        self.taken = [names.schema, names.kinesis_schema]

    def run(self, now: dt.datetime | None = None) -> dict[str, Any]:
        self.ex.run(state_sql(self.names))
        [[after, upto]] = self.ex.query([bounds_sql(self.names)])
        if upto is None:
            return {"rows": 0, "tablesCreated": 0, "columnsAdded": 0, "deferred": 0, "loadedAt": after}
        counted = self.ex.query([batch_rows_sql(self.names, after, upto)])
        rows = [(s, t, e) for s, t, e, _ in counted]
        [[has_context]] = self.ex.query([context_column_sql(self.names)])
        observations = self.discover(after, upto, context=int(has_context) > 0)
        pairs, events = batch_tables(rows)
        schemas = _schemas(pairs, self.taken)
        existing: dict[tuple[str, str], dict[str, ss.Kind]] = {}
        for schema, table, column, dtype in (self.ex.query([columns_sql(schemas)]) if schemas else []):
            existing.setdefault((schema, table), {})[column] = _REDSHIFT_COLUMN_TYPES.get(
                str(dtype).split("(")[0], ss.Kind.STRING)
        plan = ss.plan(observations, existing, batch_tables=pairs, taken_schemas=self.taken, limits=self.limits)
        ddl = [f"CREATE SCHEMA IF NOT EXISTS {ss.quote(s)};" for s in sorted({t.schema for t in plan.tables})]
        ddl += [s for tp in plan.tables for s in ss.table_ddl(tp)]
        for chunk in chunks([], ddl):
            self.ex.run(chunk)
        if ddl:
            self._grant(sorted({t.schema for t in plan.tables}))
        uuid_ts = _ts(now or dt.datetime.now(dt.UTC))
        setup = stage_sql(self.names, after, upto, uuid_ts) + event_map_sql(events)
        body = [self._guarded(tp) for tp in plan.tables if tp.kind != "users"]
        for tp in plan.tables:
            if tp.kind == "users":
                ident = next(t for t in plan.tables if (t.schema, t.table) == (tp.schema, "identifies"))
                body.extend(ss.users_sql(tp, ident, BATCH, USERS_SCRATCH))
        body.append(advance_sql(self.names, upto))
        batches = chunks(setup, body)
        for chunk in batches:
            self.ex.run(chunk)
        return {"rows": sum(int(n) for *_, n in counted), "tablesCreated": sum(t.create for t in plan.tables),
                "columnsAdded": sum(len(t.add) for t in plan.tables),
                "deferred": plan.deferred_tables + plan.deferred_columns, "loadedAt": upto,
                "transactions": len(batches)}

    def _grant(self, schemas: list[str]) -> None:
        """Read access for the setup's reader role on the source schemas and their (new) tables.
        A failure (e.g. a warehouse set up before the role existed) is logged, not fatal: the tables
        still fill. https://docs.aws.amazon.com/redshift/latest/dg/r_GRANT.html"""
        role = getattr(self.names, "reader_role", "")
        if not role:
            return
        grants = [g for s in schemas for g in (f"GRANT USAGE ON SCHEMA {ss.quote(s)} TO ROLE {ss.quote(role)};",
                                               f"GRANT SELECT ON ALL TABLES IN SCHEMA {ss.quote(s)} TO ROLE "
                                               f"{ss.quote(role)};")]
        try:
            for chunk in chunks([], grants):
                self.ex.run(chunk)
        except Exception:
            log.exception("segment tables: granting read access to role %s failed", role)

    def _guarded(self, tp: ss.TablePlan) -> str:
        """The INSERT, skipping ids the table already has for the batch (a chunk redone)."""
        sql = ss.insert_sql(tp, BATCH, EVENT_MAP).rstrip(";")
        target = f"{ss.quote(tp.schema)}.{ss.quote(tp.table)}"
        return (sql + f"\n  AND NOT EXISTS (SELECT 1 FROM {target} AS t WHERE t.id = LEFT(b.message_id, "
                f"{ss.STRING_CHARS}) AND t.received_at >= (SELECT MIN(received_at) FROM {BATCH}));")

    def discover(self, after: str, upto: str, context: bool = False) -> list[ss.Observation]:
        """Keys of the batch's properties and traits (and context), level by level down to
        :data:`MAX_DEPTH`."""
        out: list[ss.Observation] = []
        parents: list[tuple[str, tuple[str, ...]]] = [("properties", ()), ("traits", ())]
        if context:
            parents.append(("context", ()))
        for _ in range(MAX_DEPTH):
            if not parents:
                break
            rows = self.ex.query([*CASE_SENSITIVE, discovery_sql(self.names, after, upto, parents, context)])
            deeper: set[tuple[str, tuple[str, ...]]] = set()
            for source, msg_type, ev, root, parent, key, json_type, ints, stamps in rows:
                path = (*parents[int(parent)][1], key)
                if json_type == "object":
                    deeper.add((root, path))
                    continue
                kind = kind_from_redshift(json_type, ints, stamps)
                if kind is None:
                    continue
                for table in tables_of(source, msg_type, ev, root):
                    out.append(ss.Observation(source, table, root, path, kind))
            parents = sorted(deeper)[:MAX_OBJECT_PATHS]
        return out


class DataApiExecutor(Executor):
    """The Redshift Data API (boto3 ``redshift-data``): one BatchExecuteStatement per call, polled."""

    def __init__(self, client: Any, target: Mapping[str, str], poll: float = 0.5, timeout: float = 600) -> None:
        self.client = client
        self.target = dict(target)  # WorkgroupName or ClusterIdentifier (+ DbUser/SecretArn), Database
        self.poll, self.timeout = poll, timeout

    def _wait(self, statement_id: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            d = self.client.describe_statement(Id=statement_id)
            if d["Status"] == "FINISHED":
                return d
            if d["Status"] in ("FAILED", "ABORTED"):
                raise RuntimeError(f"Redshift statement {d['Status']}: {d.get('Error', '')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redshift statement {statement_id} still {d['Status']}")
            time.sleep(self.poll)

    def run(self, sqls: list[str]) -> None:
        if sqls:
            self._wait(self.client.batch_execute_statement(Sqls=sqls, **self.target)["Id"])

    def query(self, sqls: list[str]) -> list[list[Any]]:
        d = self._wait(self.client.batch_execute_statement(Sqls=sqls, **self.target)["Id"])
        subs = d.get("SubStatements") or []
        result_id = subs[-1]["Id"] if subs else d["Id"]
        out: list[list[Any]] = []
        kwargs: dict[str, Any] = {"Id": result_id}
        while True:
            page = self.client.get_statement_result(**kwargs)
            for record in page.get("Records", []):
                out.append([_field(f) for f in record])
            if not page.get("NextToken"):
                return out
            kwargs["NextToken"] = page["NextToken"]


def _field(field: Mapping[str, Any]) -> Any:
    if field.get("isNull"):
        return None
    for key in ("stringValue", "longValue", "doubleValue", "booleanValue"):
        if key in field:
            return field[key]
    return None
