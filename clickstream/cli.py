"""The ``clickstream`` command: one group of subcommands sharing option definitions."""

from __future__ import annotations

import argparse
import datetime as dt
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


def _json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def build_parser() -> argparse.ArgumentParser:
    from clickstream.server import ServerLimits  # `local`'s defaults are the limits' own
    from clickstream.stream import Limits

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
    local.add_argument("--max-backlog", type=int, default=Limits.max_backlog,
                       help="answer 429 (Retry-After) while more records than this wait for the warehouse "
                       "loader (default %(default)s)")
    local.add_argument("--min-free-mb", type=int, default=Limits.min_free_bytes // 2**20,
                       help="answer 503 while the data dir's disk has less free space (default %(default)s)")
    local.add_argument("--forwarded-allow-ips", metavar="IPS",
                       help="comma-separated proxy addresses (or *) whose X-Forwarded-For/-Proto headers are "
                       "trusted for the client IP; default: none, the IP is the TCP peer (like API Gateway's "
                       "sourceIp)")
    local.add_argument("--max-connections", type=int, default=ServerLimits.max_connections,
                       help="open connections at most (default %(default)s): a new one replaces the longest idle, "
                       "or gets 503 when all are busy")
    local.add_argument("--header-timeout", type=float, default=ServerLimits.header_timeout,
                       help="seconds a client has to send the request line and headers (default %(default)s; "
                       "then 408)")
    local.add_argument("--body-timeout", type=float, default=ServerLimits.body_timeout,
                       help="seconds a client has to send the body after the headers (default %(default)s; "
                       "then 408)")
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

    status = sub.add_parser(
        "status",
        help="show the local pipeline's health: backlog, warehouse and archive lag, consumer restarts",
        description="Show the health of `clickstream local` for --data-dir (its /health route while it runs; "
        "the stream's checkpoints otherwise). Exit code 0: running and healthy; 1: running but degraded "
        "(the problems are listed); 3: not running.",
    )
    _data_dir_option(status)
    _json_option(status, "the health document")
    status.set_defaults(func=_cmd_status)

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

    archive = sub.add_parser(
        "archive",
        help="show what the local archiver has written, and flush its buffer on demand",
        description="Like Firehose, the local archiver writes an object every --archive-buffer-seconds (300) or "
        "--archive-buffer-mb (5): events sent a minute ago are not archived (nor replayable) yet. "
        "--flush writes everything waiting now, through the running `clickstream local` or directly.",
    )
    _data_dir_option(archive)
    archive.add_argument("--flush", action="store_true", help="archive every record waiting in the buffer now")
    archive.add_argument("--timeout", type=float, default=30.0,
                         help="seconds to wait for the running pipeline's archiver (default 30)")
    archive.set_defaults(func=_cmd_archive)
    simulate = sub.add_parser(
        "simulate",
        help="send realistic traffic with the official Segment Python SDK",
        description="Simulate users arriving and coming back over --days: visits with stable anonymous ids, "
        "page views with what analytics.js sends (url, path, title, referrer, search; UTM campaign in context), "
        "sign-up -> identify -> alias, purchase funnels, groups and mobile screens, sent with "
        "segment-analytics-python (batched, gzip). Checks the endpoint first; prints a summary at the end.",
    )
    simulate.add_argument("--host", help="the tracking API (env CLICKSTREAM_HOST; default: the `clickstream local` "
                          "running on --data-dir, as started by `make run`, else http://127.0.0.1:8080)")
    _data_dir_option(simulate)
    simulate.add_argument("--write-key", "--writeKey", dest="write_key",
                          default=os.environ.get("CLICKSTREAM_WRITE_KEY", contract.DEV_WRITE_KEY),
                          help=f"write key (env CLICKSTREAM_WRITE_KEY; default {contract.DEV_WRITE_KEY})")
    simulate.add_argument("--users", type=int, default=50, help="simulated people (default 50)")
    amount = simulate.add_mutually_exclusive_group()
    amount.add_argument("--events", type=int, help="stop after this many events (default 1000)")
    amount.add_argument("--duration", type=float, help="stop after this many seconds")
    simulate.add_argument("--rate", type=float, help="at most this many events per second")
    simulate.add_argument("--seed", type=int, help="random seed: the same seed sends the same events")
    simulate.add_argument("--days", type=float, default=7.0,
                          help="users arrive and come back over this many days up to now; event timestamps are "
                          "when each event happened (default 7; 0: everything now, like live traffic)")
    simulate.set_defaults(func=_cmd_simulate)

    replay = sub.add_parser(
        "replay",
        help="put archived events for a time range back on a stream (local or Kinesis)",
        description="Replay archived records received in [--from, --to] from the local archive or "
        "s3://bucket/prefix onto the local stream or a Kinesis stream. Only the hour prefixes of the "
        "range are listed; objects are streamed; records go in PutRecords-sized chunks (<= 500, <= 5 MiB); "
        "only failed records are retried, with backoff and jitter. Progress is checkpointed: run the same "
        "command again to resume. Replaying what is already loaded changes no warehouse row.",
    )
    _data_dir_option(replay)
    replay.add_argument("--from", dest="start", required=True,
                        help="start time, ISO 8601 (UTC if no offset), or relative: now, now-2h, now-30m, now-1d")
    replay.add_argument("--to", dest="end", required=True, help="end time (inclusive), same forms as --from")
    replay.add_argument("--source", help="archive: a local data/archive dir or s3://bucket/prefix "
                        "(default: the archive in --data-dir)")
    replay.add_argument("--target-stream", metavar="NAME",
                        help="Kinesis stream to put records on (boto3 credential chain); default: the local "
                        "stream in --data-dir")
    replay.add_argument("--region", help="AWS region for s3:// sources and Kinesis targets")
    replay.add_argument("--rate", type=float, help="at most this many records per second")
    replay.add_argument("--dry-run", action="store_true", help="count objects, records and bytes; put nothing")
    replay.add_argument("--checkpoint", type=Path,
                        help="progress file for resuming (default: replay-<range>.json in --data-dir)")
    _json_option(replay, "the summary")
    replay.set_defaults(func=_cmd_replay)

    cost = sub.add_parser(
        "cost",
        help="estimate the monthly AWS cost of the deployed pipeline",
        description="Monthly and per-million-event cost of the deployed design (API Gateway, Kinesis, Firehose, "
        "S3, Step Functions, Redshift Serverless, access logs) from the price table in clickstream/prices.json. "
        "See docs/cost.md for the model.",
    )
    from clickstream import cost as cost_model

    cost_model.add_arguments(cost)
    _json_option(cost, "the estimate")
    cost.set_defaults(func=_cmd_cost)

    openapi = sub.add_parser(
        "openapi", help="print the tracking API's OpenAPI document (docs/openapi.json)",
        description="Print the OpenAPI 3.0 document of the tracking API, generated from the contract. "
        "clickstream local also serves it at /openapi.json.")
    openapi.add_argument("--server", default="http://127.0.0.1:8080", help="server URL to put in the document")
    openapi.set_defaults(func=_cmd_openapi)

    bench = sub.add_parser(
        "bench",
        help="measure the local tracking API (events/s, requests/s, latency) against a bare server",
        description="Start the local pipeline in a temp dir and drive it with a keep-alive load generator: "
        "peak throughput, latency at half of peak, and a bare HTTP server on the same stack as a baseline. "
        "Fails if any acknowledged event is missing from the stream.",
    )
    bench.add_argument("--scenario", action="append", choices=["batch", "single", "load", "replay"],
                       help="batch/single: HTTP ingest; load: events merged per second into the DuckDB "
                       "warehouse; replay: archived records replayed per second into the local stream; "
                       "repeatable (default: all four)")
    bench.add_argument("--load-events", type=int, default=200_000, help="events for the load scenario")
    bench.add_argument("--seconds", type=float, default=10.0, help="length of each run (default 10)")
    bench.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections (default 32)")
    bench.add_argument("--batch-size", type=int, default=100, help="events per batch request (default 100)")
    _json_option(bench, "the figures")
    bench.set_defaults(func=_cmd_bench)
    return parser


def _cmd_simulate(args: argparse.Namespace) -> int:
    from clickstream.simulate import EndpointError, check_endpoint, default_host, run_simulation

    host = args.host or default_host(args.data_dir)
    try:
        check_endpoint(host, args.write_key)
    except EndpointError as exc:
        print(f"clickstream simulate: {exc}", file=sys.stderr)
        return 1
    events = args.events if args.events is not None or args.duration is not None else 1000
    summary = run_simulation(host, args.write_key, users=args.users, events=events, duration=args.duration,
                             rate=args.rate, seed=args.seed, progress=sys.stderr.isatty(), days=args.days)
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.by_type.items()))
    print(f"sent {summary.accepted:,} of {summary.events:,} events to {host} in {summary.seconds:.1f} s "
          f"({summary.accepted / summary.seconds:,.0f}/s): {kinds}; {summary.errors:,} failed"
          + (f" ({summary.first_error})" if summary.first_error else ""))
    return 1 if summary.errors else 0


def _cmd_openapi(args: argparse.Namespace) -> int:
    import json

    from clickstream.openapi import document

    print(json.dumps(document(args.server), indent=2))
    return 0


def _cmd_cost(args: argparse.Namespace) -> int:
    from clickstream import cost as model

    return model.run(args)


def _cmd_replay(args: argparse.Namespace) -> int:
    import hashlib
    import json

    from clickstream import replay as rp
    from clickstream.archive import open_archive

    try:
        start, end = _parse_when(args.start), _parse_when(args.end)
    except ValueError as exc:
        print(f"clickstream replay: bad time: {exc}", file=sys.stderr)
        return 2
    if end < start:
        print("clickstream replay: --to is before --from", file=sys.stderr)
        return 2
    # Without --source the data dir is the archive read: it must hold a pipeline (a mistyped one would
    # replay nothing into a new, empty stream). With --source, a new data dir is a backfill target.
    if not args.source and not _require_pipeline(args.data_dir, "replay"):
        return 2
    source = args.source or str(args.data_dir)
    archive = open_archive(source, args.region)
    target: rp.Target | None = None
    if not args.dry_run:
        if args.target_stream:
            import boto3

            target = rp.KinesisTarget(args.target_stream, boto3.client("kinesis", region_name=args.region))
        else:
            target = rp.LocalTarget(args.data_dir)
    checkpoint = None
    if not args.dry_run:
        ident = hashlib.sha256(f"{source}|{args.target_stream}|{start}|{end}".encode()).hexdigest()[:12]
        args.data_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = rp.Checkpoint.load(args.checkpoint or args.data_dir / f"replay-{ident}.json")
    stats = rp.replay(archive, target, start, end, rate=args.rate, checkpoint=checkpoint,
                      progress=sys.stderr.isatty() and not args.json)
    summary = rp.stats_dict(stats)
    summary["dry_run"] = args.dry_run
    if not stats.objects:
        print(f"clickstream replay: {_why_nothing(archive, args.data_dir, start, end)}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    else:
        verb = "would replay" if args.dry_run else "replayed"
        print(f"{verb} {stats.records:,} records ({stats.bytes:,} bytes) from {stats.objects} objects in "
              f"{stats.seconds:.2f} s ({summary['records_per_second']:,.0f} records/s); "
              f"{stats.skipped_out_of_range:,} outside the range, {stats.retries:,} retried; "
              f"range {_iso_ms(start)} .. {_iso_ms(end)}")
    return 0


_RELATIVE = {"m": "minutes", "h": "hours", "d": "days"}


def _iso_ms(when: dt.datetime) -> str:
    """UTC, to the millisecond (the precision of receivedAt), so a printed range can be given back."""
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_when(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``now`` or ``now-<N><m|h|d>`` (relative to the current UTC time), else ISO 8601."""
    import re

    from clickstream.replay import parse_time

    now = now or dt.datetime.now(dt.UTC)
    match = re.fullmatch(r"\s*now\s*(?:-\s*(\d+(?:\.\d+)?)\s*([mhd]))?\s*", text, re.IGNORECASE)
    if match:
        amount, unit = match.groups()
        return now - dt.timedelta(**{_RELATIVE[unit.lower()]: float(amount)}) if amount else now
    return parse_time(text)


def _why_nothing(archive, data_dir: Path, start: dt.datetime, end: dt.datetime) -> str:
    """Why a replay found no object: usually the buffer has not been written yet (every 300 s)."""
    from clickstream.archive import ARCHIVE_PREFIX, ARCHIVER_CONSUMER, DEFAULT_BUFFER_SECONDS, LocalArchive

    span = f"{_iso_ms(start)} .. {_iso_ms(end)}"
    flushes = (f"the archiver writes an object every {DEFAULT_BUFFER_SECONDS} s or 5 MiB by default "
               "(Firehose: archiveBufferSeconds)")
    if not isinstance(archive, LocalArchive):
        return f"no archive objects in range {span}; {flushes}"
    newest = max((archive.root / ARCHIVE_PREFIX).glob("*/*/*/*/*.gz"), default=None)
    parts = [f"no archive objects in range {span}",
             f"the newest is {newest.relative_to(archive.root).as_posix()}" if newest else "the archive is empty"]
    from clickstream.stream import STREAM_FILE, LocalStream

    if (data_dir / STREAM_FILE).is_file():
        stream = LocalStream(data_dir)
        try:
            waiting = stream.last_seq() - stream.checkpoint(ARCHIVER_CONSUMER)
        finally:
            stream.close()
        if waiting > 0:
            parts.append(f"{waiting:,} records wait in the stream, not archived yet: {flushes}; write them now "
                         f"with `clickstream archive --flush --data-dir {data_dir}`")
            return "; ".join(parts)
    parts.append(flushes)
    return "; ".join(parts)


def _cmd_archive(args: argparse.Namespace) -> int:
    import time

    from clickstream.archive import ARCHIVE_DIR, ARCHIVER_CONSUMER, FLUSH_REQUEST_FILE, Archiver
    from clickstream.query import running  # local.json of a live `clickstream local`, or None
    from clickstream.stream import LocalStream

    if not _require_pipeline(args.data_dir, "archive"):
        return 2
    stream = LocalStream(args.data_dir)
    try:
        last, done = stream.last_seq(), stream.checkpoint(ARCHIVER_CONSUMER)
        if args.flush and last > done:
            if running(args.data_dir):
                # The running archiver owns the checkpoint: ask it, and wait until it has passed `last`.
                (args.data_dir / FLUSH_REQUEST_FILE).touch()
                deadline = time.monotonic() + args.timeout
                while stream.checkpoint(ARCHIVER_CONSUMER) < last:
                    if time.monotonic() > deadline:
                        print(f"clickstream archive: the running pipeline's archiver did not flush within "
                              f"{args.timeout:g} s", file=sys.stderr)
                        return 1
                    time.sleep(0.1)
            else:
                Archiver(args.data_dir).run_once(stream, force=True)
        archived = stream.checkpoint(ARCHIVER_CONSUMER)
    finally:
        stream.close()
    objects = sorted((args.data_dir / ARCHIVE_DIR).rglob("*.gz"))
    newest = objects[-1].relative_to(args.data_dir / ARCHIVE_DIR).as_posix() if objects else "none"
    flushed = f"flushed {archived - done:,} records; " if args.flush else ""
    print(f"{flushed}{archived:,} of {last:,} stream records archived, {last - archived:,} waiting; "
          f"{len(objects):,} objects in {args.data_dir / ARCHIVE_DIR}, newest {newest}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from clickstream import bench

    chosen = args.scenario or ["batch", "single", "load", "replay"]
    http = [s for s in chosen if s in ("batch", "single")]
    steps = bench.Steps(bench.http_steps(http) + ("load" in chosen) + ("replay" in chosen))
    figures = bench.run_bench(http, args.seconds, args.connections, args.batch_size, steps) if http else []
    loader = replayed = None
    if "load" in chosen:
        with steps.step(f"load: {args.load_events:,} events merged into DuckDB") as note:
            loader = bench.bench_loader(args.load_events)
            note["result"] = f"{loader.events_per_s:,.0f} events/s"
    if "replay" in chosen:
        with steps.step(f"replay: {args.load_events:,} archived records into the local stream") as note:
            replayed = bench.bench_replay(args.load_events)
            note["result"] = f"{replayed['records_per_second']:,.0f} records/s"
    if args.json:
        print(json.dumps({"http": json.loads(bench.to_json(figures)),
                          "loader": dataclasses.asdict(loader) if loader else None, "replay": replayed}, indent=2))
        return 0
    if figures:
        bench.print_table(figures)
    if loader:
        print(f"warehouse loader: {loader.events:,} events merged into DuckDB in {loader.seconds} s = "
              f"{loader.events_per_s:,.0f} events/s (batches of {loader.batch:,}; "
              f"{loader.rows_in_events:,} rows in events); then Segment's per-source tables in "
              f"{loader.segment_seconds} s ({loader.segment_rows_in_tracks:,} rows in bench.tracks)")
    if replayed:
        print(f"replay: {replayed['records']:,} archived records from {replayed['objects']} gzip objects into the "
              f"local stream in {replayed['seconds']:.2f} s = {replayed['records_per_second']:,.0f} records/s")
    return 0


def _write_keys(specs: Sequence[str] | None) -> dict[str, str]:
    if specs:
        return contract.parse_write_keys(specs)
    env = os.environ.get(contract.WRITE_KEYS_ENV)
    if env:
        return contract.parse_write_keys([env])
    return {contract.DEV_WRITE_KEY: contract.DEV_SOURCE}


def _port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (None if it can), checked before anything is printed.

    The socket options are uvicorn's (SO_REUSEADDR), so a port left in TIME_WAIT counts as free and
    only a live listener counts as busy.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve --host {host}: {exc.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            import errno

            if exc.errno == errno.EADDRINUSE:
                return (f"port {port} on {host} is already in use (another `clickstream local`?): stop it, or "
                        f"choose another port with --port N (make run PORT=N)")
            return f"cannot listen on {host}:{port}: {exc.strerror}"
    return None


def _require_pipeline(data_dir: Path, command: str) -> bool:
    """Refuse a data dir that holds no local stream: a typo in --data-dir would otherwise create an
    empty one there and print nothing."""
    from clickstream.stream import STREAM_FILE

    if (data_dir / STREAM_FILE).is_file():
        return True
    print(f"clickstream {command}: no local pipeline in {data_dir} (no {STREAM_FILE}): check --data-dir "
          f"(env {DATA_DIR_ENV}), or create one with `clickstream local --data-dir {data_dir}`", file=sys.stderr)
    return False


def _cmd_local(args: argparse.Namespace) -> int:
    from clickstream.local import run_local
    from clickstream.server import ServerLimits
    from clickstream.stream import Limits

    try:
        keys = _write_keys(args.write_keys)
    except contract.WriteKeyError as exc:
        print(f"clickstream local: {exc}", file=sys.stderr)
        return 2
    problem = _port_problem(args.host, args.port)
    if problem:
        print(f"clickstream local: {problem}", file=sys.stderr)
        return 1
    return run_local(
        host=args.host, port=args.port, data_dir=args.data_dir, write_keys=keys, origins=args.origins or ["*"],
        archive_buffer_bytes=int(args.archive_buffer_mb * 1024 * 1024),
        archive_buffer_seconds=args.archive_buffer_seconds, load_interval=args.load_interval,
        limits=Limits(max_backlog=args.max_backlog, min_free_bytes=args.min_free_mb * 2**20),
        server_limits=ServerLimits(header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                                   max_connections=args.max_connections),
        forwarded_allow_ips=args.forwarded_allow_ips,
    )


def _cmd_query(args: argparse.Namespace) -> int:
    from clickstream.query import QueryError, format_rows, run_query

    try:
        columns, rows = run_query(args.data_dir, args.sql)
    except QueryError as exc:
        print(f"clickstream query: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(format_rows(columns, rows, args.format, color=sys.stdout.isatty()))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from clickstream import health
    from clickstream.query import running
    from clickstream.stream import STREAM_FILE

    state = running(args.data_dir)
    where = None
    if state and state.get("health_url"):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(state["health_url"], timeout=10) as response:
                doc = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 503: degraded, same document
            doc = json.loads(exc.read())
        except OSError as exc:
            print(f"clickstream status: the pipeline (pid {state['pid']}) does not answer: {exc}", file=sys.stderr)
            return 1
        where = f"pid {state['pid']}, {state['health_url'].rsplit('/', 1)[0]}"
    elif (args.data_dir / STREAM_FILE).exists():
        doc = health.offline(args.data_dir)
    else:
        print(f"clickstream status: no pipeline data in {args.data_dir}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        sys.stdout.write(health.format_status(doc, where))
    return {"ok": 0, "degraded": 1}.get(doc["status"], 3)


def _cmd_records(args: argparse.Namespace) -> int:
    import json

    from clickstream.stream import LocalStream

    if not _require_pipeline(args.data_dir, "records"):
        return 2
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
