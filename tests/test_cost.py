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


def test_segment_tables_lambda_is_counted_per_refresh_at_its_deployed_memory():
    from clickstream import workflows

    u = cost.Usage(events_per_day=1, refresh_minutes=5, segment_seconds=10)
    runs = cost.DAYS_PER_MONTH * 24 * 12
    gb = workflows.SEGMENT_TABLES_MEMORY_MB / 1024
    assert cost.estimate(u).segment_tables_lambda == pytest.approx(runs * (10 * gb * 0.0000166667 + 0.20 / 1e6))
    assert cost.estimate(cost.Usage(events_per_day=1e9, refresh_minutes=5, segment_seconds=10)).segment_tables_lambda \
        == cost.estimate(u).segment_tables_lambda  # one run per refresh, whatever the traffic


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


@pytest.mark.parametrize(("args", "message"), [
    (["--events-per-day", "0"], "argument --events-per-day: expected a number > 0, got '0'"),
    (["--events-per-day", "-5"], "argument --events-per-day: expected a number > 0, got '-5'"),
    (["--events-per-day", "nan"], "argument --events-per-day: expected a number > 0, got 'nan'"),
    (["--events-per-day", "1000", "--batch-size", "0.5"], "argument --batch-size: expected a number >= 1"),
    (["--events-per-day", "1000", "--refresh-minutes", "0"], "argument --refresh-minutes: expected a number > 0"),
    (["--events-per-day", "1000", "--shards", "-1"], "argument --shards: expected a whole number > 0"),
    (["--events-per-day", "1000", "--archive-months", "-1"], "argument --archive-months: expected a number >= 0"),
    (["--events-per-day", "1000", "--rpu", "12"], "argument --rpu: expected 4, or 8 to 512 in steps of 8"),
])
def test_bad_inputs_are_usage_errors_not_tracebacks_or_negative_dollars(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["cost", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_json_rounds_like_the_text_and_adds_up(capsys):
    import json

    assert main(["cost", "--events-per-day", "1234567", "--batch-size", "7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    money = [*out["monthly"].values(), out["total"]]
    assert all(round(v, 2) == v for v in money)  # cents everywhere, as the text prints them
    assert out["total"] == pytest.approx(sum(out["monthly"].values()), abs=0.01 * len(out["monthly"]))
    assert round(out["per_million_events"], 4) == out["per_million_events"]
    assert main(["cost", "--events-per-day", "1234567", "--batch-size", "7"]) == 0
    text = capsys.readouterr().out
    assert f"${out['total']:>12,.2f}" in text and f"{out['monthly']['kinesis']:,.2f}" in text


def test_the_estimate_uses_the_deployed_capacity_and_reports_the_usage_limit(capsys):
    import json

    from clickstream.config import DEFAULTS

    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    assert cost.Usage(events_per_day=1).rpu == DEFAULTS["serverlessBaseCapacity"] == context[
        "serverlessBaseCapacity"] == 8
    assert context["serverlessUsageLimitRpuHours"] == cost.DEFAULT_USAGE_LIMIT_RPU_HOURS
    u = cost.Usage(events_per_day=1_000_000)
    assert cost.rpu_hours(u) == pytest.approx(cost.DAYS_PER_MONTH * 24 * 12 * 60 / 3600 * 8)  # 1,167
    assert main(["cost", "--events-per-day", "1000000"]) == 0
    assert "redshift RPU-hours: 1,167 per month (within the default usage limit of 1,500)" in capsys.readouterr().out
    assert main(["cost", "--events-per-day", "1000000", "--refresh-minutes", "1"]) == 0
    assert "OVER: raise serverlessUsageLimitRpuHours" in capsys.readouterr().out


def test_step_functions_counts_the_steps_the_workflow_runs():
    """A batch of transaction statements is one step (one BatchExecuteStatement), not one per statement."""
    from clickstream import workflows
    from clickstream.sqlmodel import ModelNames

    steps = len(workflows.statements_for("refresh", ModelNames()))
    assert cost.refresh_steps() == steps
    u = cost.Usage(events_per_day=1_000_000)
    runs = cost.DAYS_PER_MONTH * 24 * 12
    # + 1: the segment_tables Lambda task the deployed refresh runs after its statements
    assert cost.estimate(u).step_functions == pytest.approx(runs * (6 + 6 * steps + 1) / 1000 * 0.025)
    from tests.test_workflows import NAMES, SERVERLESS

    deployed = workflows.render("refresh", NAMES, SERVERLESS, segment_tables_function="arn:fn")
    assert list(deployed["States"])[-1] == workflows.SEGMENT_TABLES_STATE
