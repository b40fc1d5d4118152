"""Deployment settings: defaults here, overridden by ``cdk.json`` context and ``-c key=value``.

``app.py`` reads them once; every invalid key is reported in one error naming each key, so a bad
``cdk synth`` says everything that is wrong at once. Values given with ``-c`` arrive as strings and
are converted (numbers, booleans, JSON for maps and lists).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from clickstream import contract
from clickstream.cost import DEFAULT_RPU, DEFAULT_USAGE_LIMIT_RPU_HOURS, SERVERLESS_BASE_CAPACITIES
from clickstream.sqlmodel import ModelNames

_MODEL = ModelNames()  # the SQL model's default names are the configuration's defaults
DEFAULTS: dict[str, Any] = {
    "writeKeys": {},
    "streamName": _MODEL.stream_name,
    "streamMode": "ON_DEMAND",
    "shardCount": 2,
    "retentionHours": 24,
    "corsAllowOrigins": ["*"],
    "stageName": "prod",
    "throttlingRateLimit": 5000,
    "throttlingBurstLimit": 2500,
    "archiveBufferSeconds": 300,
    "archiveBufferMiB": 5,
    "archiveInfrequentAccessDays": 30,
    "archiveGlacierDays": 180,
    "archiveExpirationDays": 0,
    "alarmEmail": "",
    "redshiftMode": "serverless",
    "redshiftName": "clickstream",
    "redshiftDatabase": "dev",
    "redshiftSecretArn": "",
    "redshiftDbUser": "",
    "createServerless": True,
    "serverlessBaseCapacity": DEFAULT_RPU,  # `clickstream cost` estimates with the same defaults
    "serverlessMaxCapacity": 32,
    "serverlessUsageLimitRpuHours": DEFAULT_USAGE_LIMIT_RPU_HOURS,
    "serverlessUsageLimitPeriod": "monthly",
    "serverlessUsageLimitAction": "emit-metric",
    "redshiftSubnetIds": [],
    "redshiftSecurityGroupIds": [],
    "redshiftDbRoles": "sys:dba",
    "kinesisSchema": _MODEL.kinesis_schema,
    "clickstreamSchema": _MODEL.schema,
    "clickstreamMaterializedView": _MODEL.mv,
    "readerRole": _MODEL.reader_role,
    "dedupWindowDays": _MODEL.dedup_window_days,
    "refreshSchedule": "rate(5 minutes)",
    "replayMaxConcurrency": 10,
    "replayToleratedFailurePercentage": 0,
}


# The example keys cdk.json ships with: a deploy with them would accept anyone who read the README.
PLACEHOLDER_KEY_PREFIX = "REPLACE-"
PLACEHOLDER_KEYS_MESSAGE = ("writeKeys: cdk.json still holds the example keys (REPLACE-...): set `writeKeys` to your "
                            "own keys, in cdk.json or with -c 'writeKeys={\"<your key>\": \"web\"}'")


class ConfigError(ValueError):
    """Invalid settings; the message names every offending key."""


@dataclass(frozen=True)
class Settings:
    write_keys: dict[str, str]
    stream_name: str
    stream_mode: str
    shard_count: int
    retention_hours: int
    cors_allow_origins: tuple[str, ...]
    stage_name: str
    throttling_rate_limit: int
    throttling_burst_limit: int
    archive_buffer_seconds: int
    archive_buffer_mib: int
    archive_infrequent_access_days: int
    archive_glacier_days: int
    archive_expiration_days: int
    alarm_email: str
    redshift_mode: str
    redshift_name: str
    redshift_database: str
    redshift_secret_arn: str
    redshift_db_user: str
    create_serverless: bool
    serverless_base_capacity: int
    serverless_max_capacity: int
    serverless_usage_limit_rpu_hours: int
    serverless_usage_limit_period: str
    serverless_usage_limit_action: str
    redshift_subnet_ids: tuple[str, ...]
    redshift_security_group_ids: tuple[str, ...]
    redshift_db_roles: str
    kinesis_schema: str
    clickstream_schema: str
    clickstream_materialized_view: str
    reader_role: str
    dedup_window_days: int
    refresh_schedule: str
    replay_max_concurrency: int
    replay_tolerated_failure_percentage: int

    @property
    def creates_serverless(self) -> bool:
        """True when the stack creates the namespace and workgroup (the default)."""
        return self.redshift_mode == "serverless" and self.create_serverless

    @property
    def model_names(self) -> ModelNames:
        return ModelNames(schema=self.clickstream_schema, mv=self.clickstream_materialized_view,
                          kinesis_schema=self.kinesis_schema, stream_name=self.stream_name,
                          reader_role=self.reader_role, dedup_window_days=self.dedup_window_days)


def _camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace("mi_b", "mib")


_FIELD_OF = {key: _camel_to_snake(key) for key in DEFAULTS}
assert set(_FIELD_OF.values()) == {f.name for f in fields(Settings)}, "DEFAULTS and Settings disagree"


def _coerce(key: str, value: Any, default: Any, errors: list[str]) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false"):
                    raise ValueError
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise ValueError
            return value
        if isinstance(default, int):
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if isinstance(default, dict | list):
            parsed = json.loads(value) if isinstance(value, str) else value
            if not isinstance(parsed, type(default)):
                raise ValueError
            return parsed
        if not isinstance(value, str):
            raise ValueError
        return value
    except (ValueError, TypeError):
        errors.append(f"{key}: expected {type(default).__name__}, got {value!r}")
        return default


def load_settings(get: Callable[[str], Any] | Mapping[str, Any]) -> Settings:
    """``get`` is ``node.try_get_context`` (or a mapping, in tests)."""
    lookup = get.get if isinstance(get, Mapping) else get
    errors: list[str] = []
    values: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        raw = lookup(key)
        values[key] = default if raw is None else _coerce(key, raw, default, errors)

    v = values
    if any(str(key).startswith(PLACEHOLDER_KEY_PREFIX) for key in v["writeKeys"]):
        errors.append(PLACEHOLDER_KEYS_MESSAGE)
    else:
        try:
            contract.parse_write_keys(v["writeKeys"])
        except contract.WriteKeyError as exc:
            errors.append(f"writeKeys: {exc}")
    if v["streamMode"] not in ("ON_DEMAND", "PROVISIONED"):
        errors.append(f"streamMode: must be ON_DEMAND or PROVISIONED, got {v['streamMode']!r}")
    if not 1 <= v["shardCount"] <= 500:
        errors.append(f"shardCount: must be 1-500, got {v['shardCount']}")
    if not 24 <= v["retentionHours"] <= 8760:
        errors.append(f"retentionHours: must be 24-8760 (Kinesis limits), got {v['retentionHours']}")
    origins = v["corsAllowOrigins"]
    if not origins or not all(isinstance(o, str) and (o == "*" or re.match(r"^https?://[^/]+$", o))
                              for o in origins):
        errors.append("corsAllowOrigins: a list of '*' or origins like 'https://shop.example.com'")
    elif len(origins) > 1:
        errors.append("corsAllowOrigins: give '*' or exactly one origin (API Gateway answers one static value)")
    if not re.match(r"^[A-Za-z0-9_]{1,128}$", v["stageName"]):
        errors.append(f"stageName: letters, digits and '_' only, got {v['stageName']!r}")
    if not 0 < v["throttlingBurstLimit"] <= 5000 or not 0 < v["throttlingRateLimit"] <= 10000:
        errors.append("throttlingRateLimit/throttlingBurstLimit: 1-10000 and 1-5000 (account defaults)")
    if not 0 <= v["archiveBufferSeconds"] <= 900:
        errors.append(f"archiveBufferSeconds: must be 0-900 (Firehose limits), got {v['archiveBufferSeconds']}")
    if not 1 <= v["archiveBufferMiB"] <= 128:
        errors.append(f"archiveBufferMiB: must be 1-128 (Firehose limits), got {v['archiveBufferMiB']}")
    ia, glacier, expire = (v["archiveInfrequentAccessDays"], v["archiveGlacierDays"], v["archiveExpirationDays"])
    if ia and ia < 30:
        errors.append(f"archiveInfrequentAccessDays: S3 requires at least 30 (or 0 to skip), got {ia}")
    if glacier and ia and glacier < ia + 30:
        errors.append("archiveGlacierDays: must be at least 30 days after archiveInfrequentAccessDays")
    if expire and expire <= max(ia, glacier):
        errors.append("archiveExpirationDays: must be after the transitions (or 0 to keep forever)")
    if v["alarmEmail"] and not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", v["alarmEmail"]):
        errors.append(f"alarmEmail: not an e-mail address: {v['alarmEmail']!r}")
    if v["redshiftMode"] not in ("serverless", "provisioned"):
        errors.append(f"redshiftMode: must be serverless or provisioned, got {v['redshiftMode']!r}")
    if v["redshiftMode"] == "provisioned" and not (v["redshiftSecretArn"] or v["redshiftDbUser"]):
        errors.append("redshiftSecretArn/redshiftDbUser: a provisioned cluster needs one of them")
    base, most = v["serverlessBaseCapacity"], v["serverlessMaxCapacity"]
    if base not in SERVERLESS_BASE_CAPACITIES:
        errors.append(f"serverlessBaseCapacity: 4, or 8 to 512 in steps of 8 RPUs, got {base}")
    if most and not (base <= most <= 5632 and most % 8 == 0):
        errors.append(f"serverlessMaxCapacity: a multiple of 8 from serverlessBaseCapacity to 5632 RPUs "
                      f"(0 = no cap), got {most}")
    if v["serverlessUsageLimitRpuHours"] < 0:
        errors.append(f"serverlessUsageLimitRpuHours: RPU-hours per period, 0 = no limit, "
                      f"got {v['serverlessUsageLimitRpuHours']}")
    if v["serverlessUsageLimitPeriod"] not in ("daily", "weekly", "monthly"):
        errors.append(f"serverlessUsageLimitPeriod: daily, weekly or monthly, got {v['serverlessUsageLimitPeriod']!r}")
    if v["serverlessUsageLimitAction"] not in ("log", "emit-metric", "deactivate"):
        errors.append("serverlessUsageLimitAction: log, emit-metric or deactivate, "
                      f"got {v['serverlessUsageLimitAction']!r}")
    if 0 < len(v["redshiftSubnetIds"]) < 3:
        # https://docs.aws.amazon.com/redshift/latest/mgmt/serverless-usage-considerations.html
        errors.append("redshiftSubnetIds: Redshift Serverless needs at least three subnets (in three "
                      f"Availability Zones), got {len(v['redshiftSubnetIds'])}")
    for key, prefix in (("redshiftSubnetIds", "subnet"), ("redshiftSecurityGroupIds", "sg")):
        if not all(isinstance(x, str) and re.match(rf"^{prefix}-[0-9a-f]{{8,17}}$", x) for x in v[key]):
            errors.append(f"{key}: a list of ids like {prefix}-0123abcd, got {v[key]!r}")
    if not re.match(r"^[A-Za-z0-9_:.+=@-]{1,256}$", v["redshiftDbRoles"]):
        errors.append(f"redshiftDbRoles: database roles separated by ':' (e.g. sys:dba), got {v['redshiftDbRoles']!r}")
    if not re.match(r"^[a-z][a-z0-9-]{2,63}$", v["redshiftName"]):
        errors.append(f"redshiftName: lower-case letters, digits and '-', 3-64 long, got {v['redshiftName']!r}")
    if not re.match(r"^[a-z_][a-z0-9_$]{0,126}$", v["redshiftDatabase"]):
        errors.append(f"redshiftDatabase: not a database name: {v['redshiftDatabase']!r}")
    if not re.match(r"^(rate|cron)\(.+\)$", v["refreshSchedule"]):
        errors.append("refreshSchedule: an EventBridge rate(...) or cron(...) expression, "
                      f"got {v['refreshSchedule']!r}")
    if not 1 <= v["replayMaxConcurrency"] <= 1000:
        errors.append(f"replayMaxConcurrency: must be 1-1000, got {v['replayMaxConcurrency']}")
    if not 0 <= v["replayToleratedFailurePercentage"] <= 100:
        errors.append(f"replayToleratedFailurePercentage: must be 0-100, got {v['replayToleratedFailurePercentage']}")
    names = ModelNames(schema=v["clickstreamSchema"], mv=v["clickstreamMaterializedView"],
                       kinesis_schema=v["kinesisSchema"], stream_name=v["streamName"], reader_role=v["readerRole"],
                       dedup_window_days=v["dedupWindowDays"])
    key_of = {"schema": "clickstreamSchema", "mv": "clickstreamMaterializedView", "kinesis_schema": "kinesisSchema",
              "stream_name": "streamName", "reader_role": "readerRole", "dedup_window_days": "dedupWindowDays"}
    for problem in names.validate():
        field = problem.split(" ", 1)[0]
        errors.append(f"{key_of.get(field, field)}: {problem.split(' ', 1)[1]}")
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
    given: dict[str, Any] = {_FIELD_OF[k]: (tuple(val) if isinstance(val, list) else val) for k, val in values.items()}
    return Settings(**given)
