"""The Step Functions workflows: ASL files in ``statemachines/`` filled with the SQL model.

The ASL stays valid JSON with ``"${Name}"`` placeholders. :func:`render` replaces a string that is
exactly a placeholder by any JSON value, a placeholder inside a string by text, and the key
``"${ConnectionParameters}"`` by the Data API connection fields for the configured Redshift. The
warehouse stack deploys what this returns and the tests execute the same in moto.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from clickstream.sqlmodel import ModelNames, redshift_statements

STATEMACHINES_DIR = Path(__file__).resolve().parent.parent / "statemachines"
RUN_STATEMENTS = "run-statements.asl.json"
REPLAY = "replay.asl.json"
DEFAULT_POLL_SECONDS = 5
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


def statements_for(phase: str, names: ModelNames) -> list[dict[str, Any]]:
    return [{"name": s.name, "sql": s.sql, "skipIfExists": s.skip_if_exists}
            for s in redshift_statements(phase, names)]


def render(phase: str, names: ModelNames, connection: dict[str, str],
           poll_seconds: int = DEFAULT_POLL_SECONDS) -> dict[str, Any]:
    """The run-statements state machine for ``phase`` ("setup" or "refresh")."""
    asl = json.loads((STATEMACHINES_DIR / RUN_STATEMENTS).read_text())
    values = {"Statements": statements_for(phase, names), "ConnectionParameters": connection,
              "PollSeconds": poll_seconds}
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
