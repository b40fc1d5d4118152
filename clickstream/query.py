"""``clickstream query``: SQL against the local warehouse, running pipeline or not."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp

LOCAL_STATE_FILE = "local.json"
READ_ONLY_ROOTS = (exp.Select, exp.Union, exp.Intersect, exp.Except, exp.Describe, exp.Show, exp.Pragma)


class QueryError(Exception):
    """A query that was not answered; ``server_fault`` when the pipeline, not the SQL, is to blame
    (the admin endpoint's 5xx, or no answer at all)."""

    def __init__(self, message: str, *, server_fault: bool = False) -> None:
        super().__init__(message)
        self.server_fault = server_fault


def check_read_only(sql: str) -> None:
    """A friendly early error for anything but reads. Not the guard: a parser's view of SQL can
    differ from DuckDB's, so queries also run where they cannot write or reconfigure anything
    (``clickstream.warehouse.read_only_query``), whatever this check thinks."""
    try:
        trees = [t for t in sqlglot.parse(sql, read="duckdb") if t is not None]
    except sqlglot.errors.ParseError as exc:
        raise QueryError(f"cannot parse query: {exc}") from exc
    if len(trees) != 1:
        raise QueryError("give exactly one SQL statement")
    if not isinstance(trees[0], READ_ONLY_ROOTS):
        raise QueryError(f"only read-only queries are allowed, not {trees[0].key.upper()}")


def write_state(data_dir: Path, admin_url: str, token: str, *, health_url: str | None = None) -> Path:
    """Tell `clickstream query` and `clickstream status` where the running pipeline answers."""
    path = Path(data_dir) / LOCAL_STATE_FILE
    path.write_text(json.dumps({"pid": os.getpid(), "admin_url": admin_url, "token": token,
                                "health_url": health_url}))
    path.chmod(0o600)
    return path


def running(data_dir: Path) -> dict | None:
    """The state file of the `clickstream local` serving ``data_dir``, or None if none runs."""
    path = Path(data_dir) / LOCAL_STATE_FILE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    try:
        os.kill(state["pid"], 0)
    except (OSError, KeyError):
        return None  # stale file from a killed process
    return state


def run_query(data_dir: Path, sql: str) -> tuple[list[str], list[list[Any]]]:
    check_read_only(sql)
    state = running(data_dir)
    if state:
        import urllib.error
        import urllib.request

        from clickstream.collector import ADMIN_TOKEN_HEADER

        request = urllib.request.Request(
            state["admin_url"], data=json.dumps({"sql": sql}).encode(), method="POST",
            headers={"Content-Type": "application/json", ADMIN_TOKEN_HEADER: state["token"]})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("message", str(exc))
            except ValueError:
                message = str(exc)
            raise QueryError(message, server_fault=exc.code >= 500) from exc
        except (urllib.error.URLError, OSError) as exc:  # refused, reset or timed out
            raise QueryError(f"the running pipeline did not answer: {exc}", server_fault=True) from exc
        return body["columns"], body["rows"]
    from clickstream.warehouse import WAREHOUSE_FILE, QueryFailed, Warehouse, lock_down

    path = Path(data_dir) / WAREHOUSE_FILE
    if not path.exists():
        raise QueryError(f"no warehouse at {path}: start `clickstream local --data-dir {data_dir}` first")
    import duckdb

    try:
        wh = Warehouse(path, read_only=True)
    except duckdb.IOException as exc:
        raise QueryError(f"cannot open {path}: {exc}") from exc
    try:
        lock_down(wh.conn)  # the file is read-only already; this keeps SQL away from other files too
        columns, rows = wh.query(sql)
        return columns, [list(r) for r in rows]
    except QueryFailed as exc:
        raise QueryError(f"query failed: {exc}", server_fault=exc.server_fault) from exc
    finally:
        wh.close()


def format_rows(columns: list[str], rows: list[list[Any]], fmt: str, color: bool = False) -> str:
    """``color``: style the table (only for a terminal; piped output never gets ANSI escapes, even
    with FORCE_COLOR set)."""
    if fmt == "json":
        return json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str, ensure_ascii=False,
                          indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        writer.writerows(rows)
        return buf.getvalue()
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=color, color_system="auto" if color else None)
    console.print(table)
    return out.getvalue() + f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n"
