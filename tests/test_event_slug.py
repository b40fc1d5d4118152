"""One slug rule for event names: the SQL model's ``event`` column equals ``segment_schema.snakecase``.

The Python port of go-snakecase names the per-event tables; the SQL model computes the combined
tables' ``event`` column (``refresh/030_stage_events.sql``). Both must give the same slug, so
each name here goes through the real local model (the loader path into DuckDB) and is compared
with the Python function.
"""

from __future__ import annotations

import json

import pytest

from clickstream.contract import Record
from clickstream.redshift_rules import truncate_utf8
from clickstream.segment_schema import snakecase
from clickstream.stream import LocalStream
from clickstream.warehouse import Warehouse

T0 = 1_764_460_800_000  # 2025-11-30T00:00:00Z
EVENT_WIDTH = 1024  # tracks.event is VARCHAR(1024)

CORPUS = [
    "Order Completed",
    "productViewed",
    "Product Viewed",
    "HTTPRequest sent",  # go-snakecase keeps an upper-case run with the word after it: httprequest_sent
    "v2 API Call",
    "checkout_step_2",
    "  spaced  out ",
    "Ünïcödé event",
    "a--b__c",
    "ABC",
    "iPhone App Opened",
    "CStringRef",
    "step2Done",  # digits between a lower-case and an upper-case letter: step2_done
    "V2Done",  # ... but not after an upper-case letter: v2done
    "2FA Enabled",
    "a1b2C3d4",
    "ab_12Cd",  # an underscore, then digits: the upper-case letter continues the word
    "a_B",
    "_private_event_",
    "🎉 Party Started 🎉",
    "cart😀Updated",
    "😀",  # nothing but separators: the empty slug
    "Ǆemo İstanbul Kelvin\u212a",  # non-ASCII letters whose lower case is ASCII are still separators
    "tab\tand\nnewline",
    "Already_snake_case",
    "x" * 3000,  # longer than the column
    "aB" * 1500,  # a_ba_ba...: the slug is longer than the name, cut to the column's width
    "😀" * 15_000 + "Tail Event",  # 60,000 bytes of separators before the words
]


def _envelope(i: int, event: str) -> bytes:
    return json.dumps({"v": 1, "source": "web", "receivedAt": T0 + i, "requestId": f"r-{i}", "index": 0,
                       "route": "batch", "batch": {},
                       "message": {"type": "track", "event": event, "userId": "u", "messageId": f"slug-{i}"}},
                      ensure_ascii=False).encode()


@pytest.fixture(scope="module")
def tracks(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """messageId -> (event, event_text) of clickstream.tracks, after one load of the corpus."""
    data_dir = tmp_path_factory.mktemp("slug")
    wh = Warehouse(data_dir / "w.duckdb")
    stream = LocalStream(data_dir)
    try:
        stream.put([Record(f"k{i}", _envelope(i, name)) for i, name in enumerate(CORPUS)])
        assert wh.load_from(stream) == len(CORPUS)
        _, rows = wh.query("SELECT id, event, event_text FROM clickstream.tracks")
        _, rejected = wh.query("SELECT reason FROM clickstream.rejected")
    finally:
        stream.close()
        wh.close()
    assert rejected == []
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.mark.parametrize("i", range(len(CORPUS)), ids=[repr(n[:24]) for n in CORPUS])
def test_event_column_is_the_snakecase_of_the_event(tracks, i):
    event, event_text = tracks[f"slug-{i}"]
    name = CORPUS[i]
    assert event_text == truncate_utf8(name, EVENT_WIDTH)
    assert event == truncate_utf8(snakecase(name), EVENT_WIDTH)


def test_known_slugs(tracks):
    """The corpus is not vacuous: the slugs the docs promise, literally."""
    by_name = {CORPUS[int(k.split("-")[1])]: v[0] for k, v in tracks.items()}
    assert by_name["productViewed"] == "product_viewed"
    assert by_name["HTTPRequest sent"] == "httprequest_sent"
    assert by_name["Ünïcödé event"] == "n_c_d_event"
    assert by_name["iPhone App Opened"] == "i_phone_app_opened"
    assert by_name["step2Done"] == "step2_done" and by_name["V2Done"] == "v2done"
    assert by_name["😀"] == "" and by_name["😀" * 15_000 + "Tail Event"] == "tail_event"
    assert by_name["aB" * 1500] == ("a" + "_ba" * 1499 + "_b")[:EVENT_WIDTH]
