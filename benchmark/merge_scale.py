"""Merge time for a fixed batch of new events as the `events` table grows (DuckDB, the local model).

The merge must not rescan history: the new records are found with a literal watermark bound, and
duplicates are looked for only among the events received within the deduplication window. So for a
steady event rate the merge of 100K new events should take about the same time whether `events` holds
1M or 10M rows. This grows one warehouse file through the sizes given and times, at each size, the
merge (the refresh workflow's statements) of ``--batch`` new events built by the real ingest code.

    .venv/bin/python benchmark/merge_scale.py                # 1M, 2M, 5M, 10M
    .venv/bin/python benchmark/merge_scale.py --sizes 1000000,2000000 --batch 100000

History is synthetic (inserted with SQL, at ``--per-day`` events a day, with matching rows in the
streaming table below the watermark), the new batch is real envelopes through ``Warehouse.load``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from clickstream.ingest import RequestInfo, build_records
from clickstream.stream import StreamRecord
from clickstream.warehouse import Warehouse

DAY_MS = 86_400_000


def grow(wh: Warehouse, start: int, stop: int, now_ms: int, per_day: int) -> None:
    """Events start..stop-1, received at a steady rate up to just before now (oldest first, as
    they would have arrived), and the streaming-table rows they came from, all below the watermark."""
    step_ms = DAY_MS / per_day
    wh.conn.execute(f"""
        INSERT INTO clickstream.events (message_id, type, source, anonymous_id, user_id, event, event_text,
            received_at, "timestamp", properties, sequence_number, loaded_at)
        SELECT 'hist-' || i, 'track', 'web', NULL, 'user-' || (i % 50000), 'page_viewed', 'Page Viewed',
               make_timestamptz(CAST(({now_ms} - ({stop} - i) * {step_ms}) * 1000 AS BIGINT)),
               make_timestamptz(CAST(({now_ms} - ({stop} - i) * {step_ms}) * 1000 AS BIGINT)),
               '{{"path":"/p/' || (i % 1000) || '"}}', lpad(CAST(i AS VARCHAR), 20, '0'), now()
        FROM range({start}, {stop}) AS t(i)
    """)
    wh.conn.execute(f"""
        INSERT INTO clickstream.clickstream_stream (approximate_arrival_timestamp, partition_key, shard_id,
            sequence_number, refresh_time, payload, raw_data, record_bytes)
        SELECT TIMESTAMP '2000-01-01' + to_microseconds(i), 'k', 'local', lpad(CAST(i AS VARCHAR), 20, '0'),
               TIMESTAMP '2000-01-01' + to_microseconds(i), '{{}}', NULL, 2
        FROM range({start}, {stop}) AS t(i)
    """)
    wh.conn.execute("CHECKPOINT")


def new_batch(count: int, first_seq: int, now_ms: int) -> list[StreamRecord]:
    out: list[StreamRecord] = []
    per_request = 100
    for r in range(count // per_request):
        body = json.dumps({"writeKey": "k", "sentAt": "2026-01-01T00:00:00.100Z", "batch": [
            {"type": "track", "event": "Order Completed", "userId": f"user-{r}",
             "messageId": f"new-{first_seq}-{r}-{i}",
             "timestamp": "2026-01-01T00:00:00Z", "properties": {"revenue": 12.5, "currency": "EUR"},
             "context": {"library": {"name": "analytics-python", "version": "2.3.2"}, "locale": "fr-FR",
                         "page": {"url": "https://example.com/checkout", "path": "/checkout"}}}
            for i in range(per_request)]}).encode()
        info = RequestInfo("batch", f"req-{first_seq}-{r}", now_ms, "203.0.113.9", "bench")
        for rec in build_records(info, body, {"k": "web"}):
            out.append(StreamRecord(first_seq + len(out), rec.partition_key, rec.data, now_ms))
    return out


def timed_load(wh: Warehouse, batch: list[StreamRecord]) -> tuple[float, float]:
    """Seconds for the merge alone, and for the whole load (copy into the streaming table + merge)."""
    timed: dict[str, float] = {}
    merge = wh.merge

    def timed_merge() -> None:
        start = time.perf_counter()
        merge()
        timed["merge"] = time.perf_counter() - start

    wh.merge = timed_merge  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        wh.load(batch)
        return timed["merge"], time.perf_counter() - start
    finally:
        wh.merge = merge  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,2000000,5000000,10000000")
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--per-day", type=int, default=200_000, help="history's event rate")
    parser.add_argument("--repeat", type=int, default=2, help="batches merged at each size")
    parser.add_argument("--dir", type=Path, default=None, help="where the warehouse file goes (default: a temp dir)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="clickstream-merge-", dir=args.dir) as tmp:
        wh = Warehouse(Path(tmp) / "warehouse.duckdb")
        now_ms = int(time.time() * 1000)
        have = 0
        seq = 10**12  # above the synthetic history's sequence numbers
        timed_load(wh, new_batch(10_000, seq, now_ms))  # warm-up: the first merge pays one-off costs
        seq += 10_000
        have = 10_000
        print(f"{'events before':>14} {'new':>8} {'merge s':>8} {'load+merge s':>13} {'events after':>13}")
        for size in sizes:
            grow(wh, have, size, now_ms - DAY_MS // 2, args.per_day)
            have = size
            for _ in range(args.repeat):
                batch = new_batch(args.batch, seq, now_ms)
                seq += len(batch)
                merge_s, total_s = timed_load(wh, batch)
                after = wh.query("SELECT COUNT(*) FROM clickstream.events")[1][0][0]
                if after != have + len(batch):
                    raise SystemExit(f"expected {have + len(batch)} events, found {after}")
                print(f"{have:>14,} {len(batch):>8,} {merge_s:>8.2f} {total_s:>13.2f} {after:>13,}", flush=True)
                have = after
        wh.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
