"""The cost model: arithmetic checked by hand on one line, and docs/cost.md true to the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from clickstream import cost
from clickstream.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_lines_follow_the_documented_formulas():
    p = cost.prices()
    u = cost.Usage(events_per_day=1_000_000, batch_size=20)
    e = cost.estimate(u, p)
    requests = 1_000_000 * cost.DAYS_PER_MONTH / 20
    assert e.api_gateway == pytest.approx(requests / 1e6 * 3.50)
    record_bytes = 600 + cost.ENVELOPE_OVERHEAD_BYTES
    assert e.firehose == pytest.approx(1_000_000 * cost.DAYS_PER_MONTH * 5120 / 1024**3 * 0.029)
    runs = cost.DAYS_PER_MONTH * 24 * 12
    assert e.redshift_serverless == pytest.approx(runs * 60 / 3600 * 8 * 0.375)
    events = 1_000_000 * cost.DAYS_PER_MONTH  # on-demand ingest bills each record rounded up to 1 KB
    assert e.kinesis == pytest.approx(cost.HOURS_PER_MONTH * 0.04 + events * 1024 / 1024**3 * 0.08
                                      + 2 * events * record_bytes / 1024**3 * 0.04)
    assert cost.per_million(u, e) == pytest.approx(e.total / (cost.DAYS_PER_MONTH))
    bigger = cost.estimate(cost.Usage(events_per_day=10_000_000, batch_size=20), p)
    assert bigger.api_gateway == pytest.approx(e.api_gateway * 10)
    assert bigger.redshift_serverless == e.redshift_serverless  # refresh cost does not scale with events


def test_price_table_names_its_date_and_sources():
    p = cost.prices()
    assert p["as_of"] and p["region"] == "us-east-1"
    assert all(url.startswith("https://aws.amazon.com/") for url in p["sources"].values())


@pytest.mark.parametrize("args", [["--events-per-day", "1000000"],
                                  ["--events-per-day", "1000000", "--refresh-minutes", "60"],
                                  ["--events-per-day", "100000000", "--batch-size", "50", "--stream-mode",
                                   "provisioned", "--shards", "8"]])
def test_docs_examples_are_what_the_command_prints(args, capsys):
    assert main(["cost", *args]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed in (ROOT / "docs" / "cost.md").read_text()
