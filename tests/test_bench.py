"""`clickstream bench` itself: short runs, checked for what its figures rest on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]  # three 1 s runs, each starting the whole pipeline


def test_bench_keeps_server_and_generator_apart_and_counts_what_was_stored(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "clickstream.cli", "bench", "--scenario", "single", "--seconds", "1",
         "--connections", "4", "--json"],
        capture_output=True, text=True, timeout=120, check=True, cwd=tmp_path,
    )
    figures = {(f["scenario"], f["server"]): f for f in json.loads(run.stdout)["http"]}
    # progress: one line per measured run on stderr (stdout stays the JSON), with that run's figures
    lines = run.stderr.splitlines()
    assert [line.split(":")[0] + ":" + line.split(":")[1] for line in lines] == [
        "[1/3] single: clickstream local at peak, 1 s", "[2/3] single: clickstream local at half of peak, 1 s",
        "[3/3] single: bare server at peak, 1 s"]
    for line, key in zip(lines, [("single", "clickstream"), ("single@half", "clickstream"), ("single", "bare")],
                         strict=True):
        assert f"{figures[key]['requests_per_s']:,.0f} req/s" in line and line.endswith(" s)")
    assert set(figures) == {("single", "clickstream"), ("single@half", "clickstream"), ("single", "bare")}
    for key in (("single", "clickstream"), ("single@half", "clickstream")):
        f = figures[key]
        assert f["events_acknowledged"] > 0 and f["events_in_stream"] == f["events_acknowledged"]
        assert f["errors"] == 0 and f["p50_ms"] <= f["p99_ms"]
    if len(os.sched_getaffinity(0)) >= 2:  # the generator must not steal the server's CPU
        for f in figures.values():
            assert f["server_cpus"] and f["generator_cpus"]
            assert not set(f["server_cpus"]) & set(f["generator_cpus"])
