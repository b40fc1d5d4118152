"""The ``clickstream`` command: one group of subcommands sharing option definitions."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from clickstream import contract

DATA_DIR_ENV = "CLICKSTREAM_DATA_DIR"
DEFAULT_DATA_DIR = ".clickstream"


def _data_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR)),
        help=f"where the local stream, archive and warehouse live (env {DATA_DIR_ENV}; default {DEFAULT_DATA_DIR})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clickstream",
        description="Clickstream on AWS: a Segment-compatible clickstream pipeline, deployed or local.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    local = sub.add_parser(
        "local",
        help="run the pipeline on this machine (tracking API + durable stream)",
        description="Serve the Segment tracking API on this machine. Every accepted event is committed "
        "to the durable local stream before the 200 is sent.",
    )
    local.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: loopback only)")
    local.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    _data_dir_option(local)
    local.add_argument(
        "--write-key",
        action="append",
        dest="write_keys",
        metavar="KEY[=SOURCE]",
        help=f"an accepted write key and the source it names; repeatable, comma-separated lists allowed "
        f"(env {contract.WRITE_KEYS_ENV}; default {contract.DEV_WRITE_KEY}={contract.DEV_SOURCE})",
    )
    local.add_argument(
        "--allow-origin",
        action="append",
        dest="origins",
        metavar="ORIGIN",
        help="browser origin allowed by CORS; repeatable (default *)",
    )
    local.add_argument("--archive-buffer-mb", type=float, default=5.0,
                       help="archive object size that triggers a write, MiB (default 5, like Firehose)")
    local.add_argument("--archive-buffer-seconds", type=float, default=300.0,
                       help="oldest buffered record age that triggers an archive write (default 300, like Firehose)")
    local.add_argument("--load-interval", type=float, default=0.5,
                       help="seconds between warehouse loads (default 0.5)")
    local.set_defaults(func=_cmd_local)

    query = sub.add_parser(
        "query",
        help="run read-only SQL against the local warehouse (DuckDB), also while `clickstream local` runs",
        description="Run one read-only SQL statement against the local warehouse. While `clickstream local` runs "
        "(it owns the DuckDB file), the query is sent to it over loopback; otherwise the file is opened "
        "read-only. Tables: clickstream.tracks, identifies, pages, screens, groups, aliases, users, "
        "events, rejected.",
    )
    _data_dir_option(query)
    query.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    query.add_argument("sql", help="the SQL statement")
    query.set_defaults(func=_cmd_query)

    records = sub.add_parser(
        "records",
        help="print records from the local stream as JSON lines",
        description="Print stream records (like reading a Kinesis shard): sequence number, arrival time, "
        "partition key and the envelope.",
    )
    _data_dir_option(records)
    records.add_argument("--after", type=int, default=0, help="start after this sequence number")
    records.add_argument("--limit", type=int, default=None, help="print at most N records")
    records.set_defaults(func=_cmd_records)
    bench = sub.add_parser(
        "bench",
        help="measure the local tracking API (events/s, requests/s, latency) against a bare server",
        description="Start the local pipeline in a temp dir and drive it with a keep-alive load generator: "
        "peak throughput, latency at half of peak, and a bare HTTP server on the same stack as a baseline. "
        "Fails if any acknowledged event is missing from the stream.",
    )
    bench.add_argument("--scenario", action="append", choices=["batch", "single", "load"],
                       help="batch/single: HTTP ingest; load: events merged per second into the DuckDB "
                       "warehouse; repeatable (default: all three)")
    bench.add_argument("--load-events", type=int, default=200_000, help="events for the load scenario")
    bench.add_argument("--seconds", type=float, default=10.0, help="length of each run (default 10)")
    bench.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections (default 32)")
    bench.add_argument("--batch-size", type=int, default=100, help="events per batch request (default 100)")
    bench.add_argument("--json", action="store_true", help="print figures as JSON")
    bench.set_defaults(func=_cmd_bench)
    return parser


def _cmd_bench(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from clickstream import bench

    chosen = args.scenario or ["batch", "single", "load"]
    http = [s for s in chosen if s != "load"]
    figures = bench.run_bench(http, args.seconds, args.connections, args.batch_size) if http else []
    loader = bench.bench_loader(args.load_events) if "load" in chosen else None
    if args.json:
        print(json.dumps({"http": json.loads(bench.to_json(figures)),
                          "loader": dataclasses.asdict(loader) if loader else None}, indent=2))
        return 0
    if figures:
        bench.print_table(figures)
    if loader:
        print(f"warehouse loader: {loader.events:,} events merged into DuckDB in {loader.seconds} s = "
              f"{loader.events_per_s:,.0f} events/s (batches of {loader.batch:,}; "
              f"{loader.rows_in_events:,} rows in events)")
    return 0


def _write_keys(specs: Sequence[str] | None) -> dict[str, str]:
    if specs:
        return contract.parse_write_keys(specs)
    env = os.environ.get(contract.WRITE_KEYS_ENV)
    if env:
        return contract.parse_write_keys([env])
    return {contract.DEV_WRITE_KEY: contract.DEV_SOURCE}


def _cmd_local(args: argparse.Namespace) -> int:
    from clickstream.local import run_local

    try:
        keys = _write_keys(args.write_keys)
    except contract.WriteKeyError as exc:
        print(f"clickstream local: {exc}", file=sys.stderr)
        return 2
    return run_local(
        host=args.host, port=args.port, data_dir=args.data_dir, write_keys=keys, origins=args.origins or ["*"],
        archive_buffer_bytes=int(args.archive_buffer_mb * 1024 * 1024),
        archive_buffer_seconds=args.archive_buffer_seconds, load_interval=args.load_interval,
    )


def _cmd_query(args: argparse.Namespace) -> int:
    from clickstream.query import QueryError, format_rows, run_query

    try:
        columns, rows = run_query(args.data_dir, args.sql)
    except QueryError as exc:
        print(f"clickstream query: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(format_rows(columns, rows, args.format))
    return 0


def _cmd_records(args: argparse.Namespace) -> int:
    import json

    from clickstream.stream import LocalStream

    stream = LocalStream(args.data_dir)
    out = sys.stdout
    for n, record in enumerate(stream.iter_from(args.after)):
        if args.limit is not None and n >= args.limit:
            break
        line = {
            "sequenceNumber": record.seq,
            "approximateArrivalTimestamp": record.arrival_ms,
            "partitionKey": record.partition_key,
            "data": json.loads(record.data),
        }
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
