"""``clickstream cost``: what the deployed design costs per month and per million events.

Prices live in ``prices.json`` (one file, with its date and sources); this module only holds the
usage model, written out so that each line of the estimate can be checked by hand (docs/cost.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from importlib import resources

from clickstream.sqlmodel import redshift_statements

DAYS_PER_MONTH = 30.4
HOURS_PER_MONTH = DAYS_PER_MONTH * 24
GB = 1024**3
ENVELOPE_OVERHEAD_BYTES = 260  # source, receivedAt, requestId, ip, userAgent, route ... (docs/envelope.md)
ACCESS_LOG_BYTES_PER_REQUEST = 350
# Per refresh run: 4 states before the Map, then per statement ~5 transitions (execute, wait,
# describe, choice, succeed) with one poll.
TRANSITIONS_BEFORE_MAP = 6
TRANSITIONS_PER_STATEMENT = 5


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
    rpu: int = 8
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

    runs = DAYS_PER_MONTH * 24 * 60 / u.refresh_minutes
    statements = len(redshift_statements("refresh", _names()))
    transitions = runs * (TRANSITIONS_BEFORE_MAP + TRANSITIONS_PER_STATEMENT * statements)
    step_functions = transitions / 1000 * p["step_functions_per_thousand_transitions"]
    busy = max(u.refresh_busy_seconds, p["redshift_serverless_minimum_seconds"])
    redshift = runs * busy / 3600 * u.rpu * p["redshift_serverless_rpu_hour"]
    api = _tiered(requests, p["api_gateway_rest_per_million_requests"])
    logs = requests * ACCESS_LOG_BYTES_PER_REQUEST / GB * p["cloudwatch_logs_ingest_per_gb"]
    return Estimate(api, logs, kinesis, firehose, s3_storage, s3_requests, step_functions, redshift)


def _names():
    from clickstream.sqlmodel import ModelNames

    return ModelNames()


def per_million(u: Usage, e: Estimate) -> float:
    return e.total / (u.events_per_day * DAYS_PER_MONTH / 1e6)
