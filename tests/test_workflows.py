"""The Step Functions workflows (statemachines/*.asl.json) executed in moto against a fake Redshift."""

from __future__ import annotations

import json
import time

import boto3
import pytest
from moto import mock_aws
from moto.redshiftdata import models as rsd_models
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk import (
    StateTaskServiceAwsSdk,
)

from clickstream import workflows
from clickstream.sqlmodel import ModelNames, redshift_statements

NAMES = ModelNames(iam_role="arn:aws:iam::123456789012:role/clickstream-streaming")
REGION = "us-east-1"


class FakeRedshift:
    """Stands in for Redshift behind moto's Data API: records SQL, finishes or fails statements."""

    def __init__(self, monkeypatch, fail_when: str | None = None, error: str = "") -> None:
        self.executed: list[str] = []
        self.params: list[dict] = []
        self.fail_when, self.error = fail_when, error
        self.hold = False
        backend_cls = rsd_models.RedshiftDataAPIServiceBackend
        original_execute = backend_cls.execute_statement
        original_describe = backend_cls.describe_statement
        fake = self

        def execute(self, **kwargs):
            fake.executed.append(kwargs["sql"])
            fake.params.append(kwargs)
            return original_execute(self, **kwargs)

        def describe(self, statement_id):
            statement = original_describe(self, statement_id)
            if fake.hold:
                return statement  # still STARTED: Redshift is busy
            failing = fake.fail_when and fake.fail_when in statement.query_string
            statement.status = "FAILED" if failing else "FINISHED"
            statement.error = fake.error if failing else None
            return statement

        original_iter = rsd_models.Statement.__iter__

        def iterate(self):
            yield from original_iter(self)
            if getattr(self, "error", None):
                yield "Error", self.error  # the real API reports it when Status is FAILED

        monkeypatch.setattr(backend_cls, "execute_statement", execute)
        monkeypatch.setattr(backend_cls, "describe_statement", describe)
        monkeypatch.setattr(rsd_models.Statement, "__iter__", iterate)


def _pascal_sfn_sdk(monkeypatch) -> None:
    """Step Functions' aws-sdk integrations take and return PascalCase names even for APIs whose
    wire names are camelCase (like Step Functions' own); moto's interpreter passes them through, so
    translate for the sfn API as the real service does."""
    cls = StateTaskServiceAwsSdk

    def lower(d):
        return {k[0].lower() + k[1:]: v for k, v in d.items()}

    def upper(value):
        if isinstance(value, dict):
            return {k[0].upper() + k[1:]: upper(v) for k, v in value.items()}
        if isinstance(value, list):
            return [upper(v) for v in value]
        return value

    original_params, original_response = cls._normalise_parameters, cls._normalise_response

    def params(self, parameters, *args, **kwargs):
        if self.resource.api_name == "sfn":
            converted = lower(parameters)
            parameters.clear()
            parameters.update(converted)
        return original_params(self, parameters, *args, **kwargs)

    def response(self, value, *args, **kwargs):
        if self.resource.api_name == "sfn" and isinstance(value, dict):
            converted = upper(value)
            value.clear()
            value.update(converted)
        return original_response(self, value, *args, **kwargs)

    monkeypatch.setattr(cls, "_normalise_parameters", params)
    monkeypatch.setattr(cls, "_normalise_response", response)


@pytest.fixture
def sfn(monkeypatch):
    # moto's ASL interpreter does not know the SDK name "redshiftdata" (boto3: "redshift-data").
    monkeypatch.setitem(state_task_service.StateTaskService._SERVICE_NAME_SFN_TO_BOTO_OVERRIDES,
                        "redshiftdata", "redshift-data")
    _pascal_sfn_sdk(monkeypatch)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        yield boto3.client("stepfunctions", region_name=REGION)


def run(sfn, asl: dict, payload: dict | None = None) -> dict:
    arn = sfn.create_state_machine(name=f"sm-{time.monotonic_ns()}", definition=json.dumps(asl),
                                   roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=arn, input=json.dumps(payload or {"pollSeconds": 0}))
    deadline = time.monotonic() + 60
    while True:
        result = sfn.describe_execution(executionArn=execution["executionArn"])
        if result["status"] != "RUNNING" or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


SERVERLESS = workflows.connection_parameters("serverless", "clickstream", "dev")


@pytest.mark.parametrize("phase", ["setup", "refresh"])
def test_success_path_sends_exactly_the_model_statements_in_order(sfn, monkeypatch, phase):
    redshift = FakeRedshift(monkeypatch)
    result = run(sfn, workflows.render(phase, NAMES, SERVERLESS))
    assert result["status"] == "SUCCEEDED", result
    assert redshift.executed == [s.sql for s in redshift_statements(phase, NAMES)]
    assert all(p["database"] == "dev" for p in redshift.params)


def test_runs_never_overlap(sfn, monkeypatch):
    redshift = FakeRedshift(monkeypatch)
    redshift.hold = True
    asl = workflows.render("refresh", NAMES, SERVERLESS)
    arn = sfn.create_state_machine(name="refresh", definition=json.dumps(asl),
                                   roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
    first = sfn.start_execution(stateMachineArn=arn, name="first", input='{"pollSeconds": 1}')["executionArn"]
    deadline = time.monotonic() + 20
    while not redshift.executed and time.monotonic() < deadline:
        time.sleep(0.05)
    second = sfn.start_execution(stateMachineArn=arn, name="second", input='{"pollSeconds": 0}')["executionArn"]
    while sfn.describe_execution(executionArn=second)["status"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sfn.describe_execution(executionArn=second)["status"] == "SUCCEEDED"
    states = [e.get("stateEnteredEventDetails", {}).get("name")
              for e in sfn.get_execution_history(executionArn=second)["events"]]
    assert "SkippedAnotherRunIsActive" in states and "RunEachInOrder" not in states
    assert len(redshift.executed) == 1  # only the first run's first statement
    redshift.hold = False
    while sfn.describe_execution(executionArn=first)["status"] == "RUNNING" and time.monotonic() < deadline + 20:
        time.sleep(0.05)
    assert sfn.describe_execution(executionArn=first)["status"] == "SUCCEEDED"
    assert redshift.executed == [s.sql for s in redshift_statements("refresh", NAMES)]


def test_provisioned_cluster_with_secret(sfn, monkeypatch):
    redshift = FakeRedshift(monkeypatch)
    secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:rs-admin-AbCdEf"
    conn = workflows.connection_parameters("provisioned", "my-cluster", "analytics", secret_arn=secret)
    assert run(sfn, workflows.render("refresh", NAMES, conn))["status"] == "SUCCEEDED"
    assert {(p["cluster_identifier"], p["secret_arn"], p["database"]) for p in redshift.params} == {
        ("my-cluster", secret, "analytics")}


def test_failed_statement_fails_the_execution_with_its_name_and_error(sfn, monkeypatch):
    error = 'ERROR: permission denied for schema clickstream'
    redshift = FakeRedshift(monkeypatch, fail_when="CREATE TABLE IF NOT EXISTS clickstream.events", error=error)
    result = run(sfn, workflows.render("setup", NAMES, SERVERLESS))
    assert result["status"] == "FAILED"
    history = sfn.get_execution_history(executionArn=result["executionArn"])["events"]
    failure = json.dumps([e for e in history if "Failed" in e["type"]], default=str)
    assert "StatementFailed" in failure
    assert "setup/050_m001_initial_tables.sql#1 failed: " in failure
    assert "permission denied for schema clickstream" in failure
    # nothing after the failed statement was sent
    assert redshift.executed[-1].startswith("-- One row per message") or "clickstream.events" in redshift.executed[-1]
    assert not any("CREATE OR REPLACE VIEW" in sql for sql in redshift.executed)


def test_existing_materialized_view_counts_as_done(sfn, monkeypatch):
    FakeRedshift(monkeypatch, fail_when="CREATE MATERIALIZED VIEW",
                 error='ERROR: relation "clickstream_stream" already exists')
    assert run(sfn, workflows.render("setup", NAMES, SERVERLESS))["status"] == "SUCCEEDED"


def test_other_errors_on_skip_if_exists_statements_still_fail(sfn, monkeypatch):
    FakeRedshift(monkeypatch, fail_when="CREATE MATERIALIZED VIEW", error="ERROR: stream not found")
    assert run(sfn, workflows.render("setup", NAMES, SERVERLESS))["status"] == "FAILED"


def test_every_transition_names_a_real_state():
    for phase in ("setup", "refresh"):
        asl = workflows.render(phase, NAMES, SERVERLESS)
        assert workflows.dangling_transitions(asl) == []
    broken = workflows.render("setup", NAMES, SERVERLESS)
    broken["States"]["Statements"]["Next"] = "Nowhere"
    assert workflows.dangling_transitions(broken) == ["/Statements: Nowhere is not a state"]


def test_only_materialized_view_creation_is_skip_if_exists():
    flagged = [s.name for s in redshift_statements("setup", NAMES) if s.skip_if_exists]
    assert flagged == ["setup/070_streaming_view.sql#1"]
