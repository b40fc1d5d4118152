"""Hostile input, on both implementations of the contract: the local collector over HTTP and the
deployed mapping templates in the emulation. Each gets its documented status; nothing is written
for it; strings that try to escape JSON or inject VTL come back byte for byte."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from clickstream import apigw, contract
from tests.conftest import KEY
from tests.test_vtl import HOSTILE, REQUEST_TEMPLATE, RESPONSES, rejection_of

BASIC = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}


def test_hostile_strings_in_every_field_are_stored_exactly(live_collector):
    fields = ["type", "userId", "anonymousId", "event", "messageId", "timestamp", "name", "groupId"]
    batch = []
    for i, evil in enumerate(HOSTILE):
        msg = {f: evil for f in fields}
        msg["properties"] = {evil: evil, "nested": [{evil: [evil]}]}
        msg["context"] = {"page": {"url": evil}, evil: evil}
        msg["messageId"] = f"{i}:{evil}"
        batch.append(msg)
    body = {"batch": batch, "context": {"ip": HOSTILE[0]}, "sentAt": HOSTILE[5]}
    r = httpx.post(live_collector.url + "/v1/batch", content=json.dumps(body), headers={**BASIC,
                   "Content-Type": "application/json", "User-Agent": "ua \" ' \\ $x #set"})
    assert r.status_code == 200
    stored = live_collector.records()
    assert [rec["message"] for rec in stored] == batch
    assert stored[0]["userAgent"] == "ua \" ' \\ $x #set"


@pytest.mark.parametrize("raw,code", [
    (b'{"userId":"u","event":"e","n":1' + b"0" * 400 + b"}", "invalid_json"),  # beyond 64-bit: refused whole
    (b'{"userId":"u","event":"e","n":1e999}', "invalid_json"),
    (b'{"userId":"\\ud800"}', "invalid_json"),  # a lone surrogate cannot be stored as UTF-8
])
def test_numbers_and_escapes_json_cannot_represent(live_collector, raw, code):
    r = httpx.post(live_collector.url + "/v1/track", content=raw, headers={**BASIC, "Content-Type": "text/plain"})
    assert r.status_code == 400 and r.json()["code"] == code
    assert live_collector.records() == []


def gateway(route: str, body: str, headers: dict | None = None) -> tuple[apigw.GatewayResponse, list[dict]]:
    """The deployed path for one request: request template, Kinesis's answer, response; plus the
    envelopes that would reach the real stream (none for a rejection)."""
    req = apigw.GatewayRequest.tracking(route, body, headers=headers or {})
    put = json.loads(apigw.render(REQUEST_TEMPLATE, body, req)[0])
    code = rejection_of(put)
    if code is None:
        written = [json.loads(base64.b64decode(r["Data"])) for r in put["Records"]]
        return apigw.integration_response(RESPONSES, 200, '{"FailedRecordCount":0,"Records":[]}', req), written
    answer = {"__type": "ResourceNotFoundException", "message": f"Stream {put['StreamName']} under account 1 "
              "not found."}
    return apigw.integration_response(RESPONSES, 400, json.dumps(answer), req), []


GOOD = {"userId": "u", "event": "e"}
VTL_CASES = [
    ("33 KB message", "track", {**GOOD, "writeKey": KEY, "p": "x" * 33 * 1024}, 400, "message_too_large"),
    ("600 KB batch", "batch", {"writeKey": KEY, "batch": [{**GOOD, "p": "x" * 20000}] * 30}, 413,
     "request_too_large"),
    ("2501 items", "batch", {"writeKey": KEY, "batch": [{}] * 2501}, 400, "batch_too_large"),
    ("empty batch", "batch", {"writeKey": KEY, "batch": []}, 400, "empty_batch"),
    ("batch not a list", "batch", {"writeKey": KEY, "batch": "x"}, 400, "invalid_request"),
    ("missing key", "track", GOOD, 401, "invalid_write_key"),
    ("wrong key", "track", {**GOOD, "writeKey": "wrong-key-123"}, 401, "invalid_write_key"),
    ("injection as key", "track", {**GOOD, "writeKey": '"}], "StreamName": "other'}, 401, "invalid_write_key"),
    ("deep nesting", "track", {**GOOD, "writeKey": KEY, "a": json.loads("[" * 500 + "]" * 500)}, 200, None),
]


@pytest.mark.parametrize("name,route,body,status,code", VTL_CASES, ids=[c[0] for c in VTL_CASES])
def test_deployed_templates_refuse_hostile_input_with_the_documented_status(name, route, body, status, code):
    response, written = gateway(route, json.dumps(body))
    assert response.status == status
    if code:
        assert response.json() == {"code": code, "message": contract.ERRORS[code].message}
        assert written == []
    else:
        assert [w["message"] for w in written] == [body]


def test_bearer_token_only_is_refused_by_the_templates():
    response, written = gateway("track", json.dumps(GOOD), {"Authorization": "Bearer eyJhbGciOi"})
    assert response.status == 401 and response.json()["code"] == "invalid_write_key"
    assert written == []


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC", "bAsIc"])
def test_basic_auth_scheme_is_case_insensitive_on_both_implementations(live_collector, scheme):
    """RFC 7617 section 2: the scheme name is case-insensitive; some clients send "basic"."""
    header = {"Authorization": f"{scheme} " + base64.b64encode(f"{KEY}:".encode()).decode()}
    r = httpx.post(live_collector.url + "/v1/track", json=GOOD, headers=header)
    assert r.status_code == 200
    assert [(rec["source"], rec["message"]) for rec in live_collector.records()] == [("web", GOOD)]
    response, written = gateway("track", json.dumps(GOOD), header)
    assert response.status == 200 and [(w["source"], w["message"]) for w in written] == [("web", GOOD)]
