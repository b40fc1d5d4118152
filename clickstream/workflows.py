"""The Step Functions workflows: ASL files in ``statemachines/`` filled with the SQL model.

The ASL stays valid JSON with ``"${Name}"`` placeholders. :func:`render` replaces a string that is
exactly a placeholder by any JSON value, a placeholder inside a string by text, and the key
``"${ConnectionParameters}"`` by the Data API connection fields for the configured Redshift. The
warehouse stack deploys what this returns (with ``${Partition}`` as ``AWS::Partition``) and the
tests execute the same in moto.

The run-statements workflow sends each statement as one ``ExecuteStatement`` (its own session and
commit), except that consecutive statements marked ``transaction`` go together as one
``BatchExecuteStatement``, which the Data API runs as a single transaction
(https://docs.aws.amazon.com/redshift/latest/mgmt/data-api.html,
https://docs.aws.amazon.com/redshift-data/latest/APIReference/API_BatchExecuteStatement.html).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from clickstream.sqlmodel import ModelNames, Statement, redshift_statements

STATEMACHINES_DIR = Path(__file__).resolve().parent.parent / "statemachines"
RUN_STATEMENTS = "run-statements.asl.json"
REPLAY = "replay.asl.json"
DEFAULT_POLL_SECONDS = 5
# The refresh's last state: the segment_tables Lambda, after the merge committed (setup has no such state).
SEGMENT_TABLES_STATE = "SpreadIntoSegmentTables"
# The function's own timeout (Lambda's maximum, 15 minutes) and the Task's, a little longer so that
# the function's own timeout (an error it reports) comes first.
SEGMENT_TABLES_FUNCTION_TIMEOUT_SECONDS = 900
# It mostly waits on the Data API, so it needs little memory (the cost model reads this too).
SEGMENT_TABLES_MEMORY_MB = 256
SEGMENT_TABLES_TASK_TIMEOUT_SECONDS = SEGMENT_TABLES_FUNCTION_TIMEOUT_SECONDS + 60
# BatchExecuteStatement takes 1-40 SQL statements (API_BatchExecuteStatement, "Sqls").
MAX_BATCH_STATEMENTS = 40
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


def connection_parameters(mode: str, name: str, database: str, *, secret_arn: str = "",
                          db_user: str = "") -> dict[str, str]:
    """Data API target: a Serverless workgroup, or a provisioned cluster with a secret or db user."""
    params = {"WorkgroupName": name} if mode == "serverless" else {"ClusterIdentifier": name}
    params["Database"] = database
    if secret_arn:
        params["SecretArn"] = secret_arn
    elif mode == "provisioned":
        params["DbUser"] = db_user
    return params


def _fill(node: Any, values: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "${ConnectionParameters}":
                out.update(values["ConnectionParameters"])
            else:
                out[key] = _fill(value, values)
        return out
    if isinstance(node, list):
        return [_fill(v, values) for v in node]
    if isinstance(node, str):
        whole = _PLACEHOLDER.fullmatch(node)
        if whole:
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), node)
    return node


def steps(statements: list[Statement]) -> list[dict[str, Any]]:
    """The items the workflow's Map runs, in order: one per statement, except that a run of
    consecutive ``transaction`` statements is one item whose ``sqls`` go in one BatchExecuteStatement.

    A batch is all or nothing, so "already exists" is never treated as done inside one.
    """
    out: list[dict[str, Any]] = []
    group: list[Statement] = []

    def close() -> None:
        if not group:
            return
        if len(group) > MAX_BATCH_STATEMENTS:
            raise ValueError(f"{group[0].name}: {len(group)} consecutive transaction statements; "
                             f"BatchExecuteStatement takes at most {MAX_BATCH_STATEMENTS}")
        name = group[0].name if len(group) == 1 else f"{group[0].name} .. {group[-1].name}"
        out.append({"name": name, "sqls": [s.sql for s in group], "transaction": True, "skipIfExists": False})
        group.clear()

    for statement in statements:
        if statement.transaction:
            group.append(statement)
            continue
        close()
        out.append({"name": statement.name, "sqls": [statement.sql], "transaction": False,
                    "skipIfExists": statement.skip_if_exists})
    close()
    return out


def statements_for(phase: str, names: ModelNames) -> list[dict[str, Any]]:
    """The workflow items for ``phase`` of ``sql/redshift``."""
    return steps(redshift_statements(phase, names))


def render(phase: str, names: ModelNames, connection: dict[str, str],
           poll_seconds: int = DEFAULT_POLL_SECONDS, *, partition: str = "aws",
           statements: list[Statement] | None = None,
           segment_tables_function: str | None = None) -> dict[str, Any]:
    """The run-statements state machine for ``phase`` ("setup" or "refresh").

    ``partition`` goes into the service-integration ARNs (the stack passes ``AWS::Partition``);
    ``statements`` replaces the phase's files (tests use it to run hand-made statements).
    ``segment_tables_function`` (refresh only) is the ``segment_tables`` Lambda the refresh invokes
    after its last statement; without it the statements are the whole workflow (as for setup,
    which must never spread rows: nothing has been merged yet).
    """
    if phase != "refresh" and segment_tables_function:
        raise ValueError(f"only the refresh runs the segment_tables function, not {phase}")
    asl = json.loads((STATEMACHINES_DIR / RUN_STATEMENTS).read_text())
    if not segment_tables_function:
        del asl["States"][SEGMENT_TABLES_STATE]
        last = asl["States"]["RunEachInOrder"]
        del last["Next"]
        last["End"] = True
    items = steps(statements if statements is not None else redshift_statements(phase, names))
    values = {"Statements": items, "ConnectionParameters": connection, "PollSeconds": poll_seconds,
              "Partition": partition, "SegmentTablesFunction": segment_tables_function or "",
              "SegmentTablesTimeoutSeconds": SEGMENT_TABLES_TASK_TIMEOUT_SECONDS}
    return _fill(asl, values)


def render_replay(plan_function_arn: str, replay_function_arn: str, max_concurrency: int,
                  tolerated_failure_percentage: int, result_bucket: str) -> dict[str, Any]:
    """The replay state machine: plan the hours of the range, then a Distributed Map over them
    whose results are written to ``result_bucket`` under ``replay.RESULT_PREFIX``."""
    from clickstream.replay import RESULT_PREFIX

    asl = json.loads((STATEMACHINES_DIR / REPLAY).read_text())
    return _fill(asl, {"PlanFunctionArn": plan_function_arn, "ReplayFunctionArn": replay_function_arn,
                       "MaxConcurrency": max_concurrency,
                       "ToleratedFailurePercentage": tolerated_failure_percentage,
                       "ResultBucket": result_bucket, "ResultPrefix": RESULT_PREFIX})


def state_names(asl: dict[str, Any]) -> list[str]:
    return list(asl["States"])


def dangling_transitions(asl: dict[str, Any]) -> list[str]:
    """Every Next/Default/StartAt must name a state in the same scope (moto and cfn-lint don't check)."""
    problems: list[str] = []

    def check(scope: dict[str, Any], where: str) -> None:
        states = scope["States"]
        if scope["StartAt"] not in states:
            problems.append(f"{where}: StartAt {scope['StartAt']} is not a state")
        for name, state in states.items():
            targets = [state.get("Next"), state.get("Default")]
            targets += [c.get("Next") for c in state.get("Choices", [])]
            targets += [c.get("Next") for c in state.get("Catch", [])]
            for target in filter(None, targets):
                if target not in states:
                    problems.append(f"{where}/{name}: {target} is not a state")
            for key in ("Iterator", "ItemProcessor"):  # inline and distributed Map bodies
                if key in state:
                    check(state[key], f"{where}/{name}")
            for i, branch in enumerate(state.get("Branches", [])):
                check(branch, f"{where}/{name}[{i}]")

    check(asl, "")
    return problems
