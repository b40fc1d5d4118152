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
    req = apigw.GatewayRequest(resource_path=f"/v1/{route}", body=raw, headers=headers, request_id=request_id,
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
