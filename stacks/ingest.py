"""ClickstreamIngest: the Segment tracking API on API Gateway, integrated straight with Kinesis.

No Lambda on the hot path: each POST route is an AWS service integration calling Kinesis
PutRecords with the mapping templates from ``clickstream.templates`` (rendered from the contract).
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from clickstream import contract, templates
from clickstream.config import Settings
from stacks.monitoring import PipelineMonitoring
from stacks.storage import StorageStack

JSON_TYPES = contract.ACCEPTED_MEDIA_TYPES  # a request template per accepted media type


def _error_template(code: str) -> dict[str, str]:
    return {"application/json": templates.error_response_json(code)}


class IngestStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, storage: StorageStack,
                 **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        origin = settings.cors_allow_origins[0]
        self.cors_origin = f"'{origin}'"

        access_logs = logs.LogGroup(self, "AccessLogs", retention=logs.RetentionDays.THREE_MONTHS,
                                    removal_policy=cdk.RemovalPolicy.DESTROY)
        self.api = apigw.RestApi(
            self, "TrackingApi",
            rest_api_name="clickstream-tracking",
            description="Segment-compatible tracking API (HTTP Tracking API routes) writing to Kinesis",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            # Any minimum compression size turns on content encoding: gzip bodies are inflated
            # before the mapping template runs (api-gateway-gzip-compression-decompression).
            min_compression_size=cdk.Size.kibibytes(1),
            cloud_watch_role=True,
            # The API Gateway account's CloudWatch role is account- and region-wide: other APIs use
            # it, so destroying this stack must not remove it
            # (https://docs.aws.amazon.com/apigateway/latest/developerguide/set-up-logging.html).
            cloud_watch_role_removal_policy=cdk.RemovalPolicy.RETAIN,
            deploy_options=apigw.StageOptions(
                stage_name=settings.stage_name,
                tracing_enabled=True,
                logging_level=apigw.MethodLoggingLevel.ERROR,
                metrics_enabled=True,
                throttling_rate_limit=settings.throttling_rate_limit,
                throttling_burst_limit=settings.throttling_burst_limit,
                access_log_destination=apigw.LogGroupLogDestination(access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=False, http_method=True, ip=True, protocol=True, request_time=True,
                    resource_path=True, response_length=True, status=True, user=False),
            ),
            default_cors_preflight_options=apigw.CorsOptions(
                allow_origins=list(settings.cors_allow_origins),
                allow_methods=[m.strip() for m in contract.CORS_ALLOW_METHODS.split(",")],
                allow_headers=[h.strip() for h in contract.CORS_ALLOW_HEADERS.split(",")],
                max_age=cdk.Duration.seconds(contract.CORS_MAX_AGE_SECONDS),
            ),
        )

        # The integration may only put records on this one stream (and use its key).
        self.role = iam.Role(self, "KinesisIntegrationRole",
                             assumed_by=iam.ServicePrincipal("apigateway.amazonaws.com"),
                             description="API Gateway -> Kinesis PutRecords for the tracking API")
        stream = storage.stream_ref(self)
        self.role.add_to_policy(iam.PolicyStatement(actions=["kinesis:PutRecord", "kinesis:PutRecords"],
                                                    resources=[stream.stream_arn]))
        storage.key.grant(self.role, "kms:GenerateDataKey")

        self.validator = self.api.add_request_validator("BodyIsJson", validate_request_body=True,
                                                        validate_request_parameters=True)
        self.body_model = self.api.add_model(
            "TrackingBody", content_type="application/json", model_name="TrackingBody",
            schema=apigw.JsonSchema(schema=apigw.JsonSchemaVersion.DRAFT4, type=apigw.JsonSchemaType.OBJECT,
                                    title="Segment message or batch"))

        self._gateway_responses()
        # Every tracking route is one method on /v1/{route} with one request template that checks
        # the route: the template (and the write keys in it) exists once, not once per route, so
        # the stack stays far below CloudFormation's 1 MB even with hundreds of keys. /v1/m is a
        # static resource, which API Gateway prefers over the path variable.
        tracking = self._resource(contract.TRACKING_RESOURCE)
        tracking.add_method("POST", self._kinesis_integration(settings, storage), request_validator=self.validator,
                            request_parameters={f"method.request.path.{contract.ROUTE_PARAM}": True},
                            request_models=dict.fromkeys(JSON_TYPES, self.body_model),
                            method_responses=self._method_responses())
        self._resource(f"{contract.API_PREFIX}/{contract.METRICS_ROUTE}").add_method(
            "POST", self._metrics_integration(), method_responses=self._method_responses())
        self._resource(contract.SETTINGS_PATH).add_method(
            "GET", self._settings_integration(settings),
            request_parameters={f"method.request.path.{contract.SETTINGS_PARAM}": True},
            method_responses=self._method_responses())

        self.monitoring = PipelineMonitoring(self, "Monitoring", api=self.api, stage_name=settings.stage_name,
                                             stream=stream, delivery_stream=storage.delivery_stream_ref(self),
                                             alarm_email=settings.alarm_email)

        endpoint = self.api.url.rstrip("/")
        cdk.CfnOutput(self, "Endpoint", value=endpoint,
                      description="SDK host: python analytics.host, node host, analytics-next cdnURL")
        settings_url = contract.SETTINGS_PATH.replace("{" + contract.SETTINGS_PARAM + "}", "<writeKey>")
        cdk.CfnOutput(self, "SettingsUrl", value=f"{endpoint}{settings_url}")
        cdk.CfnOutput(self, "ApiHost", value=cdk.Fn.select(1, cdk.Fn.split("://", endpoint)) + contract.API_PREFIX,
                      description="analytics-next integrations['Segment.io'].apiHost")
        self._acknowledge()

    def _resource(self, path: str) -> apigw.IResource:
        """The API resource for a contract path, creating the missing parts."""
        resource = self.api.root
        for part in path.strip("/").split("/"):
            resource = resource.get_resource(part) or resource.add_resource(part)
        return resource

    # -- integrations -----------------------------------------------------------------------
    def _cors(self) -> dict[str, str]:
        return {"method.response.header.Access-Control-Allow-Origin": self.cors_origin}

    def _kinesis_integration(self, settings: Settings, storage: StorageStack) -> apigw.AwsIntegration:
        request = templates.request_template(settings.stream_name, settings.write_keys)
        success = templates.response_template(templates.RESPONSE_SUCCESS)
        error = templates.response_template(templates.RESPONSE_ERROR)
        return apigw.AwsIntegration(
            service="kinesis",
            action="PutRecords",
            integration_http_method="POST",
            options=apigw.IntegrationOptions(
                credentials_role=self.role,
                passthrough_behavior=apigw.PassthroughBehavior.NEVER,
                request_parameters={"integration.request.header.Content-Type": "'application/x-amz-json-1.1'"},
                request_templates=dict.fromkeys(JSON_TYPES, request),
                integration_responses=[
                    apigw.IntegrationResponse(status_code="200", response_templates={"application/json": success},
                                              response_parameters=self._cors()),
                    apigw.IntegrationResponse(status_code="400", selection_pattern=r"4\d{2}",
                                              response_templates={"application/json": error},
                                              response_parameters=self._cors()),
                    apigw.IntegrationResponse(status_code="500", selection_pattern=r"5\d{2}",
                                              response_templates={"application/json": error},
                                              response_parameters=self._cors()),
                ],
            ),
        )

    def _metrics_integration(self) -> apigw.MockIntegration:
        return apigw.MockIntegration(
            passthrough_behavior=apigw.PassthroughBehavior.WHEN_NO_TEMPLATES,
            request_templates=dict.fromkeys(JSON_TYPES, '{"statusCode": 200}'),
            integration_responses=[apigw.IntegrationResponse(
                status_code="200", response_templates={"application/json": contract.SUCCESS_BODY},
                response_parameters=self._cors())],
        )

    def _settings_integration(self, settings: Settings) -> apigw.MockIntegration:
        return apigw.MockIntegration(
            passthrough_behavior=apigw.PassthroughBehavior.WHEN_NO_TEMPLATES,
            request_templates={"application/json": templates.settings_request_template(settings.write_keys)},
            integration_responses=[
                apigw.IntegrationResponse(status_code="200",
                                          response_templates={"application/json":
                                                              templates.settings_response_template()},
                                          response_parameters=self._cors()),
                apigw.IntegrationResponse(status_code="401", selection_pattern="401",
                                          response_templates=_error_template("invalid_write_key"),
                                          response_parameters=self._cors()),
            ],
        )

    def _method_responses(self) -> list[apigw.MethodResponse]:
        headers = {"method.response.header.Access-Control-Allow-Origin": True,
                   "method.response.header.Retry-After": True}
        return [apigw.MethodResponse(status_code=str(s), response_parameters=headers)
                for s in (200, *contract.error_statuses())]

    def _gateway_responses(self) -> None:
        """Errors API Gateway answers itself, in Segment's shape and with CORS (else browsers retry blind)."""
        headers = {"Access-Control-Allow-Origin": self.cors_origin}
        retry = {**headers, "Retry-After": f"'{contract.RETRY_AFTER_SECONDS}'"}
        responses = [
            (apigw.ResponseType.BAD_REQUEST_BODY, "invalid_json", headers),
            (apigw.ResponseType.BAD_REQUEST_PARAMETERS, "invalid_request", headers),
            (apigw.ResponseType.UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", headers),
            (apigw.ResponseType.REQUEST_TOO_LARGE, "request_too_large", headers),
            (apigw.ResponseType.MISSING_AUTHENTICATION_TOKEN, "not_found", headers),
            (apigw.ResponseType.RESOURCE_NOT_FOUND, "not_found", headers),
            (apigw.ResponseType.THROTTLED, "throttled", retry),
            (apigw.ResponseType.QUOTA_EXCEEDED, "throttled", retry),
            (apigw.ResponseType.INTEGRATION_TIMEOUT, "unavailable", retry),
            (apigw.ResponseType.DEFAULT_4_XX, "invalid_request", headers),
            (apigw.ResponseType.DEFAULT_5_XX, "internal_error", retry),
        ]
        for response_type, code, extra in responses:
            status = contract.ERRORS[code].status
            if response_type == apigw.ResponseType.MISSING_AUTHENTICATION_TOKEN:
                status = 404  # unknown paths: API Gateway says 403 "Missing Authentication Token"
            self.api.add_gateway_response(
                f"Gw{code.title().replace('_', '')}{response_type.response_type.title().replace('_', '')}",
                type=response_type, status_code=str(status),
                response_headers=extra, templates=_error_template(code))

    def _acknowledge(self) -> None:
        acks = {
            "AwsSolutions-APIG3": "a public tracking endpoint for browsers and servers; write keys are checked "
                                  "in the mapping template and stage throttling bounds abuse. Attach a WAF "
                                  "web ACL to the stage if your threat model needs one",
            "AwsSolutions-APIG4": "Segment SDKs authenticate with a write key (Basic auth or body), checked by "
                                  "the request mapping template without a Lambda; IAM/Cognito would break "
                                  "unmodified SDKs",
            "AwsSolutions-COG4": "same as APIG4: SDK clients cannot use Cognito user pools",
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AmazonAPIGatewayPushToCloudWatchLogs]": "API Gateway's account-level CloudWatch role uses the AWS "
                                                     "managed policy AWS documents for it",
        }
        for rule, reason in acks.items():
            cdk.Validations.of(self).acknowledge(cdk.Acknowledgment(id=rule, reason=reason))
