"""The CDK app: synthesized templates asserted, linted (cfn-lint), checked by cdk-nag, and the
mapping templates taken out of the synthesized API and rendered for real SDK payloads."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.cdk
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
cdk = pytest.importorskip("aws_cdk")
from aws_cdk.assertions import Match, Template  # noqa: E402

from clickstream import apigw, contract  # noqa: E402
from clickstream.config import ConfigError, load_settings  # noqa: E402
from clickstream.ingest import RequestInfo, build_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = json.loads((ROOT / "cdk.json").read_text())["context"]
KEYS = {"web-write-key-1": "web", "server-write-key-1": "backend"}


def synth(outdir: Path, **overrides):
    sys.path.insert(0, str(ROOT))
    import app as app_module

    app = cdk.App(context={**CONTEXT, "writeKeys": KEYS, **overrides}, outdir=str(outdir))
    app_module.build_app(app)
    assembly = app.synth()
    stacks = {s.stack_name: s for s in app.node.children if isinstance(s, cdk.Stack)}
    return assembly, {name: Template.from_stack(stack) for name, stack in stacks.items()}


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory):
    return synth(tmp_path_factory.mktemp("cdk.out"))


@pytest.fixture(scope="module")
def storage(synthesized) -> Template:
    return synthesized[1]["ClickstreamStorage"]


@pytest.fixture(scope="module")
def ingest(synthesized) -> Template:
    return synthesized[1]["ClickstreamIngest"]


def test_stream_is_on_demand_encrypted_with_retention(storage):
    storage.has_resource_properties("AWS::Kinesis::Stream", {
        "Name": "clickstream-events",
        "StreamModeDetails": {"StreamMode": "ON_DEMAND"},
        "RetentionPeriodHours": 24,
        "StreamEncryption": {"EncryptionType": "KMS", "KeyId": Match.any_value()},
    })
    storage.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})


def test_provisioned_mode_and_retention_from_context(tmp_path):
    _, templates = synth(tmp_path, streamMode="PROVISIONED", shardCount="4", retentionHours="72")
    templates["ClickstreamStorage"].has_resource_properties("AWS::Kinesis::Stream", {
        "ShardCount": 4, "RetentionPeriodHours": 72, "StreamModeDetails": {"StreamMode": "PROVISIONED"}})


def test_firehose_archives_gzip_ndjson_with_the_local_layout(storage):
    from clickstream import archive

    storage.has_resource_properties("AWS::KinesisFirehose::DeliveryStream", {
        "DeliveryStreamType": "KinesisStreamAsSource",
        "KinesisStreamSourceConfiguration": Match.object_like({"KinesisStreamARN": Match.any_value()}),
        "ExtendedS3DestinationConfiguration": Match.object_like({
            "CompressionFormat": "GZIP",
            "Prefix": archive.FIREHOSE_PREFIX,
            "ErrorOutputPrefix": archive.ERROR_PREFIX_FIREHOSE,
            "BufferingHints": {"IntervalInSeconds": 300, "SizeInMBs": 5},
            "CloudWatchLoggingOptions": Match.object_like({"Enabled": True}),
        }),
    })
    assert archive.FIREHOSE_PREFIX.startswith(archive.ARCHIVE_PREFIX)


def test_archive_bucket_is_locked_down_with_lifecycle_and_access_logs(storage):
    storage.has_resource_properties("AWS::S3::Bucket", {
        "BucketEncryption": Match.any_value(),
        "PublicAccessBlockConfiguration": {"BlockPublicAcls": True, "BlockPublicPolicy": True,
                                           "IgnorePublicAcls": True, "RestrictPublicBuckets": True},
        "LoggingConfiguration": Match.object_like({"LogFilePrefix": "archive/"}),
        "VersioningConfiguration": {"Status": "Enabled"},
        "LifecycleConfiguration": {"Rules": [Match.object_like({"Transitions": [
            {"StorageClass": "STANDARD_IA", "TransitionInDays": 30},
            {"StorageClass": "GLACIER_IR", "TransitionInDays": 180}]})]},
    })
    policies = storage.find_resources("AWS::S3::BucketPolicy")
    text = json.dumps(policies)
    assert '"aws:SecureTransport": "false"' in text


def test_no_lambda_between_api_gateway_and_kinesis(ingest):
    assert ingest.find_resources("AWS::Lambda::Function") == {}
    methods = ingest.find_resources("AWS::ApiGateway::Method", {"Properties": {"HttpMethod": "POST"}})
    assert len(methods) == 2  # /v1/{route} for every tracking route, and /v1/m (mock)
    kinesis = [m for m in methods.values() if m["Properties"]["Integration"]["Type"] == "AWS"]
    assert len(kinesis) == 1
    for m in kinesis:
        uri = json.dumps(m["Properties"]["Integration"]["Uri"])
        assert ":kinesis:action/PutRecords" in uri
        assert m["Properties"]["Integration"]["PassthroughBehavior"] == "NEVER"
        assert set(m["Properties"]["Integration"]["RequestTemplates"]) == set(contract.ACCEPTED_MEDIA_TYPES)


def test_integration_role_may_only_put_records_on_this_stream(ingest):
    policies = ingest.find_resources("AWS::IAM::Policy")
    role_policies = [p for p in policies.values()
                     if "KinesisIntegrationRole" in json.dumps(p["Properties"]["Roles"])]
    statements = [s for p in role_policies for s in p["Properties"]["PolicyDocument"]["Statement"]]
    actions = sorted(a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"]))
    assert actions == ["kinesis:PutRecord", "kinesis:PutRecords", "kms:GenerateDataKey"]
    for s in statements:
        assert "*" not in json.dumps(s["Resource"])


def test_api_stage_has_throttling_tracing_and_json_access_logs(ingest):
    ingest.has_resource_properties("AWS::ApiGateway::Stage", {
        "StageName": "prod",
        "TracingEnabled": True,
        "AccessLogSetting": Match.object_like({"Format": Match.string_like_regexp(r"requestId")}),
        "MethodSettings": Match.array_with([Match.object_like({
            "ThrottlingRateLimit": 5000, "ThrottlingBurstLimit": 2500, "LoggingLevel": "ERROR"})]),
    })
    ingest.has_resource_properties("AWS::ApiGateway::RestApi", {
        "EndpointConfiguration": {"Types": ["REGIONAL"]}, "MinimumCompressionSize": 1024})


def test_gateway_responses_are_segment_shaped_with_cors(ingest):
    responses = ingest.find_resources("AWS::ApiGateway::GatewayResponse")
    by_type = {r["Properties"]["ResponseType"]: r["Properties"] for r in responses.values()}
    for rtype, code in [("BAD_REQUEST_BODY", "invalid_json"), ("THROTTLED", "throttled"),
                        ("UNSUPPORTED_MEDIA_TYPE", "unsupported_media_type"), ("DEFAULT_5XX", "internal_error"),
                        ("MISSING_AUTHENTICATION_TOKEN", "not_found"), ("REQUEST_TOO_LARGE", "request_too_large")]:
        props = by_type[rtype]
        assert json.loads(props["ResponseTemplates"]["application/json"])["code"] == code
        assert props["ResponseParameters"]["gatewayresponse.header.Access-Control-Allow-Origin"] == "'*'"
    assert by_type["THROTTLED"]["StatusCode"] == "429"
    assert by_type["THROTTLED"]["ResponseParameters"]["gatewayresponse.header.Retry-After"] == "'1'"
    assert by_type["MISSING_AUTHENTICATION_TOKEN"]["StatusCode"] == "404"


def test_preflight_allows_authorization_by_name(ingest):
    options = ingest.find_resources("AWS::ApiGateway::Method", {"Properties": {"HttpMethod": "OPTIONS"}})
    assert options
    text = json.dumps(options)
    assert "Authorization" in text and "X-Retry-Count" in text


class _Capture(BaseHTTPRequestHandler):
    captured: list[tuple[str, dict, bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.captured.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(contract.SUCCESS_BODY.encode())

    def log_message(self, *args):
        pass


def sdk_requests(gzip: bool) -> list[tuple[str, dict, bytes]]:
    """What the official Python SDK really sends, captured on loopback."""
    from segment.analytics import Client

    _Capture.captured = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = Client("web-write-key-1", host=f"http://127.0.0.1:{server.server_port}", sync_mode=True, gzip=gzip)
        client.track("user-1", "Order Completed", {"revenue": 9.5, "note": 'quote " backslash \\ $x #set'})
        client.identify("user-1", {"email": "a@example.com"})
        client.page("user-1", "Docs", "Install")
    finally:
        server.shutdown()
    return list(_Capture.captured)


def method_for(template: Template, path_part: str, http_method: str = "POST") -> dict:
    resources = template.find_resources("AWS::ApiGateway::Resource")
    ids = [rid for rid, r in resources.items() if r["Properties"]["PathPart"] == path_part]
    for m in template.find_resources("AWS::ApiGateway::Method").values():
        if m["Properties"]["HttpMethod"] == http_method and m["Properties"]["ResourceId"].get("Ref") in ids:
            return m["Properties"]
    raise LookupError(path_part)


@pytest.mark.parametrize("use_gzip", [False, True])
def test_deployed_templates_turn_real_sdk_requests_into_the_local_records(ingest, use_gzip):
    import gzip

    integration = method_for(ingest, "{route}")["Integration"]
    request_template = integration["RequestTemplates"]["application/json"]
    responses = {r.get("SelectionPattern", ""): r["ResponseTemplates"]["application/json"]
                 for r in integration["IntegrationResponses"]}
    for path, headers, body in sdk_requests(use_gzip):
        assert path == "/v1/batch"
        if headers.get("Content-Encoding") == "gzip":  # API Gateway inflates before the template
            body = gzip.decompress(body)
        text = body.decode()
        req = apigw.GatewayRequest.tracking("batch", text, headers=headers, request_id="req-9",
                                            request_time_epoch=1795867210000, source_ip="203.0.113.5")
        rendered, _ = apigw.render(request_template, text, req)
        put = json.loads(rendered)
        assert put["StreamName"] == "clickstream-events"
        vtl = [json.loads(base64.b64decode(r["Data"])) for r in put["Records"]]
        local = build_records(RequestInfo("batch", "req-9", 1795867210000, "203.0.113.5",
                                          headers.get("User-Agent"), headers.get("Authorization")), body, KEYS)
        assert vtl == [json.loads(r.data) for r in local]
        assert vtl[0]["source"] == "web" and vtl[0]["message"]["context"]["library"]["name"] == "analytics-python"
        ok = apigw.integration_response(responses, 200, '{"FailedRecordCount":0,"Records":[]}', req)
        assert (ok.status, ok.json()) == (200, {"success": True})


def test_deployed_settings_endpoint(ingest):
    method = method_for(ingest, "settings", "GET")["Integration"]
    request_tpl = method["RequestTemplates"]["application/json"]
    ok_tpl = next(r for r in method["IntegrationResponses"] if r["StatusCode"] == "200")["ResponseTemplates"]
    for key, expected in [("web-write-key-1", 200), ("nope-nope-nope", 401)]:
        req = apigw.GatewayRequest(resource_path="/v1/projects/{writeKey}/settings", body="", http_method="GET",
                                   domain_name="abc.execute-api.eu-west-1.amazonaws.com", stage="prod")
        req_params = apigw.Input("", {"path": {"writeKey": key}, "querystring": {}, "header": {}})
        out = apigw._template(request_tpl).merge({"input": req_params, "context": req.context(),
                                                  "util": apigw.Util()})
        assert json.loads(out)["statusCode"] == expected
    out = apigw._template(ok_tpl["application/json"]).merge({
        "input": apigw.Input("", {"path": {"writeKey": "web-write-key-1"}, "querystring": {}, "header": {}}),
        "context": req.context(), "util": apigw.Util()})
    seg = json.loads(out)["integrations"]["Segment.io"]
    assert seg == {"apiKey": "web-write-key-1", "apiHost": "abc.execute-api.eu-west-1.amazonaws.com/prod/v1",
                   "protocol": "https"}


def test_outputs_give_endpoint_and_settings_url(ingest, storage):
    outputs = ingest.find_outputs("*")
    assert {"Endpoint", "SettingsUrl", "ApiHost"} <= set(outputs)
    assert {"StreamName", "ArchiveBucket"} <= set(storage.find_outputs("*"))


def test_bad_configuration_names_every_key():
    with pytest.raises(ConfigError) as info:
        load_settings({"writeKeys": {"short": "web"}, "streamMode": "FAST", "retentionHours": "2",
                       "shardCount": "lots", "corsAllowOrigins": ["ftp://x"], "redshiftMode": "cloud"})
    text = str(info.value)
    for key in ("writeKeys:", "streamMode:", "retentionHours:", "shardCount:", "corsAllowOrigins:",
                "redshiftMode:"):
        assert key in text


def test_synth_fails_with_the_config_message(tmp_path):
    import app as app_module

    with pytest.raises(SystemExit) as info:
        app_module.build_app(cdk.App(context={**CONTEXT, "streamMode": "FAST"}, outdir=str(tmp_path)))
    assert "streamMode: must be ON_DEMAND or PROVISIONED" in str(info.value)


def test_cfn_lint_is_clean(synthesized, tmp_path):
    assembly, _ = synthesized
    templates = sorted(Path(assembly.directory).glob("*.template.json"))
    assert len(templates) == 4
    # W3005: CDK's redundant DependsOn; W7001: the Firehose construct's unused CIDR mapping.
    cfn_lint = str(Path(sys.executable).with_name("cfn-lint"))
    out = subprocess.run([cfn_lint, "-i", "W3005", "W7001", "--", *map(str, templates)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cdk_nag_runs_and_fails_on_a_finding(tmp_path):
    """The AwsSolutions plugin is really on: an unencrypted, unlogged bucket makes synth fail."""
    from aws_cdk import aws_s3 as s3

    import app as app_module

    app = cdk.App(context={**CONTEXT, "writeKeys": KEYS}, outdir=str(tmp_path))
    app_module.build_app(app)
    bad = cdk.Stack(app, "Bad")
    s3.Bucket(bad, "Naked")
    with pytest.raises(Exception, match="ValidationFailed"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    assert "AwsSolutions-S1" in json.dumps(report)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npx") is None or not (ROOT / "node_modules" / ".bin" / "cdk").exists(),
                    reason="the pinned CDK CLI is installed by `make test` (npm ci)")
def test_cdk_cli_synthesizes_offline(tmp_path):
    env = {**os.environ, "CDK_DISABLE_CLI_TELEMETRY": "true", "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    out = subprocess.run(["npx", "cdk", "synth", "-q", "--no-notices", "-o", str(tmp_path),
                          "-c", "writeKeys=" + json.dumps(KEYS)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert {p.name for p in tmp_path.glob("*.template.json")} == {
        "ClickstreamStorage.template.json", "ClickstreamIngest.template.json", "ClickstreamWarehouse.template.json",
        "ClickstreamReplay.template.json"}


def test_replay_stack_fans_out_over_hours_with_a_distributed_map(synthesized):
    assembly, templates = synthesized
    t = templates["ClickstreamReplay"]
    [machine] = t.find_resources("AWS::StepFunctions::StateMachine").values()
    text = json.dumps(machine["Properties"]["DefinitionString"])
    assert '\\"Mode\\": \\"DISTRIBUTED\\"' in text and '\\"MaxConcurrency\\": 10' in text
    functions = {f["Properties"]["Handler"]: f["Properties"]
                 for f in t.find_resources("AWS::Lambda::Function").values()}
    assert {"handler.plan", "handler.replay_hour"} <= set(functions)
    env = functions["handler.replay_hour"]["Environment"]["Variables"]
    assert set(env) >= {"ARCHIVE_BUCKET", "STREAM_NAME", "POWERTOOLS_SERVICE_NAME"}
    assert functions["handler.replay_hour"]["TracingConfig"] == {"Mode": "Active"}
    policies = json.dumps(t.find_resources("AWS::IAM::Policy"))
    assert "kinesis:PutRecords" in policies and "/events/*" in policies
    assets = [p for p in Path(assembly.directory).glob("asset.*") if "replay_hour" in
              ((p / "handler.py").read_text() if (p / "handler.py").exists() else "")]
    assert assets and all((p / "clickstream" / "replay.py").exists() and (p / "clickstream" / "archive.py").exists()
                          for p in assets)


def test_deploy_order_storage_ingest_then_warehouse_and_replay(synthesized):
    assembly, _ = synthesized
    deps = {s.stack_name: sorted(d.id for d in s.dependencies if not d.id.endswith(".assets"))
            for s in assembly.stacks}
    assert deps["ClickstreamStorage"] == []
    assert deps["ClickstreamIngest"] == ["ClickstreamStorage"]
    assert deps["ClickstreamWarehouse"] == ["ClickstreamIngest", "ClickstreamStorage"]
    assert deps["ClickstreamReplay"] == ["ClickstreamStorage"]


def _tracking_integration(template: Template) -> tuple[str, dict[str, str]]:
    integration = method_for(template, "{" + contract.ROUTE_PARAM + "}")["Integration"]
    responses = {r.get("SelectionPattern", ""): r["ResponseTemplates"]["application/json"]
                 for r in integration["IntegrationResponses"]}
    return integration["RequestTemplates"]["application/json"], responses


@pytest.mark.parametrize("route", [*contract.SINGLE_ROUTES, *contract.BATCH_ROUTES])
def test_every_route_works_through_the_one_deployed_method(ingest, route):
    request_template, _ = _tracking_integration(ingest)
    message = {"type": contract.SINGLE_ROUTES.get(route, "track"), "userId": "u1", "event": "Ünïcode ✓",
               "messageId": f"m-{route}"}
    body = json.dumps({"batch": [message, message], "writeKey": "web-write-key-1"} if route in contract.BATCH_ROUTES
                      else {**message, "writeKey": "web-write-key-1"}, ensure_ascii=False)
    req = apigw.GatewayRequest.tracking(route, body, request_id="req-1", request_time_epoch=5, source_ip="192.0.2.1")
    put = json.loads(apigw.render(request_template, body, req)[0])
    assert put["StreamName"] == "clickstream-events"
    local = build_records(RequestInfo(route, "req-1", 5, "192.0.2.1"), body.encode(), KEYS)
    assert [base64.b64decode(r["Data"]) for r in put["Records"]] == [r.data for r in local]
    assert json.loads(local[0].data)["route"] == route


def test_an_unknown_route_is_a_404_from_the_deployed_method(ingest):
    request_template, responses = _tracking_integration(ingest)
    body = json.dumps({"type": "track", "event": "e", "writeKey": "web-write-key-1"})
    req = apigw.GatewayRequest.tracking("trak", body)
    put = json.loads(apigw.render(request_template, body, req)[0])
    assert put["StreamName"] == contract.REJECT_STREAM_PREFIX + "not_found"
    # Kinesis answers 400 naming the stream; the error template makes it Segment's 404
    denied = f"not authorized on resource: arn:aws:kinesis:eu-west-1:1:stream/{put['StreamName']}"
    error = json.dumps({"__type": "AccessDeniedException", "message": denied})
    answer = apigw.integration_response(responses, 400, error, req)
    assert (answer.status, answer.json()["code"]) == (404, "not_found")


def _ingest_template_bytes(tmp_path: Path, keys: dict[str, str]) -> int:
    assembly, _ = synth(tmp_path, writeKeys=keys)
    return (Path(assembly.directory) / "ClickstreamIngest.template.json").stat().st_size


def test_template_size_does_not_grow_with_routes_times_keys(tmp_path):
    """CloudFormation takes at most 1 MB of template (S3 upload); API Gateway 300 KB per mapping template.
    (https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/cloudformation-limits.html,
    https://docs.aws.amazon.com/apigateway/latest/developerguide/limits.html)"""
    two = _ingest_template_bytes(tmp_path / "2", KEYS)
    many = {f"write-key-{i:04d}-{'x' * 40}": f"source-{i}" for i in range(100)}
    hundred = _ingest_template_bytes(tmp_path / "100", many)
    # measured: 75 KB with 2 keys and 98 KB with 100 (471 KB and 702 KB when every route had its
    # own method and template)
    assert two < 150_000, two
    assert hundred < 250_000, hundred
    # each key appears a fixed number of times: 2 media types + the settings check
    [path] = (tmp_path / "100").glob("ClickstreamIngest.template.json")
    text = path.read_text()
    assert text.count("write-key-0042-") == 3
    for method in json.loads(text)["Resources"].values():
        for tpl in method.get("Properties", {}).get("Integration", {}).get("RequestTemplates", {}).values():
            assert len(json.dumps(tpl)) < 300_000


def test_ingest_stack_takes_its_paths_from_the_contract(tmp_path, monkeypatch):
    """No hard-coded /v1 or settings path in the stack: a different prefix changes every path and output."""
    monkeypatch.setattr(contract, "API_PREFIX", "/v9")
    monkeypatch.setattr(contract, "SETTINGS_PATH", "/v9/sources/{writeKey}/config")
    monkeypatch.setattr(contract, "TRACKING_RESOURCE", "/v9/{route}")
    _, templates = synth(tmp_path)
    ingest = templates["ClickstreamIngest"]
    parts = {r["Properties"]["PathPart"] for r in ingest.find_resources("AWS::ApiGateway::Resource").values()}
    assert {"v9", "{route}", "sources", "{writeKey}", "config", "m"} <= parts and "v1" not in parts
    outputs = json.dumps(ingest.find_outputs("*"))
    assert "/v9/sources/<writeKey>/config" in outputs and '"/v9"' in outputs
    assert "/v1" not in outputs


def test_account_cloudwatch_role_is_retained(ingest):
    account = ingest.find_resources("AWS::ApiGateway::Account")
    role_id = next(iter(account.values()))["Properties"]["CloudWatchRoleArn"]["Fn::GetAtt"][0]
    role = ingest.find_resources("AWS::IAM::Role")[role_id]
    assert role["DeletionPolicy"] == "Retain" and role["UpdateReplacePolicy"] == "Retain"
    assert next(iter(account.values()))["DeletionPolicy"] == "Retain"


def test_cloudwatch_may_publish_alarms_to_the_ssl_only_topic(ingest):
    """The SSL-only topic policy replaces SNS's default policy: CloudWatch needs its own Allow."""
    [policy] = ingest.find_resources("AWS::SNS::TopicPolicy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    allow = [s for s in statements if s["Effect"] == "Allow" and s.get("Principal") == {
        "Service": "cloudwatch.amazonaws.com"}]
    assert len(allow) == 1
    assert allow[0]["Action"] == "sns:Publish"
    assert allow[0]["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    assert any(s["Effect"] == "Deny" and "aws:SecureTransport" in json.dumps(s) for s in statements)
    # every alarm of the ingest stack notifies that topic
    topic = next(iter(ingest.find_resources("AWS::SNS::Topic")))
    for alarm in ingest.find_resources("AWS::CloudWatch::Alarm").values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": topic}]


def test_firehose_trusts_only_this_account(storage):
    roles = [r for r in storage.find_resources("AWS::IAM::Role").values()
             if "firehose.amazonaws.com" in json.dumps(r["Properties"]["AssumeRolePolicyDocument"])]
    assert roles
    for role in roles:
        for statement in role["Properties"]["AssumeRolePolicyDocument"]["Statement"]:
            assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    [stream] = storage.find_resources("AWS::KinesisFirehose::DeliveryStream").values()
    text = json.dumps(stream["Properties"])
    role_id = next(iter(r for r, v in storage.find_resources("AWS::IAM::Role").items()
                        if "firehose.amazonaws.com" in json.dumps(v)))
    assert text.count(role_id) >= 2  # the source and the S3 destination use it


def test_replay_memory_timeout_and_partition_aware_definition(synthesized):
    _, templates = synthesized
    t = templates["ClickstreamReplay"]
    functions = {f["Properties"]["Handler"]: f["Properties"]
                 for f in t.find_resources("AWS::Lambda::Function").values()}
    assert functions["handler.replay_hour"]["MemorySize"] == 1769  # one full vCPU
    assert functions["handler.replay_hour"]["Timeout"] == 900
    [machine] = t.find_resources("AWS::StepFunctions::StateMachine").values()
    definition = json.dumps(machine["Properties"]["DefinitionString"])
    assert "arn:aws:" not in definition
    assert machine["Properties"]["DefinitionSubstitutions"] == {"Partition": {"Ref": "AWS::Partition"}}
    assert "Sandbox.Timedout" in definition and "ResultWriter" in definition
    policies = json.dumps(t.find_resources("AWS::IAM::Policy"))
    assert "/replay-results/*" in policies


def _imports(template_path: Path) -> set[str]:
    import re

    return set(re.findall(r'"Fn::ImportValue": "([^"]+)"', template_path.read_text()))


def test_renaming_the_stream_is_one_deploy_and_redeploy_after_destroy_does_not_collide(tmp_path):
    """A rename replaces the stream (and the delivery stream reading it). CloudFormation refuses to
    change an export another stack imports, so the ingest, replay and warehouse stacks must not import anything
    of those two resources; and the fixed-name stream must not survive `cdk destroy`."""
    a, _ = synth(tmp_path / "a", streamName="clickstream-events")
    b, _ = synth(tmp_path / "b", streamName="clickstream-events-v2")
    storage_a = json.loads((Path(a.directory) / "ClickstreamStorage.template.json").read_text())
    storage_b = json.loads((Path(b.directory) / "ClickstreamStorage.template.json").read_text())
    replaced = {lid for lid, r in storage_a["Resources"].items()
                if r["Type"] in ("AWS::Kinesis::Stream", "AWS::KinesisFirehose::DeliveryStream")
                and r["Properties"] != storage_b["Resources"][lid]["Properties"]}
    assert len(replaced) == 2
    changing_exports = {o["Export"]["Name"] for o in storage_a.get("Outputs", {}).values()
                        if "Export" in o and any(lid in json.dumps(o["Value"]) for lid in replaced)}
    assert changing_exports  # still exported for stacks deployed before, so an upgrade is one deploy too
    for stack in ("ClickstreamIngest", "ClickstreamReplay", "ClickstreamWarehouse"):
        for directory in (a.directory, b.directory):
            assert not _imports(Path(directory) / f"{stack}.template.json") & changing_exports, stack
    [stream] = [r for r in storage_a["Resources"].values() if r["Type"] == "AWS::Kinesis::Stream"]
    assert stream["DeletionPolicy"] == "Delete" and stream["Properties"]["Name"] == "clickstream-events"
    assert stream["UpdateReplacePolicy"] == "Retain"  # a rename keeps the old stream's last records
    names = [r["Properties"].get("BucketName") for r in storage_a["Resources"].values()
             if r["Type"] == "AWS::S3::Bucket"]
    assert names and not any(names)  # retained buckets have generated names: no collision either
