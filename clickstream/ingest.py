"""Turn one tracking request into stream records: the local twin of the request mapping template.

Pure functions (no I/O) so the collector, the differential tests against the VTL and the
benchmarks all call the same code. The checks run in the same order as in
``templates/request.vtl`` so both answer the same error for the same request.
"""

from __future__ import annotations

import itertools
import re
import secrets
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from clickstream import contract
from clickstream.contract import Record


class IngestError(Exception):
    """A request the API refuses; ``code`` is a key of ``contract.ERRORS``."""

    def __init__(self, code: str, message: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.error = contract.ERRORS[code]
        self.code = code
        self.detail = message or self.error.message
        self.headers = headers or {}
        super().__init__(f"{code}: {self.detail}")

    @property
    def status(self) -> int:
        return self.error.status

    def body(self) -> bytes:
        return orjson.dumps(contract.error_body(self.code, self.detail))


@dataclass(frozen=True)
class RequestInfo:
    """What the gateway knows about a request besides its body."""

    route: str
    request_id: str
    received_at_ms: int
    ip: str
    user_agent: str | None = None
    authorization: str | None = None


class RequestIds:
    """UUID-shaped request ids, like API Gateway's ``$context.requestId``: a random prefix and a counter.

    Not ``uuid.uuid4()`` per request: it reads the OS random source in a call that releases the GIL,
    the stream writer thread takes the GIL then, and the event loop waits for it (measured with the
    server and the load generator on one core: 6,500 -> 12,000 single-event requests/s without it).
    64 random bits per process keep ids unique across restarts; the counter within one.
    """

    def __init__(self) -> None:
        hi, lo = secrets.randbits(64), secrets.randbits(64)
        self._prefix = f"{hi >> 32:08x}-{(hi >> 16) & 0xFFFF:04x}-{hi & 0xFFFF:04x}-"
        self._counter = itertools.count(lo)

    def __call__(self) -> str:
        n = next(self._counter) & 0xFFFF_FFFF_FFFF_FFFF
        return f"{self._prefix}{n >> 48:04x}-{n & 0xFFFF_FFFF_FFFF:012x}"


def media_type_ok(content_type: str | None) -> bool:
    """API Gateway picks a template by media type; parameters such as charset do not matter."""
    media = (content_type or contract.DEFAULT_MEDIA_TYPE).split(";", 1)[0].strip().lower()
    return media in contract.ACCEPTED_MEDIA_TYPES


# Compressed bytes allowed beyond the decompressed limit: deflate's worst case for incompressible
# data is 5 bytes per 64 KiB stored block, plus gzip's 18-byte frame (RFC 1951 3.2.4, RFC 1952 2.3).
COMPRESSION_OVERHEAD_BYTES = 1024


class BodyReader:
    """Accumulates a request body chunk by chunk, inflating it if needed, within the size limit.

    The limit applies to the decompressed bytes while they are produced, so a gzip bomb costs at
    most ``limit`` bytes of memory before it is refused; the compressed bytes are bounded too, so
    nothing after the end of the compressed data can be buffered without limit. A gzip body may
    hold several members (RFC 1952 2.2: "a series of members"), read one after the other like
    ``gzip -d`` does; any other bytes after the end of the compressed data refuse the request
    rather than being dropped behind a 200.
    """

    def __init__(self, content_encoding: str | None, limit: int = contract.MAX_REQUEST_BYTES) -> None:
        encoding = (content_encoding or "identity").strip().lower()
        if encoding not in contract.ACCEPTED_CONTENT_ENCODINGS:
            raise IngestError("unsupported_encoding")
        self._encoding = encoding
        # wbits 47 = 32 + 15: accept both gzip and zlib ("deflate" in HTTP) framing.
        self._inflater = zlib.decompressobj(47) if encoding != "identity" else None
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._compressed = 0

    def _add(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise IngestError("request_too_large")
        self._parts.append(data)

    def feed(self, chunk: bytes) -> None:
        if self._inflater is None:
            self._add(chunk)
            return
        self._compressed += len(chunk)
        if self._compressed > self._limit + COMPRESSION_OVERHEAD_BYTES:
            raise IngestError("request_too_large", f"compressed request body is larger than {self._limit} bytes")
        data = chunk
        try:
            while data:
                if self._inflater.eof:  # one member ended; only another gzip member may follow
                    if self._encoding != "gzip":
                        raise IngestError("invalid_encoding", "bytes after the end of the compressed body")
                    self._inflater = zlib.decompressobj(31)
                # room >= 1 here (_add raises past the limit), so max_length is never 0 ("no limit")
                self._add(self._inflater.decompress(data, self._limit + 1 - self._size))
                data = self._inflater.unused_data if self._inflater.eof else self._inflater.unconsumed_tail
        except zlib.error as exc:
            raise IngestError("invalid_encoding", f"request body could not be decompressed: {exc}") from exc

    def finish(self) -> bytes:
        if self._inflater is not None:
            try:
                self._add(self._inflater.flush())
            except zlib.error as exc:
                raise IngestError("invalid_encoding", f"request body could not be decompressed: {exc}") from exc
            if not self._inflater.eof:
                raise IngestError("invalid_encoding", "compressed request body is truncated")
        return b"".join(self._parts)


def parse_body(body: bytes) -> Any:
    if not body.strip():
        raise IngestError("invalid_json", "request body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise IngestError("invalid_json", f"request body is not valid JSON: {exc}") from exc


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError as exc:  # e.g. lone surrogates from \ud800 escapes
        raise IngestError("invalid_json", f"request body holds a value that is not valid JSON: {exc}") from exc


def _batch_field(value: Any) -> Any:
    """Absent, null and "" all become null: the mapping template cannot tell them apart."""
    return None if value is None or value == "" else value


_FIELDS = list(contract.ENVELOPE_FIELDS)
_INDEX, _MESSAGE = _FIELDS.index("index"), _FIELDS.index("message")
assert 0 < _INDEX < _MESSAGE - 1 < len(_FIELDS) - 2, "the envelope frame needs fields around index and message"
assert _FIELDS[:2] == ["v", "source"]
# How every record the collector writes begins (orjson, compact). The local loader takes these as
# valid SUPER JSON (orjson writes no repeated key and no NaN) and checks only other records.
RECORD_PREFIX = f'{{"v":{contract.ENVELOPE_VERSION},"source":'


def _envelope_frame(fields: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    """The bytes of one request's envelopes around their two per-message values, index and message.

    Serialising the request-wide fields once and splicing each message in is faster for a batch
    than one orjson.dumps per envelope, and gives the same bytes (a test holds them equal).
    """

    def members(names: list[str]) -> bytes:
        return orjson.dumps({name: fields[name] for name in names})[1:-1]

    return (b"{" + members(_FIELDS[:_INDEX]) + b',"index":',
            b"," + members(_FIELDS[_INDEX + 1 : _MESSAGE]) + b',"message":',
            b"," + members(_FIELDS[_MESSAGE + 1 :]) + b"}\n")


_PLAIN_ASCII = re.compile(r'[ !#-\[\]-~]*')
_SHORT_ESCAPES = {8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}


def _escape_like_template(text: str) -> str:
    """``$util.escapeJavaScript`` (commons-lang 2: UTF-16 units above 0x7F as ``\\uXXXX``) minus ``\\'``/``\\/``."""
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if code > 0xFFFF:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04X}\\u{0xDC00 + (code & 0x3FF):04X}")
        elif code > 0x7F:
            out.append(f"\\u{code:04X}")
        elif code < 0x20:
            out.append(_SHORT_ESCAPES.get(code, f"\\u{code:04X}"))
        elif ch in '"\\':
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def user_agent_json(user_agent: str | None) -> bytes:
    """The envelope's ``userAgent`` value: bounded, and the very bytes the mapping template writes.

    Same bytes in both places keep the two record-size checks identical. Most User-Agents are
    printable ASCII without quotes or backslashes and are copied as they are.
    """
    bounded = contract.bound_user_agent(user_agent)
    if bounded is None:
        return b"null"
    if _PLAIN_ASCII.fullmatch(bounded):
        return b'"' + bounded.encode("ascii") + b'"'
    return b'"' + _escape_like_template(bounded).encode("ascii") + b'"'


def check_record_limits(records: list[Record]) -> None:
    """Refuse (413 records_too_large) records that Kinesis would not take in one PutRecords call."""
    problem = contract.records_limit_error(contract.record_bytes(r.partition_key, r.data) for r in records)
    if problem:
        raise IngestError("records_too_large", problem)


def build_records(info: RequestInfo, body: bytes, write_keys: Mapping[str, str]) -> list[Record]:
    """Validate a tracking request and wrap each message in the record envelope.

    Every check of ``templates/request.vtl`` runs here in the same order, the last being that the
    records fit one Kinesis PutRecords call (:func:`check_record_limits`), so callers need nothing else.
    """
    if info.route not in contract.SINGLE_ROUTES and info.route not in contract.BATCH_ROUTES:
        raise IngestError("not_found", f"no route {contract.API_PREFIX}/{info.route}")
    if len(body) > contract.MAX_REQUEST_BYTES:
        raise IngestError("request_too_large")
    payload = parse_body(body)
    if not isinstance(payload, dict):
        raise IngestError("invalid_request", "request body must be a JSON object")
    key = contract.resolve_write_key(info.authorization, payload.get("writeKey"))
    source = write_keys.get(key) if key else None
    if source is None:
        raise IngestError("invalid_write_key")

    is_batch = info.route in contract.BATCH_ROUTES
    if is_batch:
        messages = payload.get("batch")
        if not isinstance(messages, list):
            raise IngestError("invalid_request", "a batch request needs a \"batch\" array")
        if not messages:
            raise IngestError("empty_batch")
        if len(messages) > contract.MAX_BATCH_ITEMS:
            raise IngestError(
                "batch_too_large",
                f"the batch holds {len(messages)} messages; at most {contract.MAX_BATCH_ITEMS} are accepted",
            )
        encoded = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise IngestError("invalid_request", f"batch item {i} is not a JSON object")
            encoded.append(_dumps(message))
        batch = {name: _batch_field(payload.get(name)) for name in ("sentAt", "context", "integrations")}
        route_type = None
    else:
        encoded = [_dumps(payload)]
        batch = None
        route_type = contract.SINGLE_ROUTES[info.route]
    for i, data in enumerate(encoded):
        if len(data) > contract.MAX_MESSAGE_BYTES:
            raise IngestError(
                "message_too_large",
                f"message {i} is {len(data)} bytes; at most {contract.MAX_MESSAGE_BYTES} are accepted",
            )

    head, mid, tail = _envelope_frame({
        "v": contract.ENVELOPE_VERSION,
        "source": source,
        "receivedAt": info.received_at_ms,
        "requestId": info.request_id,
        "ip": info.ip,
        "userAgent": orjson.Fragment(user_agent_json(info.user_agent)),
        "route": info.route,
        "routeType": route_type,
        "batch": orjson.Fragment(_dumps(batch)),
    })
    partition_key = contract.partition_key
    rid = info.request_id
    records = [Record(partition_key(rid, index), b"%b%d%b%b%b" % (head, index, mid, message, tail))
               for index, message in enumerate(encoded)]
    # The sizes check_record_limits would add up, from the frame (no per-record Python loop): the
    # total exactly, and an upper bound of the largest record. Only a request that may be over a
    # limit pays for the exact check, which names the record and the limit.
    count = len(encoded)
    fixed = len(head) + len(mid) + len(tail) + len(rid.encode("utf-8")) + 1  # + "<index>" twice
    total = count * fixed + 2 * _digits_total(count) + sum(map(len, encoded))
    largest = fixed + 2 * len(str(count - 1)) + max(map(len, encoded))
    if total > contract.KINESIS_MAX_BYTES_PER_PUT or largest > contract.KINESIS_MAX_RECORD_BYTES:
        check_record_limits(records)
    return records


def _digits_total(count: int) -> int:
    """How many decimal digits the numbers 0 .. count-1 have together."""
    total, digits, low = 0, 1, 0
    while low < count:
        high = min(count, 10**digits)
        total += (high - low) * digits
        low, digits = high, digits + 1
    return total
