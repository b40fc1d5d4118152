"""``clickstream cost``: what the deployed design costs per month and per million events.

Prices live in ``prices.json`` (one file, with its date and sources); this module only holds the
usage model, written out so that each line of the estimate can be checked by hand (docs/cost.md).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

# The deployed defaults the estimate starts from (clickstream.config takes them from here:
# serverlessBaseCapacity, serverlessUsageLimitRpuHours) and the base capacities Serverless accepts,
# 4 or 8 to 512 in steps of 8 (https://docs.aws.amazon.com/redshift/latest/mgmt/serverless-capacity.html).
DEFAULT_RPU = 8
DEFAULT_USAGE_LIMIT_RPU_HOURS = 1500
SERVERLESS_BASE_CAPACITIES = (4, *range(8, 513, 8))
DAYS_PER_MONTH = 30.4
HOURS_PER_MONTH = DAYS_PER_MONTH * 24
GB = 1024**3
ENVELOPE_OVERHEAD_BYTES = 260  # source, receivedAt, requestId, ip, userAgent, route ... (docs/envelope.md)
ACCESS_LOG_BYTES_PER_REQUEST = 350
# Per refresh run: 6 states before the Map, then per workflow step (one statement, or one batch of
# consecutive transaction statements) ~6 transitions with one poll: choice, execute, wait, describe,
# choice, succeed; then one for the segment_tables Lambda task (workflows.SEGMENT_TABLES_STATE).
TRANSITIONS_BEFORE_MAP = 6
TRANSITIONS_PER_STEP = 6
TRANSITIONS_AFTER_MAP = 1


def prices() -> dict:
    return json.loads(resources.files("clickstream").joinpath("prices.json").read_text())


@dataclass(frozen=True)
class Usage:
    events_per_day: float
    batch_size: float = 20.0  # events per HTTP request (browsers send 1, servers 15-100)
    avg_event_bytes: int = 600  # the message as the SDK sends it
    stream_mode: str = "on-demand"
    shards: int = 2
    refresh_minutes: float = 5.0
    refresh_busy_seconds: float = 30.0  # Redshift compute per refresh run
    segment_seconds: float = 10.0  # the segment_tables function per refresh run (it waits on the Data API)
    rpu: int = DEFAULT_RPU
    archive_months: float = 12.0  # months of archive kept (steady state)
    compression_ratio: float = 0.12  # gzip of NDJSON envelopes


@dataclass
class Estimate:
    api_gateway: float
    access_logs: float
    kinesis: float
    firehose: float
    s3_storage: float
    s3_requests: float
    step_functions: float
    segment_tables_lambda: float
    redshift_serverless: float

    @property
    def total(self) -> float:
        return sum(asdict(self).values())


def _tiered(count: float, tiers: list[list]) -> float:
    cost, left = 0.0, count
    for size, price in tiers:
        take = left if size is None else min(left, size)
        cost += take / 1e6 * price
        left -= take
        if left <= 0:
            break
    return cost


def estimate(u: Usage, p: dict | None = None) -> Estimate:
    p = p or prices()
    events = u.events_per_day * DAYS_PER_MONTH
    requests = events / max(u.batch_size, 1)
    record_bytes = u.avg_event_bytes + ENVELOPE_OVERHEAD_BYTES
    data_gb = events * record_bytes / GB

    if u.stream_mode == "on-demand":
        billed = math.ceil(record_bytes / p["kinesis_on_demand_record_rounding_bytes"]) * \
            p["kinesis_on_demand_record_rounding_bytes"]
        kinesis = (HOURS_PER_MONTH * p["kinesis_on_demand_stream_hour"]
                   + events * billed / GB * p["kinesis_on_demand_ingest_per_gb"]
                   # two readers: Firehose and Redshift streaming ingestion
                   + 2 * data_gb * p["kinesis_on_demand_retrieval_per_gb"])
    else:
        units = math.ceil(record_bytes / p["kinesis_put_unit_bytes"])
        kinesis = (u.shards * HOURS_PER_MONTH * p["kinesis_provisioned_shard_hour"]
                   + events * units / 1e6 * p["kinesis_provisioned_per_million_put_units"])

    rounding = p["firehose_record_rounding_bytes"]
    firehose_billed = math.ceil(record_bytes / rounding) * rounding
    firehose = events * firehose_billed / GB * p["firehose_kds_source_per_gb"]
    stored_gb = data_gb * u.compression_ratio * u.archive_months
    s3_storage = stored_gb * p["s3_standard_gb_month"]
    objects = HOURS_PER_MONTH * 12  # Firehose flushes at most every 300 s (more often only when 5 MiB fill)
    objects = max(objects, data_gb * u.compression_ratio * 1024 / 5)
    s3_requests = objects / 1000 * p["s3_put_per_thousand"]

    runs = refresh_runs(u)
    transitions = runs * (TRANSITIONS_BEFORE_MAP + TRANSITIONS_PER_STEP * refresh_steps() + TRANSITIONS_AFTER_MAP)
    step_functions = transitions / 1000 * p["step_functions_per_thousand_transitions"]
    segment_lambda = runs * (u.segment_seconds * segment_tables_memory_gb() * p["lambda_x86_gb_second"]
                             + p["lambda_per_million_requests"] / 1e6)
    redshift = rpu_hours(u, p) * p["redshift_serverless_rpu_hour"]
    api = _tiered(requests, p["api_gateway_rest_per_million_requests"])
    logs = requests * ACCESS_LOG_BYTES_PER_REQUEST / GB * p["cloudwatch_logs_ingest_per_gb"]
    return Estimate(api, logs, kinesis, firehose, s3_storage, s3_requests, step_functions, segment_lambda, redshift)


def segment_tables_memory_gb() -> float:
    """The deployed memory of the segment_tables function (the refresh's last step)."""
    from clickstream import workflows

    return workflows.SEGMENT_TABLES_MEMORY_MB / 1024


def refresh_runs(u: Usage) -> float:
    return DAYS_PER_MONTH * 24 * 60 / u.refresh_minutes


def refresh_steps() -> int:
    """Workflow steps of one refresh run, as the deployed state machine groups them."""
    from clickstream import workflows  # the SQL model: imported only when estimating
    from clickstream.sqlmodel import ModelNames

    return len(workflows.statements_for("refresh", ModelNames()))


def rpu_hours(u: Usage, p: dict | None = None) -> float:
    """RPU-hours per month: each run is billed at least the Serverless minimum, at the base capacity."""
    p = p or prices()
    busy = max(u.refresh_busy_seconds, p["redshift_serverless_minimum_seconds"])
    return refresh_runs(u) * busy / 3600 * u.rpu


def per_million(u: Usage, e: Estimate) -> float:
    return e.total / (u.events_per_day * DAYS_PER_MONTH / 1e6)


def report(u: Usage, e: Estimate, p: dict | None = None) -> dict[str, Any]:
    """The estimate as printed: dollars rounded to cents everywhere (the total is the sum of the
    unrounded lines, rounded once), per million events to 4 places, RPU-hours to whole hours."""
    p = p or prices()
    return {"usage": asdict(u), "monthly": {k: round(v, 2) for k, v in asdict(e).items()},
            "total": round(e.total, 2), "per_million_events": round(per_million(u, e), 4),
            "redshift_rpu_hours": round(rpu_hours(u, p)),
            "default_usage_limit_rpu_hours": DEFAULT_USAGE_LIMIT_RPU_HOURS,
            "prices_as_of": p["as_of"], "region": p["region"]}


def format_report(r: dict[str, Any]) -> str:
    lines = [f"Monthly cost, {r['region']} list prices as of {r['prices_as_of']} (clickstream/prices.json):"]
    lines += [f"  {name.replace('_', ' '):<22} ${value:>12,.2f}" for name, value in r["monthly"].items()]
    lines.append(f"  {'total':<22} ${r['total']:>12,.2f}")
    lines.append(f"  {'per million events':<22} ${r['per_million_events']:>12,.4f}")
    hours, limit = r["redshift_rpu_hours"], r["default_usage_limit_rpu_hours"]
    note = "within" if hours <= limit else "OVER: raise serverlessUsageLimitRpuHours or refresh less often"
    lines.append(f"  redshift RPU-hours: {hours:,} per month ({note} the default usage limit of {limit:,})")
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------
def _number(kind: Callable[[str], float], what: str, check: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse type: a clear "expected ..." error instead of a traceback or a negative dollar."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or not check(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    parse.__name__ = what  # argparse names the type in some messages
    return parse


def _rpu(text: str) -> int:
    value = _number(int, "4, or 8 to 512 in steps of 8", lambda v: v in SERVERLESS_BASE_CAPACITIES)(text)
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``clickstream cost``'s options: every input validated (a zero or negative rate has no cost)."""
    positive = _number(float, "a number > 0", lambda v: v > 0)
    at_least_one = _number(float, "a number >= 1", lambda v: v >= 1)
    positive_int = _number(int, "a whole number > 0", lambda v: v > 0)
    parser.add_argument("--events-per-day", type=positive, required=True, help="events per day (> 0)")
    parser.add_argument("--batch-size", type=at_least_one, default=20.0,
                        help="events per HTTP request, averaged over browsers (1) and servers (default 20)")
    parser.add_argument("--avg-event-bytes", type=positive_int, default=600, help="average message size (default 600)")
    parser.add_argument("--stream-mode", choices=["on-demand", "provisioned"], default="on-demand")
    parser.add_argument("--shards", type=positive_int, default=2, help="shards in provisioned mode (default 2)")
    parser.add_argument("--refresh-minutes", type=positive, default=5.0, help="warehouse refresh interval (default 5)")
    parser.add_argument("--refresh-busy-seconds", type=positive, default=30.0,
                        help="Redshift compute per refresh (default 30; billed at least 60)")
    parser.add_argument("--rpu", type=_rpu, default=DEFAULT_RPU,
                        help=f"Redshift Serverless base capacity (default {DEFAULT_RPU}, as deployed)")
    parser.add_argument("--archive-months", type=_number(float, "a number >= 0", lambda v: v >= 0), default=12.0,
                        help="months of archive kept (default 12)")
    parser.add_argument("--segment-seconds", type=positive, default=10.0,
                        help="run time of the segment_tables function per refresh (default 10)")


def run(args: argparse.Namespace) -> int:
    usage = Usage(events_per_day=args.events_per_day, batch_size=args.batch_size,
                  avg_event_bytes=args.avg_event_bytes, stream_mode=args.stream_mode, shards=args.shards,
                  refresh_minutes=args.refresh_minutes, refresh_busy_seconds=args.refresh_busy_seconds,
                  rpu=args.rpu, archive_months=args.archive_months, segment_seconds=args.segment_seconds)
    p = prices()
    r = report(usage, estimate(usage, p), p)
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0
