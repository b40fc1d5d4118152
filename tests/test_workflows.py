"""The Step Functions workflows (statemachines/*.asl.json) executed in moto against a fake Redshift."""

from __future__ import annotations

import contextlib
import json
import re
import time

import boto3
import pytest
from moto import mock_aws
from moto.redshiftdata import models as rsd_models
from moto.redshiftdata import responses as rsd_responses
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk import (
    StateTaskServiceAwsSdk,
)

from clickstream import workflows
from clickstream.sqlmodel import ModelNames, Statement, redshift_statements

NAMES = ModelNames(iam_role="arn:aws:iam::123456789012:role/clickstream-streaming")
REGION = "us-east-1"


class FakeRedshift:
    """Stands in for Redshift behind moto's Data API: records SQL, finishes or fails statements.

    moto has no BatchExecuteStatement; this adds it (one statement id for the whole batch, as the
    real API returns) so the workflow's transactions run too. ``calls`` records each API call.
    """

    def __init__(self, monkeypatch, fail_when: str | None = None, error: str = "") -> None:
        self.executed: list[str] = []
        self.params: list[dict] = []
        self.calls: list[tuple[str, list[str]]] = []
        self.fail_when, self.error = fail_when, error
        self.hold = False
        backend_cls = rsd_models.RedshiftDataAPIServiceBackend
        original_execute = backend_cls.execute_statement
        original_describe = backend_cls.describe_statement
        fake = self

        def execute(self, **kwargs):
            fake.executed.append(kwargs["sql"])
            fake.params.append(kwargs)
            fake.calls.append(("execute", [kwargs["sql"]]))
            return original_execute(self, **kwargs)

        def batch_response(self):
            sqls = self._get_param("Sqls")
            fake.executed.extend(sqls)
            fake.calls.append(("batch", list(sqls)))
            statement = rsd_models.Statement(
                cluster_identifier=self._get_param("ClusterIdentifier"), database=self._get_param("Database"),
                db_user=self._get_param("DbUser"), query_parameters=[], query_string="\n".join(sqls),
                secret_arn=self._get_param("SecretArn"))
            fake.params.append({"database": statement.database, "workgroup": self._get_param("WorkgroupName"),
                                "cluster_identifier": statement.cluster_identifier,
                                "secret_arn": statement.secret_arn, "statement_name": self._get_param("StatementName")})
            self.redshiftdata_backend.statements[statement.id] = statement
            return 200, {}, json.dumps({"Id": statement.id, "Database": statement.database})

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
        monkeypatch.setattr(rsd_responses.RedshiftDataAPIServiceResponse, "batch_execute_statement",
                            batch_response, raising=False)
        monkeypatch.setattr(backend_cls, "describe_statement", describe)
        monkeypatch.setattr(rsd_models.Statement, "__iter__", iterate)


class FakeSegmentTables:
    """Stands in for the segment_tables Lambda behind the ``lambda:invoke`` integration (moto runs
    Lambda code only in Docker): records each invocation's FunctionName and payload, and how many
    Data API calls had been made by then; returns ``result`` (the handler's output) or fails as a
    Lambda function error does (``FunctionError`` with the error payload)."""

    RESULT = {"rows": 12, "tablesCreated": 2, "columnsAdded": 5, "deferred": 0,
              "loadedAt": "2026-11-30 10:00:00+00", "transactions": 1}

    def __init__(self, monkeypatch, redshift: FakeRedshift | None = None, error: str = "") -> None:
        self.invocations: list[dict] = []
        fake = self

        def invoke(parameters: dict, region: str, state_credentials) -> dict:
            fake.invocations.append({"FunctionName": parameters["FunctionName"],
                                     "Payload": json.loads(parameters["Payload"]),
                                     "afterCalls": len(redshift.calls) if redshift else None})
            if error:
                return {"StatusCode": 200, "FunctionError": "Unhandled",
                        "Payload": {"errorType": "RuntimeError", "errorMessage": error}}
            return {"StatusCode": 200, "ExecutedVersion": "$LATEST", "Payload": dict(fake.RESULT)}

        monkeypatch.setattr(lambda_eval_utils, "_invoke_lambda_function", invoke)


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


@contextlib.contextmanager
def executing_stepfunctions(monkeypatch):
    """moto with state machines really executing (also used by the warehouse stack's tests)."""
    # moto's ASL interpreter does not know the SDK name "redshiftdata" (boto3: "redshift-data").
    monkeypatch.setitem(state_task_service.StateTaskService._SERVICE_NAME_SFN_TO_BOTO_OVERRIDES,
                        "redshiftdata", "redshift-data")
    _pascal_sfn_sdk(monkeypatch)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        yield boto3.client("stepfunctions", region_name=REGION)


@pytest.fixture
def sfn(monkeypatch):
    with executing_stepfunctions(monkeypatch) as client:
        yield client


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


def expected_calls(statements: list[Statement]) -> list[tuple[str, list[str]]]:
    """Consecutive transaction statements form one batch; every other statement is its own call."""
    calls: list[tuple[str, list[str]]] = []
    previous_in_transaction = False
    for s in statements:
        if s.transaction and previous_in_transaction:
            calls[-1][1].append(s.sql)
        else:
            calls.append(("batch" if s.transaction else "execute", [s.sql]))
        previous_in_transaction = s.transaction
    return calls


@pytest.mark.parametrize("phase", ["setup", "refresh"])
def test_success_path_sends_exactly_the_model_statements_in_order(sfn, monkeypatch, phase):
    redshift = FakeRedshift(monkeypatch)
    result = run(sfn, workflows.render(phase, NAMES, SERVERLESS))
    assert result["status"] == "SUCCEEDED", result
    assert redshift.executed == [s.sql for s in redshift_statements(phase, NAMES)]
    assert redshift.calls == expected_calls(redshift_statements(phase, NAMES))
    assert all(p["database"] == "dev" for p in redshift.params)


REFRESH_WITH_MERGE = [
    Statement("refresh/010_refresh_view.sql#1", "REFRESH MATERIALIZED VIEW clickstream.clickstream_stream;"),
    Statement("refresh/030_merge.sql#1", "CREATE TEMP TABLE staging AS SELECT 1;", transaction=True),
    Statement("refresh/030_merge.sql#2", "INSERT INTO clickstream.events SELECT * FROM staging;", transaction=True),
    Statement("refresh/040_watermark.sql#1", "UPDATE clickstream.load_state SET watermark = 1;", transaction=True),
    Statement("refresh/050_stats.sql#1", "ANALYZE clickstream.events;"),
    Statement("refresh/060_tail.sql#1", "DELETE FROM clickstream.staging_log;", transaction=True),
]


def test_refresh_is_its_own_call_and_the_merge_one_batch_transaction(sfn, monkeypatch):
    """REFRESH commits on its own; the merge's statements go in ONE BatchExecuteStatement (one
    transaction: the watermark moves only with the rows it covers)."""
    redshift = FakeRedshift(monkeypatch)
    asl = workflows.render("refresh", NAMES, SERVERLESS, statements=REFRESH_WITH_MERGE)
    result = run(sfn, asl)
    assert result["status"] == "SUCCEEDED", result
    sql = [s.sql for s in REFRESH_WITH_MERGE]
    assert redshift.calls == [("execute", [sql[0]]), ("batch", sql[1:4]), ("execute", [sql[4]]),
                              ("batch", [sql[5]])]
    batch = next(p for p in redshift.params if "statement_name" in p)
    assert batch["statement_name"] == "refresh/030_merge.sql#1 .. refresh/040_watermark.sql#1"
    assert batch["workgroup"] == "clickstream" and batch["database"] == "dev"


def test_a_failed_batch_fails_the_run_with_its_name_and_sends_nothing_after(sfn, monkeypatch):
    redshift = FakeRedshift(monkeypatch, fail_when="INSERT INTO clickstream.events",
                            error="ERROR: value too long for type character varying(100)")
    result = run(sfn, workflows.render("refresh", NAMES, SERVERLESS, statements=REFRESH_WITH_MERGE))
    assert result["status"] == "FAILED"
    history = json.dumps(sfn.get_execution_history(executionArn=result["executionArn"])["events"], default=str)
    assert "refresh/030_merge.sql#1 .. refresh/040_watermark.sql#1 failed: ERROR: value too long" in history
    assert [kind for kind, _ in redshift.calls] == ["execute", "batch"]  # ANALYZE and the tail never sent


def test_steps_group_consecutive_transaction_statements_only():
    steps = workflows.steps(REFRESH_WITH_MERGE)
    assert [(s["transaction"], len(s["sqls"])) for s in steps] == [(False, 1), (True, 3), (False, 1), (True, 1)]
    assert all(s["skipIfExists"] is False for s in steps if s["transaction"])
    too_many = [Statement(f"refresh/x.sql#{i}", "SELECT 1;", transaction=True) for i in range(41)]
    with pytest.raises(ValueError, match="at most 40"):
        workflows.steps(too_many)


def test_service_integration_arns_carry_the_partition():
    asl = workflows.render("refresh", NAMES, SERVERLESS, partition="aws-cn")
    text = json.dumps(asl)
    resources = re.findall(r'"Resource": "([^"]+)"', text)
    assert len(resources) == 5 and all(r.startswith("arn:aws-cn:states:::aws-sdk:") for r in resources)
    assert "arn:aws:" not in text


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


def test_only_materialized_view_and_reader_role_creation_are_skip_if_exists():
    flagged = [s.sql for s in redshift_statements("setup", NAMES) if s.skip_if_exists]
    assert [sql.split("\n")[-1] for sql in flagged if "CREATE ROLE" in sql] == ["CREATE ROLE clickstream_reader;"]
    assert any("CREATE MATERIALIZED VIEW" in sql for sql in flagged)
    assert all("CREATE MATERIALIZED VIEW" in sql or "CREATE ROLE" in sql or "GRANT" in sql for sql in flagged)


def test_setup_grants_the_reader_role_read_access_on_redshift_only():
    from clickstream.sqlmodel import SQL_DIR

    grants = [s for s in redshift_statements("setup", NAMES) if s.name.startswith("setup/900_grants.sql")]
    assert grants and all(s.redshift_only for s in grants)
    assert grants == redshift_statements("setup", NAMES)[-len(grants):]  # last: after every object exists
    sql = "\n".join(s.sql for s in grants)
    for line in ("GRANT USAGE ON SCHEMA clickstream TO ROLE clickstream_reader;",
                 "GRANT SELECT ON ALL TABLES IN SCHEMA clickstream TO ROLE clickstream_reader;",
                 "ALTER DEFAULT PRIVILEGES IN SCHEMA clickstream GRANT SELECT ON TABLES TO ROLE clickstream_reader;"):
        assert line in sql
    assert "${reader_role}" in (SQL_DIR / "redshift" / "setup" / "900_grants.sql").read_text()
    custom = ModelNames(schema="analytics", reader_role="bi_read")
    assert "GRANT USAGE ON SCHEMA analytics TO ROLE bi_read;" in "\n".join(
        s.sql for s in redshift_statements("setup", custom))


SEGMENT_FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:clickstream-segment-tables"


def test_refresh_invokes_segment_tables_once_after_every_statement_and_keeps_only_the_counts(sfn, monkeypatch):
    redshift = FakeRedshift(monkeypatch)
    segment = FakeSegmentTables(monkeypatch, redshift)
    asl = workflows.render("refresh", NAMES, SERVERLESS, segment_tables_function=SEGMENT_FUNCTION)
    assert workflows.dangling_transitions(asl) == []
    result = run(sfn, asl)
    assert result["status"] == "SUCCEEDED", result
    statements = expected_calls(redshift_statements("refresh", NAMES))
    assert redshift.calls == statements  # the merge and everything after it ran first
    assert segment.invocations == [{"FunctionName": SEGMENT_FUNCTION, "Payload": {"execution": result["executionArn"]},
                                    "afterCalls": len(statements)}]
    assert json.loads(result["output"])["segmentTables"] == {"rows": 12, "tablesCreated": 2, "columnsAdded": 5,
                                                             "deferred": 0}


def test_setup_never_invokes_segment_tables(sfn, monkeypatch):
    FakeRedshift(monkeypatch)
    segment = FakeSegmentTables(monkeypatch)
    asl = workflows.render("setup", NAMES, SERVERLESS)
    assert workflows.SEGMENT_TABLES_STATE not in asl["States"] and asl["States"]["RunEachInOrder"]["End"] is True
    assert run(sfn, asl)["status"] == "SUCCEEDED"
    assert segment.invocations == []
    with pytest.raises(ValueError, match="only the refresh runs the segment_tables function, not setup"):
        workflows.render("setup", NAMES, SERVERLESS, segment_tables_function=SEGMENT_FUNCTION)


def test_a_failed_merge_never_invokes_segment_tables(sfn, monkeypatch):
    redshift = FakeRedshift(monkeypatch, fail_when="INSERT INTO clickstream.events", error="ERROR: disk full")
    segment = FakeSegmentTables(monkeypatch, redshift)
    asl = workflows.render("refresh", NAMES, SERVERLESS, statements=REFRESH_WITH_MERGE,
                           segment_tables_function=SEGMENT_FUNCTION)
    assert run(sfn, asl)["status"] == "FAILED"
    assert segment.invocations == []


def test_a_segment_tables_failure_fails_the_run_after_the_merge_committed(sfn, monkeypatch):
    """The alarm fires on the failed execution; the merge is already committed and the function's own
    watermark did not move, so the next run spreads the same rows (RedshiftRun is idempotent)."""
    redshift = FakeRedshift(monkeypatch)
    segment = FakeSegmentTables(monkeypatch, redshift, error="Redshift statement FAILED: permission denied")
    asl = workflows.render("refresh", NAMES, SERVERLESS, statements=REFRESH_WITH_MERGE,
                           segment_tables_function=SEGMENT_FUNCTION)
    result = run(sfn, asl)
    assert result["status"] == "FAILED"
    assert len(redshift.calls) == 4 and len(segment.invocations) == 1  # function errors are not retried
    history = json.dumps(sfn.get_execution_history(executionArn=result["executionArn"])["events"], default=str)
    assert "permission denied" in history and "SpreadIntoSegmentTables" in history


def test_segment_tables_task_retries_lambda_service_errors_and_carries_the_partition():
    asl = workflows.render("refresh", NAMES, SERVERLESS, partition="aws-cn",
                           segment_tables_function=SEGMENT_FUNCTION)
    task = asl["States"][workflows.SEGMENT_TABLES_STATE]
    assert task["Resource"] == "arn:aws-cn:states:::lambda:invoke"
    assert task["Parameters"]["FunctionName"] == SEGMENT_FUNCTION
    retried = {e for r in task["Retry"] for e in r["ErrorEquals"]}
    assert {"Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
            "Lambda.TooManyRequestsException", "States.Timeout"} <= retried
    assert all(r["BackoffRate"] > 1 for r in task["Retry"])
    assert task["TimeoutSeconds"] > workflows.SEGMENT_TABLES_FUNCTION_TIMEOUT_SECONDS
    assert asl["States"]["RunEachInOrder"]["Next"] == workflows.SEGMENT_TABLES_STATE
