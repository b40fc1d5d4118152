"""The live events page in headless Chromium (Debian's ``chromium``, driven by playwright).

Events are sent with the official Segment Python SDK while the page is open; the test watches
them appear, a refused request show up with its reason, the chart drawn and a query answered.
Set ``CLICKSTREAM_SCREENSHOT=docs/live-events.png`` to refresh the README's screenshot.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from segment.analytics import Client
from segment.analytics.request import APIError

from tests.conftest import KEY

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("CLICKSTREAM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no {CHROMIUM} (`make test` installs it as root)")


@pytest.fixture
def page():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 820}, locale="en-GB",
                                          timezone_id="UTC")
            yield context.new_page()
        finally:
            browser.close()


def _wait_rows(page, selector: str, n: int, timeout_s: float) -> float:
    """Seconds until ``selector`` matches at least ``n`` elements (fails after ``timeout_s``)."""
    start = time.monotonic()
    page.wait_for_function(f"() => document.querySelectorAll({selector!r}).length >= {n}", timeout=timeout_s * 1000,
                           polling=20)
    return time.monotonic() - start


def test_events_appear_live_refusals_chart_and_query(live_pipeline, page):
    url = live_pipeline.url
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(url + "/")  # redirects to the page
    assert page.url == url + "/_clickstream/"
    page.wait_for_selector("#live-state.live")
    assert page.locator("#events-empty").is_visible()

    sdk = Client(KEY, host=url, sync_mode=True, max_retries=0)
    sdk.identify("user-42", {"email": "ada@example.com", "plan": "pro"}, anonymous_id="anon-42")
    sdk.track("user-42", "Order Completed", {"revenue": 42.0}, anonymous_id="anon-42")
    sent = time.monotonic()
    sdk.page("user-42", "Docs", "Install", {"url": "https://example.com/docs"}, anonymous_id="anon-42")
    _wait_rows(page, "#events tbody tr", 3, timeout_s=5)
    latency = time.monotonic() - sent  # from sending (SDK call, answered once durable) to shown
    assert latency < 1.0, f"the newest event took {latency:.2f} s to appear"
    rows = page.locator("#events tbody tr")
    newest = rows.nth(0).locator("td").all_inner_texts()
    assert newest[1:] == ["web", "page", "Install", "user-42", "anon-42"]
    assert rows.nth(1).locator("td").all_inner_texts()[1:] == ["web", "track", "Order Completed", "user-42", "anon-42"]
    assert rows.nth(2).locator("td").all_inner_texts()[2] == "identify"

    # Full JSON on click: the record envelope with the message as stored.
    rows.nth(1).click()
    detail = page.locator("#detail-json").inner_text()
    stored = next(r for r in live_pipeline.records() if r["message"]["type"] == "track")
    assert f'"requestId": "{stored["requestId"]}"' in detail and '"revenue": 42' in detail
    assert '"event": "Order Completed"' in detail and f'"messageId": "{stored["message"]["messageId"]}"' in detail

    # Filters: by type, by text, by source.
    page.select_option("#f-type", "track")
    assert page.locator("#events tbody tr").count() == 1
    page.select_option("#f-type", "")
    page.fill("#f-text", "ada@example")
    assert page.locator("#events tbody tr td:nth-child(3)").all_inner_texts() == ["identify"]
    page.fill("#f-text", "")
    assert page.locator("#f-source option").all_inner_texts() == ["all", "web"]

    # Pause: new events wait until resumed.
    page.click("#pause")
    page.wait_for_selector("#live-state.paused")
    sdk.track("user-42", "While Paused", anonymous_id="anon-42")
    time.sleep(1.0)
    assert page.locator("#events tbody tr").count() == 3
    page.click("#pause")
    _wait_rows(page, "#events tbody tr", 4, timeout_s=2)
    assert page.locator("#events tbody tr").nth(0).locator("td").nth(3).inner_text() == "While Paused"

    # A refused request: shown with its status, code and reason; nothing stored.
    stored_before = len(live_pipeline.records())
    bad = Client("wrong-key-123", host=url, sync_mode=True, max_retries=0)
    with pytest.raises(APIError) as refusal:
        bad.track("user-42", "Never Stored")
    assert refusal.value.status == 401
    bad_json = httpx.post(url + "/v1/track", content=b'{"userId": ', auth=(KEY, ""),
                          headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400
    page.click("nav [data-tab=rejected]")
    page.wait_for_function("() => document.querySelectorAll('#refused tbody tr').length >= 2", timeout=5000)
    refused = [page.locator("#refused tbody tr").nth(i).locator("td").all_inner_texts() for i in range(2)]
    assert refused[0][1:3] == ["400", "invalid_json"] and "not valid JSON" in refused[0][3]
    assert refused[0][4] == "web" and refused[0][5] == "POST /v1/track"
    assert refused[1][1:3] == ["401", "invalid_write_key"] and refused[1][3] == "missing or unknown write key"
    assert len(live_pipeline.records()) == stored_before

    # The chart: one bar per minute of the last hour, the current minute holding our events.
    live_pipeline.wait_loaded()
    page.click("nav [data-tab=status]")
    page.wait_for_function("() => document.querySelectorAll('#chart-svg rect.bar').length === 60", timeout=5000)
    page.wait_for_function("() => [...document.querySelectorAll('#chart-svg rect.bar')]"
                           ".reduce((n, e) => n + Number(e.dataset.events), 0) >= 4", timeout=5000)
    bars = page.eval_on_selector_all("#chart-svg rect.bar", "els => els.map(e => Number(e.dataset.events))")
    assert sum(bars) == 4 and bars[-1] + bars[-2] == 4  # all sent within the last minute or two
    heights = page.eval_on_selector_all("#chart-svg rect.bar", "els => els.map(e => e.getBBox().height)")
    assert max(heights) > 50
    page.wait_for_function("() => document.querySelector('#totals').innerText.includes('track')", timeout=5000)
    assert "running" in page.locator("#st-processes").inner_text()

    # A query, answered as a table.
    page.click("nav [data-tab=query]")
    page.fill("#sql", "SELECT event_text, user_id FROM clickstream.tracks ORDER BY event_text")
    page.click("#run")
    page.wait_for_selector("#query-result table")
    cells = page.locator("#query-result tbody tr td").all_inner_texts()
    assert cells == ["Order Completed", "user-42", "While Paused", "user-42"]
    assert page.locator("#query-state").inner_text().startswith("2 rows")
    page.fill("#sql", "DROP TABLE clickstream.events")
    page.click("#run")
    page.wait_for_selector("#query-result .error")
    assert "read-only" in page.locator("#query-result .error").inner_text()
    page.select_option("#examples", label="Sessions by day (30 min inactivity)")
    page.click("#run")
    page.wait_for_selector("#query-result table")
    assert page.locator("#query-result thead th").all_inner_texts() == ["day", "sessions", "people"]
    assert page.locator("#query-result tbody td").all_inner_texts()[1:] == ["1", "1"]  # one person, one session
    examples = page.locator("#examples option").all_inner_texts()[1:]
    assert len(examples) >= 5
    for label in examples:  # every example runs against the model as it is
        page.select_option("#examples", label=label)
        page.click("#run")
        page.wait_for_function("() => !document.querySelector('#run').disabled"
                               " && document.querySelector('#query-result').childElementCount > 0")
        assert page.locator("#query-result .error").count() == 0, label

    # No script error, no CSP violation, no failed load but the refused DROP's answer.
    assert [e for e in errors if "status of 400" not in e] == []


def test_pausing_while_a_poll_is_in_flight_stays_paused(live_pipeline, page):
    """A poll answered after Pause was clicked must neither show its events nor set the pill back
    to "live": they wait for Resume like any other. (Under load a poll is often in flight.)"""
    url = live_pipeline.url
    sdk = Client(KEY, host=url, sync_mode=True, max_retries=0)
    page.goto(url + "/_clickstream/")
    page.wait_for_selector("#live-state.live")
    held: list = []
    page.route("**/_clickstream/api/events?*", lambda route: held.append(route))  # the next poll waits here
    deadline = time.monotonic() + 5
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(20)
    assert held, "the page did not poll"
    sdk.track("user-7", "Sent During The Poll", anonymous_id="anon-7")
    page.click("#pause")
    page.wait_for_selector("#live-state.paused")
    with page.expect_response("**/_clickstream/api/events?*"):
        held[0].continue_()  # the in-flight poll now reaches the server and is answered with the event
    page.wait_for_timeout(300)
    assert page.locator("#live-state").get_attribute("class") == "pill paused"
    assert page.locator("#events tbody tr").count() == 0
    assert len(held) == 1  # no poll while paused
    page.unroute("**/_clickstream/api/events?*")
    page.click("#pause")  # resume: the event arrives
    _wait_rows(page, "#events tbody tr", 1, timeout_s=3)
    assert page.locator("#events tbody tr").nth(0).locator("td").nth(3).inner_text() == "Sent During The Poll"
    page.wait_for_selector("#live-state.live")


def test_a_poll_failing_after_pause_leaves_the_page_paused(live_pipeline, page):
    url = live_pipeline.url
    page.goto(url + "/_clickstream/")
    page.wait_for_selector("#live-state.live")
    held: list = []
    page.route("**/_clickstream/api/events?*", lambda route: held.append(route))
    deadline = time.monotonic() + 5
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(20)
    assert held, "the page did not poll"
    page.click("#pause")
    page.wait_for_selector("#live-state.paused")
    held[0].abort()  # the in-flight poll fails now, after Pause
    page.wait_for_timeout(300)
    assert page.locator("#live-state").get_attribute("class") == "pill paused"
    page.unroute("**/_clickstream/api/events?*")
    page.click("#pause")  # resume: polling again, and live
    page.wait_for_selector("#live-state.live")


def test_screenshot_of_the_live_events_page(live_pipeline, page, tmp_path):
    """A realistic page: simulated traffic from several sources, one record opened."""
    url = live_pipeline.url
    web = Client(KEY, host=url, sync_mode=True, max_retries=0)
    backend = Client("server-write-key", host=url, sync_mode=True, max_retries=0)
    people = [("user-1017", "4f1c2a90-7d1e"), ("user-2231", "a83be410-55c2"), (None, "c0ffee12-9a7b")]
    for user, anon in people:
        web.page(user, "Docs", "Getting started", {"path": "/docs/start"}, anonymous_id=anon)
        web.track(user, "Product Viewed", {"sku": "sku-77", "price": 19.99}, anonymous_id=anon)
    web.identify("user-1017", {"email": "ada@example.com", "plan": "pro"}, anonymous_id="4f1c2a90-7d1e")
    backend.track("user-1017", "Order Completed", {"order_id": "o-5521", "revenue": 59.97, "currency": "EUR"})
    backend.group("user-1017", "acme-inc", {"name": "ACME", "employees": 120})
    web.track("user-2231", "Signed Up", {"plan": "free"}, anonymous_id="a83be410-55c2")
    httpx.post(url + "/v1/track", content=b"{", auth=(KEY, ""), headers={"Content-Type": "application/json"})
    page.goto(url + "/_clickstream/")
    _wait_rows(page, "#events tbody tr", 10, timeout_s=5)
    page.locator("#events tbody tr").nth(2).click()
    page.wait_for_function("() => document.querySelector('#summary').innerText === '10 records in the stream'",
                           timeout=5000)
    page.wait_for_function("() => !document.querySelector('#rejected-count').hidden", timeout=5000)
    time.sleep(1.3)  # let the arrival highlight fade
    out = tmp_path / "live-events.png"
    page.screenshot(path=str(out))
    assert out.stat().st_size > 10_000
    if os.environ.get("CLICKSTREAM_SCREENSHOT"):
        Path(os.environ["CLICKSTREAM_SCREENSHOT"]).write_bytes(out.read_bytes())
