"""The OpenAPI document is generated from the contract, served by the collector, kept in docs/,
and used by schemathesis to fuzz a live collector over loopback (bounded in examples and time)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from clickstream.openapi import document
from tests.conftest import KEY

ROOT = Path(__file__).resolve().parents[1]
schema = schemathesis.openapi.from_dict(document())
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}


def test_docs_copy_is_current_and_served(live_collector):
    assert json.loads((ROOT / "docs" / "openapi.json").read_text()) == document()
    served = httpx.get(live_collector.url + "/openapi.json").json()
    assert served["paths"] == document()["paths"]
    assert served["servers"] == [{"url": live_collector.url}]


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):
    """One live collector for all fuzz cases (a fresh one per case would dominate the run time)."""
    from clickstream.collector import Collector
    from clickstream.stream import GroupCommitWriter
    from tests.conftest import WRITE_KEYS, free_port, serve

    port = free_port()
    app = Collector(WRITE_KEYS, GroupCommitWriter(tmp_path_factory.mktemp("fuzz")))
    server, thread = serve(app, port)
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(timeout=10)


def _check(case, fuzz_target) -> None:
    url, _ = fuzz_target
    headers = AUTH if case.operation.method.upper() == "POST" else {}
    response = case.call(base_url=url, headers=headers, timeout=10)
    case.validate_response(response)
    assert response.status_code < 500 or response.status_code == 503, response.text
    assert "access-control-allow-origin" in response.headers


# Examples per operation. Generating a JSON body costs ~45 ms of CPU (schemathesis + hypothesis), so the
# 16 ingest operations stay at 25 each (~1 min on a shared 2-core machine); the settings route's
# examples are cheap (~15 ms each), so it gets many more. Only the too_slow health check is
# suppressed: on a busy machine generating large bodies can trip it without anything being wrong.
INGEST_EXAMPLES = 25
SETTINGS_EXAMPLES = 300
FUZZ_SETTINGS = {"deadline": None, "database": None, "suppress_health_check": [HealthCheck.too_slow]}


@schema.include(method="POST").parametrize()
@settings(max_examples=INGEST_EXAMPLES, **FUZZ_SETTINGS)
def test_fuzz_ingest_routes_conform_and_never_5xx(case, fuzz_target):
    _check(case, fuzz_target)


@schema.include(method="GET").parametrize()
@settings(max_examples=SETTINGS_EXAMPLES, **FUZZ_SETTINGS)
def test_fuzz_settings_route_conforms_and_never_5xx(case, fuzz_target):
    _check(case, fuzz_target)
