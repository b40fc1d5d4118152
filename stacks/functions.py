"""Lambda functions without Docker: each asset is its handler plus the clickstream modules it uses,
copied by CDK's local bundling. Powertools comes from AWS's public layer; boto3 from the runtime."""

from __future__ import annotations

import shutil
from pathlib import Path

import aws_cdk as cdk
import jsii
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = lambda_.Runtime.PYTHON_3_13
# https://docs.powertools.aws.dev/lambda/python/latest/ (public layer, one per region)
POWERTOOLS_LAYER = "arn:{partition}:lambda:{region}:017000801446:layer:AWSLambdaPowertoolsPythonV3-python313-x86_64:27"


@jsii.implements(cdk.ILocalBundling)
class CopyFiles:
    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def try_bundle(self, output_dir: str, *, image=None, **_kwargs) -> bool:
        for relative, source in self.files.items():
            target = Path(output_dir) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        return True


def python_function(scope: Construct, construct_id: str, *, name: str, handler: str, modules: list[str],
                    environment: dict[str, str] | None = None, timeout: cdk.Duration | None = None,
                    memory_size: int | None = None, role: iam.IRole | None = None) -> lambda_.Function:
    """``functions/<name>/handler.py`` + ``clickstream/<module>.py`` for each of ``modules``.

    ``role``: an existing execution role (the function then acts as that identity); it gets write
    access to the function's log group, which CDK grants only to roles it creates itself.
    """
    files = {"handler.py": ROOT / "functions" / name / "handler.py",
             "clickstream/__init__.py": ROOT / "clickstream" / "__init__.py"}
    files |= {f"clickstream/{m}.py": ROOT / "clickstream" / f"{m}.py" for m in modules}
    stack = cdk.Stack.of(scope)
    layer = lambda_.LayerVersion.from_layer_version_arn(
        scope, f"{construct_id}Powertools",
        POWERTOOLS_LAYER.format(partition=stack.partition, region=stack.region))
    log_group = logs.LogGroup(scope, f"{construct_id}Logs", retention=logs.RetentionDays.ONE_MONTH,
                              removal_policy=cdk.RemovalPolicy.DESTROY)
    if role is not None:
        log_group.grant_write(role)
    return lambda_.Function(
        scope, construct_id,
        role=role,
        runtime=RUNTIME,
        architecture=lambda_.Architecture.X86_64,
        handler=f"handler.{handler}",
        code=lambda_.Code.from_asset(str(ROOT / "functions" / name), bundling=cdk.BundlingOptions(
            image=cdk.DockerImage.from_registry("unused-local-bundling-only"), local=CopyFiles(files))),
        layers=[layer],
        tracing=lambda_.Tracing.ACTIVE,
        timeout=timeout or cdk.Duration.minutes(1),
        memory_size=memory_size,
        environment={"POWERTOOLS_SERVICE_NAME": f"clickstream-{name}", **(environment or {})},
        log_group=log_group,
    )
