"""The API Gateway mapping templates, rendered by the emulation, against the local path.

The differential test is the proof that `clickstream local` and the deployed API write the same
records: for generated requests (hostile strings everywhere) both must produce the same records,
field by field, or refuse with the same error code.
"""

from __future__ import annotations

import base64
import json
import uuid

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from clickstream import apigw, contract, templates
from clickstream.ingest import IngestError, RequestInfo, build_records

KEYS = {"test-write-key": "web", "server-write-key": "backend"}
STREAM = "clickstream-events"
REQUEST_TEMPLATE = templates.request_template(STREAM, KEYS)
RESPONSES = {
    "": templates.response_template(templates.RESPONSE_SUCCESS),
    r"4\d{2}": templates.response_template(templates.RESPONSE_ERROR),
    r"5\d{2}": templates.response_template(templates.RESPONSE_ERROR),
}

HOSTILE = [
    '"', "\\", "'", "\\'", '\\"', "$", "$foo", "${foo}", "$!foo", "#set($x = 1)", "#end", "##", "#*", "*#",
    '"}]},{"Data":"', "\n", "\r\n", "\t", "\x00", "\x1f", "\u2028", "\u2029", "é", "✓", "😀", "\U0010ffff",
    "</script>", "null", "true", "{}", "[]", "$input.body", "$util.base64Decode('x')", "$context.requestId",
    "clickstream-reject-invalid_write_key", "%s%n", "\\u0000",
]
text = st.one_of(st.text(max_size=20), st.sampled_from(HOSTILE),
                 st.lists(st.sampled_from(HOSTILE), max_size=4).map("".join))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53),
                    st.floats(allow_nan=False, allow_infinity=False, width=64), text)
json_values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                        st.dictionaries(text, c, max_size=4)), max_leaves=12)


@st.composite
def messages(draw):
    msg = draw(st.dictionaries(text, json_values, max_size=5))
    msg.update(draw(st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(contract.MESSAGE_TYPES), "userId": text, "anonymousId": text,
        "event": text, "messageId": text, "timestamp": text, "context": json_values,
        "properties": st.dictionaries(text, json_values, max_size=4), "traits": json_values,
    })))
    return msg


# Mostly valid keys, so most cases reach the envelope; the rest check the refusals agree.
key_choice = st.sampled_from(["test-write-key"] * 4 + ["server-write-key"] * 3 + ["unknown-key-1", "", None])
latin1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f")


@st.composite
def requests(draw):
    route = draw(st.one_of(st.sampled_from(list(contract.SINGLE_ROUTES)), st.sampled_from(contract.BATCH_ROUTES)))
    body_key = draw(key_choice)
    basic_key = draw(st.one_of(key_choice, st.text(max_size=10))) if draw(st.integers(0, 3)) == 0 else None
    if route in contract.BATCH_ROUTES:
        body = draw(st.dictionaries(text, json_values, max_size=2))
        body["batch"] = draw(st.one_of(*[st.lists(messages(), min_size=1, max_size=5)] * 6,
                                       st.just([]), st.lists(json_values, max_size=2), json_values))
        for name in ("sentAt", "context", "integrations"):
            if draw(st.booleans()):
                body[name] = draw(json_values)
    else:
        body = draw(messages())
    if body_key is not None:
        body["writeKey"] = body_key
    headers = {"Content-Type": "application/json"}
    if basic_key is not None:
        password = draw(st.sampled_from(["", "secret", None]))
        raw = basic_key if password is None else f"{basic_key}:{password}"
        headers["Authorization"] = "Basic " + base64.b64encode(raw.encode()).decode()
    ua = draw(st.one_of(st.none(), st.text(latin1, max_size=40), st.sampled_from(HOSTILE[:8])))
    if ua:
        headers["User-Agent"] = ua
    return route, body, headers


def render_vtl(route: str, raw: str, headers: dict, request_id: str, epoch: int, ip: str):
    req = apigw.GatewayRequest.tracking(route, raw, headers=headers, request_id=request_id,
                                        request_time_epoch=epoch, source_ip=ip)
    out, _ = apigw.render(REQUEST_TEMPLATE, raw, req)
    return json.loads(out), req  # must always be valid JSON


def decode(put: dict) -> list[tuple[str, dict]]:
    return [(r["PartitionKey"], json.loads(base64.b64decode(r["Data"]))) for r in put["Records"]]


def rejection_of(put: dict) -> str | None:
    name = put["StreamName"]
    return name.removeprefix(contract.REJECT_STREAM_PREFIX) if name != STREAM else None


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.integers(0, 2**41), st.ip_addresses(v=4).map(str))
def test_vtl_and_local_produce_the_same_records(req, epoch, ip):
    route, body, headers = req
    raw = json.dumps(body, ensure_ascii=bool(epoch % 2))  # both escaped and raw unicode bodies
    request_id = str(uuid.UUID(int=epoch))
    put, _ = render_vtl(route, raw, headers, request_id, epoch, ip)
    info = RequestInfo(route=route, request_id=request_id, received_at_ms=epoch, ip=ip,
                       user_agent=headers.get("User-Agent"), authorization=headers.get("Authorization"))
    try:
        local = build_records(info, raw.encode(), KEYS)
    except IngestError as exc:
        assert exc.code in contract.TEMPLATE_REJECTIONS
        assert rejection_of(put) == exc.code
        return
    assert rejection_of(put) is None, put
    assert put["StreamName"] == STREAM
    vtl = decode(put)
    assert len(vtl) == len(local)
    for (vtl_key, vtl_rec), rec in zip(vtl, local, strict=True):
        assert vtl_key == rec.partition_key
        assert rec.data.endswith(b"\n") and rec.data.count(b"\n") == 1
        ours = json.loads(rec.data)
        assert list(vtl_rec) == list(ours) == list(contract.ENVELOPE_FIELDS)
        for field in contract.ENVELOPE_FIELDS:
            assert vtl_rec[field] == ours[field], field


def test_records_end_with_a_newline_in_vtl_too():
    raw = json.dumps({"userId": "u", "event": "e", "writeKey": "test-write-key"})
    put, _ = render_vtl("track", raw, {}, "r-1", 1, "10.0.0.1")
    data = base64.b64decode(put["Records"][0]["Data"])
    assert data.endswith(b"}\n") and data.count(b"\n") == 1


def respond(status: int, payload: dict) -> apigw.GatewayResponse:
    req = apigw.GatewayRequest(resource_path="/v1/batch", body="{}")
    return apigw.integration_response(RESPONSES, status, json.dumps(payload), req)


def test_success_and_partial_failure_responses():
    ok = respond(200, {"FailedRecordCount": 0, "Records": [{"SequenceNumber": "1", "ShardId": "s"}]})
    assert (ok.status, ok.json()) == (200, {"success": True})
    partial = respond(200, {"FailedRecordCount": 1, "Records": [{"ErrorCode": "InternalFailure"}]})
    assert partial.status == 503 and partial.json()["code"] == "unavailable"
    assert partial.headers["Retry-After"] == str(contract.RETRY_AFTER_SECONDS)


@pytest.mark.parametrize("code", contract.TEMPLATE_REJECTIONS)
@pytest.mark.parametrize("error_type", ["ResourceNotFoundException", "AccessDeniedException"])
def test_rejections_become_segment_errors(code, error_type):
    name = contract.REJECT_STREAM_PREFIX + code
    message = (f"Stream {name} under account 123456789012 not found." if error_type.startswith("Resource")
               else f"User: arn:aws:sts::1:assumed-role/r is not authorized to perform: kinesis:PutRecords "
                    f"on resource: arn:aws:kinesis:us-east-1:1:stream/{name}")
    r = respond(400, {"__type": error_type, "message": message})
    assert r.status == contract.ERRORS[code].status
    assert r.json() == {"code": code, "message": contract.ERRORS[code].message}


@pytest.mark.parametrize("error_type", contract.KINESIS_THROTTLING_ERRORS)
def test_kinesis_throttling_becomes_429_with_retry_after(error_type):
    r = respond(400, {"__type": error_type, "message": "Rate exceeded for stream clickstream-events"})
    assert r.status == 429 and r.json()["code"] == "throttled" and r.headers["Retry-After"]


@pytest.mark.parametrize("status,error_type", [(400, "ResourceNotFoundException"), (400, "ValidationException"),
                                               (500, "InternalFailure"), (503, "ServiceUnavailable")])
def test_other_kinesis_errors_are_retryable_5xx(status, error_type):
    r = respond(status, {"__type": error_type, "message": "Stream clickstream-events under account 1 not found."})
    assert r.status == 500 and r.json()["code"] == "internal_error"
    assert r.headers["Retry-After"]


@mock_aws
def test_rendered_requests_work_against_kinesis_end_to_end():
    """The rendered PutRecords body goes to (moto's) Kinesis; its answer goes back through the templates."""
    kinesis = boto3.client("kinesis", region_name="us-east-1")
    kinesis.create_stream(StreamName=STREAM, ShardCount=1)

    def call(put: dict) -> apigw.GatewayResponse:
        records = [{"Data": base64.b64decode(r["Data"]), "PartitionKey": r["PartitionKey"]} for r in put["Records"]]
        try:
            answer = kinesis.put_records(StreamName=put["StreamName"], Records=records)
            return respond(200, {"FailedRecordCount": answer["FailedRecordCount"], "Records": []})
        except kinesis.exceptions.ClientError as exc:
            err = exc.response["Error"]
            return respond(exc.response["ResponseMetadata"]["HTTPStatusCode"],
                           {"__type": err["Code"], "message": err["Message"]})

    good = json.dumps({"batch": [{"type": "track", "userId": "u", "event": "e"}] * 3, "writeKey": "test-write-key"})
    put, _ = render_vtl("batch", good, {}, "req-1", 5, "1.2.3.4")
    assert call(put).status == 200
    shard = kinesis.describe_stream(StreamName=STREAM)["StreamDescription"]["Shards"][0]["ShardId"]
    it = kinesis.get_shard_iterator(StreamName=STREAM, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    got = kinesis.get_records(ShardIterator=it["ShardIterator"])["Records"]
    assert [json.loads(r["Data"])["message"]["event"] for r in got] == ["e", "e", "e"]
    assert [r["PartitionKey"] for r in got] == ["req-1:0", "req-1:1", "req-1:2"]

    bad = json.dumps({"batch": [{"type": "track"}], "writeKey": "wrong-key-1"})
    put, _ = render_vtl("batch", bad, {}, "req-2", 5, "1.2.3.4")
    r = call(put)
    assert r.status == 401 and r.json()["code"] == "invalid_write_key"
    assert len(kinesis.get_records(ShardIterator=it["ShardIterator"])["Records"]) == 3


def test_template_refuses_values_that_would_break_it():
    with pytest.raises(contract.WriteKeyError):
        templates.request_template(STREAM, {'bad"key$': "web"})
    with pytest.raises(ValueError):
        templates.request_template('stream"name', KEYS)


# ---------------------------------------------------------------------------------------------
# One size rule: bodies generated at every limit, with non-ASCII text, give the same answer
# ---------------------------------------------------------------------------------------------
KEY = "test-write-key"
# 1, 2, 3 and 4 UTF-8 bytes (1, 1, 1 and 2 UTF-16 units), and characters JSON escapes.
WIDE = ["a", "é", "中", "😀", "\u2028"]


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


@st.composite
def padding(draw, nbytes: int) -> str:
    """A string of exactly ``nbytes`` UTF-8 bytes, mostly one of WIDE, topped up with ASCII."""
    char = draw(st.sampled_from(WIDE))
    count = draw(st.integers(0, nbytes // utf8_len(char)))
    return char * count + "x" * (nbytes - count * utf8_len(char))


def message_bytes(message: dict) -> int:
    return len(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode())


def _sizes_of(route: str, body: dict, request_id: str) -> list[int]:
    """Record sizes of an accepted request, with the record limits lifted (to aim at them)."""
    from unittest import mock

    with mock.patch.object(contract, "KINESIS_MAX_BYTES_PER_PUT", 10**12), \
         mock.patch.object(contract, "KINESIS_MAX_RECORD_BYTES", 10**12):
        records = build_records(RequestInfo(route, request_id, 1, "10.0.0.1", "Mozilla/5.0 (X11) é"),
                                json.dumps(body, ensure_ascii=False).encode(), KEYS)
    return [contract.record_bytes(r.partition_key, r.data) for r in records]


@st.composite
def near_limits(draw):
    """(route, body, limit name, how far past the limit it is: <= 0 fits, > 0 does not)."""
    limit = draw(st.sampled_from(["message", "request", "items", "records"]))
    delta = draw(st.integers(-2, 2))
    request_id = "0c3e5a4e-1b2c-4d5e-8f90-a1b2c3d4e5f6"
    if limit == "message":
        route = draw(st.sampled_from(["track", "t", "batch"]))
        message = {"type": "track", "event": "", "properties": {"note": "ü✓"}}
        if route != "batch":  # the body is the message: its write key counts
            message["writeKey"] = KEY
        pad = contract.MAX_MESSAGE_BYTES + delta - message_bytes(message)
        message["event"] = draw(padding(pad))
        assert message_bytes(message) == contract.MAX_MESSAGE_BYTES + delta
        body = {"batch": [{"event": "small é"}, message]} if route == "batch" else message
    elif limit == "request":
        route = "batch"
        count = contract.MAX_REQUEST_BYTES // (contract.MAX_MESSAGE_BYTES - 100) + 1
        messages = [{"event": draw(padding(contract.MAX_MESSAGE_BYTES - 200))} for _ in range(count)]
        body = {"batch": messages, "context": {"locale": "de-DE"}}
        over = utf8_len(json.dumps({**body, "writeKey": KEY}, ensure_ascii=False)) - contract.MAX_REQUEST_BYTES
        # the last message, rewritten in ASCII, lands the body exactly on the limit + delta
        messages[-1]["event"] = "x" * (utf8_len(messages[-1]["event"]) - over + delta)
    elif limit == "items":
        route = draw(st.sampled_from(contract.BATCH_ROUTES))
        text_ = draw(st.sampled_from(WIDE))
        body = {"batch": [{"type": "track", "event": text_ * 3, "messageId": f"m{i}"}
                          for i in range(contract.MAX_BATCH_ITEMS + min(delta, 1))]}
        delta = min(delta, 1)
    else:
        route = "batch"
        count = draw(st.integers(12, contract.MAX_BATCH_ITEMS))
        body = {"batch": [{"event": "é"} for _ in range(count)], "context": {"page": {"title": ""}}}
        base = sum(_sizes_of(route, {**body, "writeKey": KEY}, request_id))
        needed = contract.KINESIS_MAX_BYTES_PER_PUT + delta - base
        # each context byte is copied into every record; the last message takes the remainder
        body["context"]["page"]["title"] = draw(padding(needed // count))
        body["batch"][-1]["event"] = "é" + "x" * (needed % count)
        total = sum(_sizes_of(route, {**body, "writeKey": KEY}, request_id))
        assert total == contract.KINESIS_MAX_BYTES_PER_PUT + delta
    body = {**body, "writeKey": KEY} if isinstance(body, dict) else body
    return route, body, limit, delta, request_id


EXPECTED_CODE = {"message": "message_too_large", "request": "request_too_large", "items": "batch_too_large",
                 "records": "records_too_large"}


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(near_limits())
def test_vtl_and_local_agree_at_every_limit_with_non_ascii_text(case):
    route, body, limit, delta, request_id = case
    raw = json.dumps(body, ensure_ascii=False)
    if limit == "request":
        assert utf8_len(raw) == contract.MAX_REQUEST_BYTES + delta
    headers = {"Content-Type": "application/json", "User-Agent": "Mozilla/5.0 (X11) é"}
    put, _ = render_vtl(route, raw, headers, request_id, 1, "10.0.0.1")
    info = RequestInfo(route, request_id, 1, "10.0.0.1", headers["User-Agent"])
    try:
        local, code = build_records(info, raw.encode(), KEYS), None
    except IngestError as exc:
        local, code = None, exc.code
    assert rejection_of(put) == code
    assert code == (EXPECTED_CODE[limit] if delta > 0 else None)
    if local is not None:  # byte for byte the same records (no floats here)
        assert [(k, json.dumps(v)) for k, v in decode(put)] == [(r.partition_key, json.dumps(json.loads(r.data)))
                                                                for r in local]
        assert [base64.b64decode(r["Data"]) for r in put["Records"]] == [r.data for r in local]


def test_utf8_bytes_not_utf16_units_decide_the_message_limit():
    """20,000 x "é" is 20,000 UTF-16 units but 40,000 UTF-8 bytes: both paths refuse it."""
    raw = json.dumps({"event": "é" * 20_000, "writeKey": KEY}, ensure_ascii=False)
    put, _ = render_vtl("track", raw, {}, "r-1", 1, "10.0.0.1")
    assert rejection_of(put) == "message_too_large"
    with pytest.raises(IngestError) as info:
        build_records(RequestInfo("track", "r-1", 1, "10.0.0.1"), raw.encode(), KEYS)
    assert info.value.code == "message_too_large" and info.value.status == 400


@pytest.mark.parametrize("delta", [0, 1])
def test_one_record_over_the_record_limit_is_refused_by_both(monkeypatch, delta):
    """With a record limit low enough to reach through one request (the default 1 MiB cannot be
    reached below the 512 KiB body limit), one record one byte over it refuses the whole request."""
    monkeypatch.setattr(contract, "KINESIS_MAX_RECORD_BYTES", 20_000)
    template = templates.request_template(STREAM, KEYS)
    body = {"batch": [{"event": "a"}, {"event": ""}], "writeKey": KEY}
    sizes = _sizes_of("batch", body, "r-1")
    body["batch"][1]["event"] = "中" * ((20_000 - sizes[1]) // 3) + "x" * ((20_000 - sizes[1]) % 3 + delta)
    raw = json.dumps(body, ensure_ascii=False)
    req = apigw.GatewayRequest.tracking("batch", raw, headers={"User-Agent": "Mozilla/5.0 (X11) é"},
                                        request_id="r-1", request_time_epoch=1, source_ip="10.0.0.1")
    put = json.loads(apigw.render(template, raw, req)[0])
    info = RequestInfo("batch", "r-1", 1, "10.0.0.1", "Mozilla/5.0 (X11) é")
    if delta:
        assert rejection_of(put) == "records_too_large"
        with pytest.raises(IngestError, match="record 1 would be 20001 bytes"):
            build_records(info, raw.encode(), KEYS)
    else:
        assert rejection_of(put) is None
        assert [contract.record_bytes(r.partition_key, r.data) for r in build_records(info, raw.encode(), KEYS)
                ][1] == 20_000


def test_a_huge_user_agent_is_cut_to_the_same_prefix_by_both():
    ua = "Mozilla/5.0 " + "é😀\"\\'/" * 50_000
    raw = json.dumps({"batch": [{"event": "e"}] * 500, "writeKey": KEY})
    put, _ = render_vtl("batch", raw, {"User-Agent": ua}, "r-1", 1, "10.0.0.1")
    local = build_records(RequestInfo("batch", "r-1", 1, "10.0.0.1", ua), raw.encode(), KEYS)
    vtl = decode(put)
    expected = ua.encode("utf-16-le", "surrogatepass")[: 2 * contract.MAX_USER_AGENT_CHARS].decode(
        "utf-16-le", "surrogatepass")
    assert json.loads(local[0].data)["userAgent"] == vtl[0][1]["userAgent"] == expected
    assert [base64.b64decode(r["Data"]) for r in put["Records"]] == [r.data for r in local]
    # 500 records carry at most 500 x the bound, not 500 x 300 KB
    assert sum(len(r.data) for r in local) < 500 * (6 * contract.MAX_USER_AGENT_CHARS + 300)


def test_a_request_over_the_put_limit_gets_413_and_writes_nothing(live_collector):
    import httpx

    body = {"batch": [{"type": "track", "event": "e", "userId": "u"}] * 500,
            "context": {"page": {"title": "中" * 4000}}}
    auth = "Basic " + base64.b64encode(b"test-write-key:").decode()
    r = httpx.post(f"{live_collector.url}/v1/batch", json=body, headers={"Authorization": auth}, timeout=30)
    assert r.status_code == 413
    assert r.json()["code"] == "records_too_large"
    assert "per request" in r.json()["message"]
    assert live_collector.records() == []
    # the same request through the template is refused the same way
    put, _ = render_vtl("batch", json.dumps(body), {"Authorization": auth}, "r-1", 1, "10.0.0.1")
    assert rejection_of(put) == "records_too_large"
