"""The Locust file runs headless against a real local pipeline, briefly, and what it sends arrives."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import KEY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_locust_browser_and_server_users_land_events(live_collector, tmp_path):
    locust = Path(sys.executable).with_name("locust")
    out = subprocess.run(
        [str(locust), "-f", str(ROOT / "benchmark" / "locustfile.py"), "--headless", "-u", "4", "-r", "4",
         "-t", "4s", "--host", live_collector.url, "--write-key", KEY, "--only-summary",
         "--csv", str(tmp_path / "stats")],
        capture_output=True, text=True, timeout=60)
    stats = (tmp_path / "stats_stats.csv").read_text()
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    records = live_collector.records()
    routes = {r["route"] for r in records}
    assert {"p", "batch"} <= routes or {"t", "batch"} <= routes, routes
    rows = {row["Name"]: row for row in csv.DictReader(io.StringIO(stats))}
    assert "/v1/batch" in rows and int(rows["Aggregated"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    browser = [r for r in records if r["route"] in ("p", "t")]
    assert browser and all(r["source"] == "web" and r["message"]["writeKey"] == KEY for r in browser)
