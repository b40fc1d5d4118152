"""The tracking API contract: routes, limits, write-key rules, error codes and the record envelope.

This module is the single home of these facts. The local collector enforces them directly and the
API Gateway mapping templates are rendered from them (see ``clickstream.templates``), so the
deployed API and ``clickstream local`` cannot drift apart.

Wire behaviour follows Segment's HTTP Tracking API as the official SDKs really use it.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

API_PREFIX = "/v1"

# Single-message routes: path segment -> the message type implied by the path.
# The long names are Segment's HTTP API; the one-letter names are analytics.js/analytics-next.
SINGLE_ROUTES: dict[str, str] = {
    "identify": "identify",
    "track": "track",
    "page": "page",
    "screen": "screen",
    "group": "group",
    "alias": "alias",
    "i": "identify",
    "t": "track",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}
# Batch routes: python/node/go use /v1/batch, ruby/java /v1/import, analytics-next batching /v1/b.
BATCH_ROUTES: tuple[str, ...] = ("batch", "import", "b")
# analytics-next client metrics: accepted and answered 200, nothing stored.
METRICS_ROUTE = "m"
# GET: analytics-next loads its settings from <cdnURL>/v1/projects/<writeKey>/settings.
SETTINGS_PARAM = "writeKey"
SETTINGS_PATH = API_PREFIX + "/projects/{" + SETTINGS_PARAM + "}/settings"
# API Gateway serves every POST tracking route from one resource, ``/v1/{route}``, with one method
# and one request template that checks the route itself (unknown routes get 404 there too): one
# copy of the template (and of the write keys) instead of one per route keeps the stack template
# small. Static resources (``/v1/m``, ``/v1/projects``) take precedence over the path variable
# (https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-method-settings-method-request.html).
ROUTE_PARAM = "route"
TRACKING_RESOURCE = API_PREFIX + "/{" + ROUTE_PARAM + "}"
SETTINGS_PREFIX, _, SETTINGS_SUFFIX = SETTINGS_PATH.partition("{writeKey}")

MESSAGE_TYPES: tuple[str, ...] = ("identify", "track", "page", "screen", "group", "alias")

# Limits. Every size is counted in UTF-8 bytes, locally and in the mapping template (which gets
# the byte count of a string from the length of its $util.base64Encode, not from .length(), which
# counts UTF-16 units; docs/ingest.md "One size rule"), so a request accepted locally is accepted
# in AWS and the other way round.
# Segment documents 32 KB per message and 500 KB per batch request; the SDKs flush at
# 450-480 KB of payload and then add the batch wrapper, so requests get headroom up to 512 KiB.
MAX_MESSAGE_BYTES = 32 * 1024
MAX_REQUEST_BYTES = 512 * 1024
# Segment allows 2500 messages per batch, but one Kinesis PutRecords call takes at most 500
# records (https://docs.aws.amazon.com/kinesis/latest/APIReference/API_PutRecords.html) and
# API Gateway makes exactly one call per request. Every official SDK flushes far below this
# (python 100, node 15, ruby 100, java/go 250), so the deployed limit is Kinesis's, and local
# mode enforces the same number so that a batch accepted locally is accepted in AWS.
KINESIS_MAX_RECORDS_PER_PUT = 500
# Kinesis counts a record as its data blob plus its partition key, and a PutRecords request as the
# sum of its records. AWS raised both limits in 2025 (10 MiB), but older streams and regions and
# the PutRecords page of older docs say 1 MiB per record and 5 MiB per request: we design for those
# (https://docs.aws.amazon.com/kinesis/latest/APIReference/API_PutRecords.html,
# https://docs.aws.amazon.com/streams/latest/dev/service-sizes-and-limits.html).
# A request whose records would exceed them is refused with 413 (records_too_large) and writes
# nothing: Kinesis would refuse the whole call and the SDKs would retry it forever.
KINESIS_MAX_RECORD_BYTES = 1024 * 1024
KINESIS_MAX_BYTES_PER_PUT = 5 * 1024 * 1024
MAX_BATCH_ITEMS = KINESIS_MAX_RECORDS_PER_PUT
SEGMENT_MAX_BATCH_ITEMS = 2500
MAX_MESSAGE_ID_CHARS = 100
# Kinesis partition keys are 1-256 Unicode characters.
MAX_PARTITION_KEY_CHARS = 256
# The User-Agent is copied into every record of a request: it is cut to this many characters
# (UTF-16 units, as the template's substring counts; HTTP headers are Latin-1, one unit each) so a
# huge header cannot multiply into the stream. Real browsers send 100-300 characters.
MAX_USER_AGENT_CHARS = 1024


def record_bytes(partition_key: str, data: bytes) -> int:
    """What one record counts against Kinesis's limits: data blob plus UTF-8 partition key."""
    return len(data) + len(partition_key.encode("utf-8"))


def records_limit_error(sizes: Iterable[int]) -> str | None:
    """Why records of these sizes (see :func:`record_bytes`) cannot be one PutRecords call, or None.

    The mapping template applies the same two rules to the same byte counts (request.vtl step 6).
    """
    total = 0
    for index, size in enumerate(sizes):
        if size > KINESIS_MAX_RECORD_BYTES:
            return (f"record {index} would be {size} bytes with its envelope; Kinesis takes at most "
                    f"{KINESIS_MAX_RECORD_BYTES} per record (send smaller messages or a smaller batch context)")
        total += size
    if total > KINESIS_MAX_BYTES_PER_PUT:
        return (f"the request's records would be {total} bytes with their envelopes; Kinesis takes at most "
                f"{KINESIS_MAX_BYTES_PER_PUT} per request (send fewer messages per batch or a smaller "
                "batch context)")
    return None


def bound_user_agent(user_agent: str | None) -> str | None:
    """The User-Agent as the envelope records it: at most MAX_USER_AGENT_CHARS UTF-16 units."""
    if user_agent is None or len(user_agent) * 2 <= MAX_USER_AGENT_CHARS:
        return user_agent  # fast path: even all-astral text of this length fits
    units = user_agent.encode("utf-16-le", "surrogatepass")
    if len(units) <= 2 * MAX_USER_AGENT_CHARS:
        return user_agent
    return units[: 2 * MAX_USER_AGENT_CHARS].decode("utf-16-le", "surrogatepass")


# Media types that have a request mapping template in API Gateway; any other type gets 415 there
# (passthrough behaviour NEVER), so local mode answers 415 as well. A missing Content-Type is
# treated as application/json, as API Gateway does.
ACCEPTED_MEDIA_TYPES: tuple[str, ...] = ("application/json", "text/plain")
DEFAULT_MEDIA_TYPE = "application/json"
ACCEPTED_CONTENT_ENCODINGS: tuple[str, ...] = ("identity", "gzip", "deflate")

# CORS: analytics-next sends Authorization (1.84+) and X-Retry-Count; Authorization must be named.
CORS_ALLOW_METHODS = "GET, POST, OPTIONS"
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Content-Encoding, X-Retry-Count"
CORS_MAX_AGE_SECONDS = 86400

# Seconds a client should wait before retrying a transient failure.
RETRY_AFTER_SECONDS = 1

SUCCESS_BODY = '{"success":true}'


@dataclass(frozen=True)
class ErrorCode:
    """An error the API can answer with: HTTP status and the Segment-style ``code``."""

    code: str
    status: int
    message: str

    @property
    def retryable(self) -> bool:
        return self.status >= 500 or self.status == 429


# Every error response the tracking API gives. The SDKs give up on 4xx (except 429) and retry 5xx,
# so only requests that can never succeed get a 4xx.
ERRORS: dict[str, ErrorCode] = {
    e.code: e
    for e in (
        ErrorCode("invalid_write_key", 401, "missing or unknown write key"),
        ErrorCode("invalid_json", 400, "request body is not valid JSON"),
        ErrorCode("invalid_request", 400, "request body is not a Segment message or batch"),
        ErrorCode("invalid_encoding", 400, "request body could not be decompressed"),
        ErrorCode("message_too_large", 400, f"a message is larger than {MAX_MESSAGE_BYTES} bytes"),
        ErrorCode("batch_too_large", 400, f"a batch holds more than {MAX_BATCH_ITEMS} messages"),
        ErrorCode("empty_batch", 400, "the batch holds no messages"),
        ErrorCode("request_too_large", 413, f"request body is larger than {MAX_REQUEST_BYTES} bytes"),
        ErrorCode("records_too_large", 413,
                  f"the request's stream records would exceed Kinesis limits ({KINESIS_MAX_RECORD_BYTES} bytes "
                  f"per record, {KINESIS_MAX_BYTES_PER_PUT} per request, envelopes included)"),
        ErrorCode("not_found", 404, "no such route"),
        ErrorCode("method_not_allowed", 405, "method not allowed on this route"),
        ErrorCode("unsupported_media_type", 415, "Content-Type must be application/json or text/plain"),
        ErrorCode("unsupported_encoding", 415, "Content-Encoding must be gzip, deflate or identity"),
        ErrorCode("throttled", 429, "too many requests; retry later"),
        ErrorCode("unavailable", 503, "events could not be stored; retry later"),
        ErrorCode("internal_error", 500, "internal error; retry later"),
    )
}

# Errors the request mapping template itself can detect. On API Gateway it signals them by
# aiming PutRecords at a stream named REJECT_STREAM_PREFIX + code, which fails with a 4xx whose
# message names that stream; the integration response recognises the name (docs/ingest.md).
TEMPLATE_REJECTIONS: tuple[str, ...] = (
    "not_found",
    "invalid_write_key",
    "invalid_request",
    "message_too_large",
    "batch_too_large",
    "empty_batch",
    "request_too_large",
    "records_too_large",
)
REJECT_STREAM_PREFIX = "clickstream-reject-"
# Kinesis errors that mean "slow down" (HTTP 400 from Kinesis) become 429 for the SDKs.
KINESIS_THROTTLING_ERRORS: tuple[str, ...] = (
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "KMSThrottlingException",
)


def error_body(code: str, message: str | None = None) -> dict[str, str]:
    err = ERRORS[code]
    return {"code": err.code, "message": message or err.message}


# ---------------------------------------------------------------------------------------------
# Write keys
# ---------------------------------------------------------------------------------------------
# A key is what SDKs put in Basic auth or the body; it maps to a source name, which is what the
# envelope and the warehouse record. Both are restricted to characters that are safe to embed in
# a mapping template, a URL path segment and a stage variable.
WRITE_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-.]{8,128}$")
SOURCE_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,62}$")
DEV_WRITE_KEY = "dev-write-key"
DEV_SOURCE = "dev"
WRITE_KEYS_ENV = "CLICKSTREAM_WRITE_KEYS"


class WriteKeyError(ValueError):
    """A write-key specification that cannot be used."""


def parse_write_key(spec: str) -> tuple[str, str]:
    """Parse ``KEY`` or ``KEY=source``; a bare key is its own source, lower-cased."""
    key, sep, source = spec.strip().partition("=")
    key = key.strip()
    source = source.strip() if sep else re.sub(r"[^a-z0-9_\-]", "-", key.lower())[:63]
    if not WRITE_KEY_PATTERN.match(key):
        raise WriteKeyError(
            f"write key {key!r} must be 8-128 characters of letters, digits, '_', '-' or '.'"
        )
    if not SOURCE_NAME_PATTERN.match(source):
        raise WriteKeyError(
            f"source name {source!r} (for write key {key[:4]}...) must be 1-63 characters of "
            "lower-case letters, digits, '_' or '-', starting with a letter or digit"
        )
    return key, source


def parse_write_keys(specs: Iterable[str] | Mapping[str, str]) -> dict[str, str]:
    """Build the key -> source table from ``KEY=source`` strings or a mapping; all errors at once."""
    items = [f"{k}={v}" for k, v in specs.items()] if isinstance(specs, Mapping) else list(specs)
    table: dict[str, str] = {}
    errors: list[str] = []
    for spec in items:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            try:
                key, source = parse_write_key(part)
            except WriteKeyError as exc:
                errors.append(str(exc))
                continue
            if key in table and table[key] != source:
                errors.append(f"write key {key[:4]}... is given twice with different sources")
            table[key] = source
    if errors:
        raise WriteKeyError("; ".join(errors))
    if not table:
        raise WriteKeyError("at least one write key is required")
    return table


def write_key_from_basic_auth(header: str | None) -> str | None:
    """The key in ``Authorization: Basic base64(key:)``; the colon and password are optional."""
    if not header or header[:6].lower() != "basic ":  # the scheme is case-insensitive (RFC 7617 section 2)
        return None
    # Same decoding as $util.base64Decode in the mapping template, so both find the same key.
    try:
        decoded = base64.b64decode(header[6:], validate=False).decode("utf-8", "replace")
    except ValueError:
        return None
    key = decoded.split(":", 1)[0]
    return key or None


def resolve_write_key(authorization: str | None, body_key: object) -> str | None:
    """Basic auth first, then the body's ``writeKey`` (python, node <=3.0 and analytics-next send it there)."""
    key = write_key_from_basic_auth(authorization)
    if key:
        return key
    return body_key if isinstance(body_key, str) and body_key else None


# ---------------------------------------------------------------------------------------------
# The record envelope (docs/envelope.md is its prose twin; tests check they agree)
# ---------------------------------------------------------------------------------------------
ENVELOPE_VERSION = 1
# Field name -> what it holds. Order is the order in the serialized record.
ENVELOPE_FIELDS: dict[str, str] = {
    "v": "envelope version (integer, currently 1)",
    "source": "source name the write key maps to (never the key itself)",
    "receivedAt": "time the gateway received the request, epoch milliseconds (integer)",
    "requestId": "gateway request id (API Gateway $context.requestId; locally UUID-shaped: random, then counted)",
    "index": "position of the message in its request (0 for single-message routes)",
    "ip": "client source IP as the gateway saw it",
    "userAgent": f"User-Agent header of the request (first {MAX_USER_AGENT_CHARS} characters), or null",
    "route": "path segment after /v1/ the request came to (track, t, batch, import, b, ...)",
    "routeType": "message type implied by a single-message route, or null for batch routes",
    "message": "the message exactly as sent (a JSON object)",
    "batch": "for batch routes: {sentAt, context, integrations} of the batch (each null when absent); "
    "null for single-message routes",
}
# Replay appends one member to the envelopes it puts back on the stream, after "batch" (the
# envelope's fields above stay as they were): the archiver does not archive such records again,
# and replay never replays them (docs/envelope.md "Replayed records"). A byte suffix, so both
# checks cost no JSON parse.
REPLAYED_MARK = b',"replayed":true}\n'


def mark_replayed(data: bytes) -> bytes:
    """The envelope ``data`` marked as a replayed copy (unchanged if marked or not an object line)."""
    if data.endswith(REPLAYED_MARK) or not data.endswith(b"}\n"):
        return data
    return data[:-2] + REPLAYED_MARK


def is_replayed(data: bytes) -> bool:
    return data.endswith(REPLAYED_MARK)


# Partition key: "<requestId>:<index>". It spreads the messages of one large batch over all shards
# (one shard takes 1 MB/s), is at most ~50 characters, and needs nothing from the client-controlled
# body. Order across messages is not kept by Kinesis anyway beyond one key; the warehouse orders by
# timestamp and deduplicates by messageId.
def partition_key(request_id: str, index: int) -> str:
    return f"{request_id}:{index}"  # request.vtl: "$context.requestId:$index"


class Record(NamedTuple):
    """One stream record, as Kinesis holds it: partition key and data (an envelope line).

    A tuple rather than a frozen dataclass: a 100-message batch builds 100 of these per request.
    """

    partition_key: str
    data: bytes


def route_of(path: str) -> str | None:
    """The route segment of a tracking path (``/v1/t`` -> ``t``), or None if it is not one."""
    if not path.startswith(API_PREFIX + "/"):
        return None
    segment = path[len(API_PREFIX) + 1 :].rstrip("/")
    if segment in SINGLE_ROUTES or segment in BATCH_ROUTES or segment == METRICS_ROUTE:
        return segment
    return None


def tracking_paths() -> list[str]:
    """Every POST path of the tracking API, in a stable order."""
    return [f"{API_PREFIX}/{r}" for r in (*SINGLE_ROUTES, *BATCH_ROUTES, METRICS_ROUTE)]


def error_statuses() -> list[int]:
    """Every status the tracking API can answer with besides 200."""
    return sorted({e.status for e in ERRORS.values()})


def settings_body(write_key: str, api_host: str, protocol: str = "https") -> dict:
    """What analytics-next needs from its settings endpoint; ``api_host`` has no scheme."""
    return {
        "integrations": {
            "Segment.io": {"apiKey": write_key, "apiHost": api_host, "protocol": protocol},
        },
        "plan": {"track": {"__default": {"enabled": True}}, "identify": {"__default": {"enabled": True}}},
        "metrics": {"sampleRate": 0},
    }
