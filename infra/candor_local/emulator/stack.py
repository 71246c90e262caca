"""Deploy the template's non-function resources as a CloudFormation stack on any endpoint, and resolve the
functions' environment against it.

How: the translated template minus what the local runtime plays itself (functions, roles, layers, event
source mappings, permissions, URLs) goes through the CloudFormation API, so moto, LocalStack and AWS all
deploy the same document. CloudFormation implementations differ in what they honour, so every resource is
then read back through its service API and whatever the endpoint's CloudFormation left out is applied from
the same translated resource. On moto 5.2 that is: AWS::SQS::QueuePolicy and AWS::S3::BucketPolicy
(skipped as unsupported types), a bucket's NotificationConfiguration and PublicAccessBlockConfiguration, a
table's PointInTimeRecoverySpecification and a Kinesis stream's StreamModeDetails (ignored properties). On
AWS nothing is missing and nothing is applied. Nothing is listed twice: both steps walk the template's
resources.

Over plain HTTP (moto, LocalStack without TLS) a bucket policy's deny-without-TLS statements are left out:
they would deny every request there, and moto, which ignores policy conditions, denies outright.
moto also ignores SSESpecification on tables (its describe_table shows no SSEDescription); nothing to fix.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import ClientError

from candor_local.emulator.template import LAMBDA_RESOURCE_TYPES, FunctionSpec, Template, TemplateError

logger = logging.getLogger(__name__)

_DONE_STATUSES = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"}
_NO_VALUE = object()  # AWS::NoValue: the enclosing key or list item disappears


class StackError(RuntimeError):
    """The stack could not be deployed, or a deployed resource does not match the template."""


@dataclass(frozen=True)
class Endpoint:
    """Where AWS calls go. `url` None means boto3's own resolution: AWS_ENDPOINT_URL (and the per-service
    AWS_ENDPOINT_URL_<SERVICE>) when set, AWS otherwise."""

    session: boto3.session.Session
    url: str | None = None

    @property
    def region(self) -> str:
        return str(self.session.region_name)

    def client(self, service_name: str) -> Any:
        return self.session.client(service_name, endpoint_url=self.url)  # type: ignore[call-overload]


@dataclass
class DeployedStack:
    """A deployed stack: logical id → physical id, and intrinsic resolution against it."""

    name: str
    stack_id: str
    endpoint: Endpoint
    template: Template
    parameters: dict[str, str]
    physical_ids: dict[str, str]
    outputs: dict[str, str] = field(default_factory=dict)
    _attributes: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)

    # arn:<partition>:cloudformation:<region>:<account>:stack/<name>/<id>
    @property
    def partition(self) -> str:
        return self.stack_id.split(":")[1]

    @property
    def region(self) -> str:
        return self.stack_id.split(":")[3]

    @property
    def account_id(self) -> str:
        return self.stack_id.split(":")[4]

    def client(self, service_name: str) -> Any:
        return self.endpoint.client(service_name)

    def function_name(self, logical_id: str) -> str:
        """The name a local function plays under (CloudFormation's own naming, minus the random suffix)."""
        return f"{self.name}-{logical_id}"[:64]

    def function_arn(self, logical_id: str) -> str:
        name = self.function_name(logical_id)
        return f"arn:{self.partition}:lambda:{self.region}:{self.account_id}:function:{name}"

    def queue_url(self, logical_id: str) -> str:
        return self.physical_ids[logical_id]

    def queue_arn(self, logical_id: str) -> str:
        return self.get_att(logical_id, "Arn")

    def stream_name(self, logical_id: str) -> str:
        return self.physical_ids[logical_id]  # a Kinesis stream's Ref is its name

    def stream_arn(self, logical_id: str) -> str:
        return self.get_att(logical_id, "Arn")

    def function_environment(self, spec: FunctionSpec) -> dict[str, str]:
        """The function's Environment.Variables with every intrinsic resolved against this stack."""
        resolved = self.resolve(dict(spec.environment))
        return {name: _as_env_value(name, value) for name, value in resolved.items()}

    def resolve(self, value: Any) -> Any:
        """Resolve Ref, Fn::GetAtt, Fn::Sub, Fn::Join, Fn::Select, Fn::Split and Fn::Base64 in a fragment."""
        resolved = self._resolve(value)
        return None if resolved is _NO_VALUE else resolved

    def _resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self._resolve(item) for item in value]
            return [item for item in items if item is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, argument),) = value.items()
            if key == "Ref":
                return self.ref(argument)
            if key == "Fn::GetAtt":
                target, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
                return self.get_att(target, self._resolve(attribute))
            if key == "Fn::Sub":
                return self._sub(argument)
            if key == "Fn::Join":
                delimiter, items = argument
                return delimiter.join(str(item) for item in self._resolve(items))
            if key == "Fn::Select":
                index, items = self._resolve(argument)
                return items[int(index)]
            if key == "Fn::Split":
                delimiter, text = self._resolve(argument)
                return text.split(delimiter)
            if key == "Fn::Base64":
                return base64.b64encode(str(self._resolve(argument)).encode()).decode()
            if key.startswith("Fn::"):
                raise TemplateError(f"{key} is not supported by the local runtime")
        members = {key: self._resolve(item) for key, item in value.items()}
        return {key: item for key, item in members.items() if item is not _NO_VALUE}

    def ref(self, name: str) -> Any:
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::Partition": self.partition,
            "AWS::StackName": self.name,
            "AWS::StackId": self.stack_id,
            "AWS::URLSuffix": "amazonaws.com.cn" if self.partition == "aws-cn" else "amazonaws.com",
        }
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.physical_ids:
            return self.physical_ids[name]
        if name in self.template.functions:
            return self.function_name(name)
        raise TemplateError(f"Ref {name!r}: no such parameter or deployed resource")

    def get_att(self, logical_id: str, attribute: str) -> str:
        key = (logical_id, attribute)
        if key not in self._attributes:
            self._attributes[key] = self._read_attribute(logical_id, attribute)
        return self._attributes[key]

    def _read_attribute(self, logical_id: str, attribute: str) -> str:
        if logical_id in self.template.functions and attribute == "Arn":
            return self.function_arn(logical_id)
        resource_type = self.template.resources.get(logical_id, {}).get("Type")
        physical_id = self.physical_ids.get(logical_id)
        if physical_id is None:
            raise TemplateError(f"Fn::GetAtt {logical_id}.{attribute}: {logical_id} is not deployed")
        if resource_type == "AWS::SQS::Queue":
            if attribute == "Arn":
                attributes = self.client("sqs").get_queue_attributes(QueueUrl=physical_id, AttributeNames=["QueueArn"])
                return str(attributes["Attributes"]["QueueArn"])
            if attribute == "QueueName":
                return physical_id.rstrip("/").rsplit("/", 1)[-1]
            if attribute == "QueueUrl":
                return physical_id
        if resource_type == "AWS::S3::Bucket":
            s3_attributes = {
                "Arn": f"arn:{self.partition}:s3:::{physical_id}",
                "DomainName": f"{physical_id}.s3.amazonaws.com",
                "RegionalDomainName": f"{physical_id}.s3.{self.region}.amazonaws.com",
            }
            if attribute in s3_attributes:
                return s3_attributes[attribute]
        if resource_type == "AWS::S3Vectors::VectorBucket" and attribute == "VectorBucketArn":
            return physical_id  # its Ref is its ARN (and locally `_complete_vector_bucket` records the ARN)
        if resource_type == "AWS::DynamoDB::Table" and attribute in ("Arn", "StreamArn"):
            table = self.client("dynamodb").describe_table(TableName=physical_id)["Table"]
            return str(table["TableArn"] if attribute == "Arn" else table["LatestStreamArn"])
        if resource_type == "AWS::Kinesis::Stream" and attribute == "Arn":
            summary = self.client("kinesis").describe_stream_summary(StreamName=physical_id)
            return str(summary["StreamDescriptionSummary"]["StreamARN"])
        if resource_type == "AWS::KMS::Key" and attribute in ("Arn", "KeyId"):
            metadata = self.client("kms").describe_key(KeyId=physical_id)["KeyMetadata"]
            return str(metadata["Arn"] if attribute == "Arn" else metadata["KeyId"])
        raise TemplateError(f"Fn::GetAtt {logical_id}.{attribute} ({resource_type}) is not supported locally")

    def _sub(self, argument: Any) -> str:
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        values = {name: self._resolve(value) for name, value in variables.items()}
        pieces: list[str] = []
        position = 0
        while (start := text.find("${", position)) != -1:
            end = text.find("}", start)
            if end == -1:
                break
            pieces.append(text[position:start])
            name = text[start + 2 : end]
            if name.startswith("!"):  # ${!Literal} is written out as ${Literal}
                pieces.append("${" + name[1:] + "}")
            elif name in values:
                pieces.append(str(values[name]))
            elif "." in name and not name.startswith("AWS::"):
                target, attribute = name.split(".", 1)
                pieces.append(self.get_att(target, attribute))
            else:
                pieces.append(str(self.ref(name)))
            position = end + 1
        pieces.append(text[position:])
        return "".join(pieces)


def _as_env_value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise TemplateError(f"environment variable {name} resolves to {value!r}, not a string")


def deploy_stack(
    template: Template,
    stack_name: str,
    endpoint: Endpoint,
    parameter_overrides: Mapping[str, str] | None = None,
    timeout_s: float = 900.0,
) -> DeployedStack:
    """Create or update the infrastructure stack and return it resolved; idempotent.

    A stack that already holds functions (a full `sam deploy`) is used as it is, never updated: updating it
    with the infrastructure alone would delete its functions."""
    parameters = {
        **template.parameter_defaults,
        **{k: str(v) for k, v in (parameter_overrides or {}).items()},
    }
    cloudformation = endpoint.client("cloudformation")
    existing = _describe(cloudformation, stack_name)
    if existing is not None and existing["StackStatus"].endswith("_IN_PROGRESS"):
        existing = _wait(cloudformation, stack_name, timeout_s)
    if existing is not None and existing["StackStatus"] in ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED"):
        # A stack whose creation failed can only be deleted.
        logger.warning("stack %s is %s; deleting it before creating it again", stack_name, existing["StackStatus"])
        cloudformation.delete_stack(StackName=existing["StackId"])
        _wait(cloudformation, existing["StackId"], timeout_s)
        existing = None

    if existing is not None and _holds_functions(cloudformation, stack_name):
        logger.warning(
            "stack %s holds Lambda functions (a full deployment): using its resources as they are; "
            "its functions consume the same queues as the local ones",
            stack_name,
        )
    else:
        body = json.dumps(template.infrastructure())
        stack_parameters = [
            {"ParameterKey": key, "ParameterValue": value}
            for key, value in parameters.items()
            if key in template.cfn.get("Parameters", {})
        ]
        if existing is None:
            logger.info("creating stack %s", stack_name)
            cloudformation.create_stack(StackName=stack_name, TemplateBody=body, Parameters=stack_parameters)
        else:
            logger.info("updating stack %s", stack_name)
            try:
                cloudformation.update_stack(StackName=stack_name, TemplateBody=body, Parameters=stack_parameters)
            except ClientError as error:
                if "No updates are to be performed" not in str(error):
                    raise
        described = _wait(cloudformation, stack_name, timeout_s)
        if described is None or described["StackStatus"] not in _DONE_STATUSES:
            status = described["StackStatus"] if described else "deleted"
            raise StackError(f"stack {stack_name} ended {status}: {_failure_reasons(cloudformation, stack_name)}")

    described = _describe(cloudformation, stack_name)
    if described is None:
        raise StackError(f"stack {stack_name} vanished")
    stack = DeployedStack(
        name=stack_name,
        stack_id=described["StackId"],
        endpoint=endpoint,
        template=template,
        parameters=parameters,
        physical_ids=_physical_ids(cloudformation, stack_name),
        outputs={o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])},
    )
    applied = complete_resources(stack)
    for line in applied:
        logger.info("applied what the endpoint's CloudFormation left out: %s", line)
    return stack


def _describe(cloudformation: Any, stack_name: str) -> dict[str, Any] | None:
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as error:
        if "does not exist" in str(error):
            return None
        raise
    return dict(stacks[0]) if stacks else None


def _wait(cloudformation: Any, stack_name: str, timeout_s: float) -> dict[str, Any] | None:
    """Poll until the stack leaves *_IN_PROGRESS (boto3's waiters poll every 30 s; moto is done at once)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        described = _describe(cloudformation, stack_name)
        if described is None or not described["StackStatus"].endswith("_IN_PROGRESS"):
            return described
        if time.monotonic() > deadline:
            raise StackError(f"stack {stack_name} still {described['StackStatus']} after {timeout_s:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def _failure_reasons(cloudformation: Any, stack_name: str) -> str:
    try:
        events = cloudformation.describe_stack_events(StackName=stack_name)["StackEvents"]
    except ClientError:
        return "no events"
    reasons = [
        f"{e.get('LogicalResourceId')}: {e.get('ResourceStatusReason')}"
        for e in events
        if str(e.get("ResourceStatus", "")).endswith("FAILED")
    ]
    return "; ".join(reasons) or "no failure reason reported"


def _stack_resources(cloudformation: Any, stack_name: str) -> list[dict[str, Any]]:
    paginator = cloudformation.get_paginator("list_stack_resources")
    summaries = [s for page in paginator.paginate(StackName=stack_name) for s in page["StackResourceSummaries"]]
    # moto lists the resource types it skipped as entries without ids.
    return [s for s in summaries if s.get("LogicalResourceId") and s.get("PhysicalResourceId")]


def _holds_functions(cloudformation: Any, stack_name: str) -> bool:
    return any(s["ResourceType"] in LAMBDA_RESOURCE_TYPES for s in _stack_resources(cloudformation, stack_name))


def _physical_ids(cloudformation: Any, stack_name: str) -> dict[str, str]:
    return {s["LogicalResourceId"]: s["PhysicalResourceId"] for s in _stack_resources(cloudformation, stack_name)}


# ------------------------------------------------------------------------------------------------ read back


def complete_resources(stack: DeployedStack) -> list[str]:
    """Read every infrastructure resource back and apply, through its service API, any setting the
    endpoint's CloudFormation left out. Returns what was applied (empty on AWS)."""
    resources = stack.template.infrastructure()["Resources"]
    applied: list[str] = []
    # Queue policies first: S3 checks that it may send to the queue when the notification is set.
    for resource_type, complete in _COMPLETERS:
        for logical_id, resource in resources.items():
            if resource["Type"] == resource_type:
                properties = stack.resolve(resource.get("Properties", {}))
                applied.extend(complete(stack, logical_id, properties))
    return applied


def _normalise_policy(document: Any) -> list[Any]:
    """Policy statements compared by meaning: a single value and a one-item list are the same."""

    def as_sorted(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: as_sorted(item) for key, item in value.items()}
        values = value if isinstance(value, list) else [value]
        return sorted(json.dumps(item, sort_keys=True) for item in values)

    statements = document.get("Statement", []) if isinstance(document, dict) else []
    statements = statements if isinstance(statements, list) else [statements]
    normalised = [
        {key: (item if key in ("Sid", "Effect") else as_sorted(item)) for key, item in statement.items()}
        for statement in statements
    ]
    return sorted(normalised, key=lambda statement: json.dumps(statement, sort_keys=True))


def _complete_queue_policy(stack: DeployedStack, logical_id: str, properties: dict[str, Any]) -> list[str]:
    sqs = stack.client("sqs")
    wanted = properties["PolicyDocument"]
    applied = []
    for queue_url in properties["Queues"]:
        current = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["Policy"]).get("Attributes", {})
        if "Policy" in current and _normalise_policy(json.loads(current["Policy"])) == _normalise_policy(wanted):
            continue
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(wanted)})
        applied.append(f"{logical_id}: policy of {queue_url}")
    return applied


def _requires_tls(statement: Mapping[str, Any]) -> bool:
    condition = statement.get("Condition", {})
    return bool(
        statement.get("Effect") == "Deny"
        and str(condition.get("Bool", {}).get("aws:SecureTransport")).lower() == "false"
    )


def _complete_bucket_policy(stack: DeployedStack, logical_id: str, properties: dict[str, Any]) -> list[str]:
    s3 = stack.client("s3")
    bucket, wanted = properties["Bucket"], dict(properties["PolicyDocument"])
    if urlsplit(s3.meta.endpoint_url).scheme == "http":
        # Over plain HTTP a deny-without-TLS statement denies every request (moto also ignores the
        # condition and denies outright), so it only makes sense where the endpoint speaks TLS.
        statements = wanted.get("Statement", [])
        kept = [s for s in (statements if isinstance(statements, list) else [statements]) if not _requires_tls(s)]
        if len(kept) != len(statements if isinstance(statements, list) else [statements]):
            logger.info(
                "%s: the TLS-only statements are left out on %s (plain HTTP)",
                logical_id,
                s3.meta.endpoint_url,
            )
        if not kept:
            return []
        wanted["Statement"] = kept
    try:
        current = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "NoSuchBucketPolicy":
            raise
        current = {}
    if _normalise_policy(current) == _normalise_policy(wanted):
        return []
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(wanted))
    return [f"{logical_id}: policy of bucket {bucket}"]


def _notification_set(configuration: Mapping[str, Any]) -> set[tuple[str, str, tuple[str, ...], str]]:
    entries = set()
    for kind, arn_key in (("QueueConfigurations", "QueueArn"), ("TopicConfigurations", "TopicArn")):
        for entry in configuration.get(kind, []):
            rules = entry.get("Filter", {}).get("Key", {}).get("FilterRules", [])
            rule_set = json.dumps(sorted((r["Name"].lower(), r["Value"]) for r in rules))
            entries.add((kind, entry[arn_key], tuple(sorted(entry["Events"])), rule_set))
    return entries


def _notification_from_template(properties: Mapping[str, Any]) -> dict[str, Any]:
    """CloudFormation's NotificationConfiguration in the S3 API's shape."""
    if properties.get("LambdaConfigurations"):
        raise TemplateError("S3 → Lambda notifications cannot be played locally; notify a queue instead")
    api: dict[str, Any] = {}
    for kind, cfn_key, arn_key in (
        ("QueueConfigurations", "Queue", "QueueArn"),
        ("TopicConfigurations", "Topic", "TopicArn"),
    ):
        entries = []
        for entry in properties.get(kind, []):
            converted: dict[str, Any] = {arn_key: entry[cfn_key], "Events": [entry["Event"]]}
            rules = entry.get("Filter", {}).get("S3Key", {}).get("Rules", [])
            if rules:
                converted["Filter"] = {
                    "Key": {"FilterRules": [{"Name": r["Name"], "Value": r["Value"]} for r in rules]}
                }
            entries.append(converted)
        if entries:
            api[kind] = entries
    return api


def _complete_bucket(stack: DeployedStack, logical_id: str, properties: dict[str, Any]) -> list[str]:
    s3 = stack.client("s3")
    bucket = stack.physical_ids[logical_id]
    applied = []
    wanted_block = properties.get("PublicAccessBlockConfiguration")
    if wanted_block:
        try:
            current_block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "NoSuchPublicAccessBlockConfiguration":
                raise
            current_block = {}
        if any(bool(current_block.get(key)) != bool(value) for key, value in wanted_block.items()):
            s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=wanted_block)
            applied.append(f"{logical_id}: public access block")
    applied += _complete_object_lock(s3, logical_id, bucket, properties)
    if "NotificationConfiguration" in properties:
        wanted = _notification_from_template(properties["NotificationConfiguration"])
        current = s3.get_bucket_notification_configuration(Bucket=bucket)
        if _notification_set(current) != _notification_set(wanted):
            s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=wanted)
            applied.append(f"{logical_id}: event notifications")
    return applied


def _complete_object_lock(s3: Any, logical_id: str, bucket: str, properties: dict[str, Any]) -> list[str]:
    """Versioning and Object Lock's default retention, which moto's CloudFormation leaves out."""
    applied = []
    versioned = properties.get("VersioningConfiguration", {}).get("Status") == "Enabled"
    if versioned and s3.get_bucket_versioning(Bucket=bucket).get("Status") != "Enabled":
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        applied.append(f"{logical_id}: versioning")
    wanted = properties.get("ObjectLockConfiguration")
    if not properties.get("ObjectLockEnabled") or not wanted:
        return applied
    retention = wanted.get("Rule", {}).get("DefaultRetention", {})
    wanted = {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {name: int(v) if name != "Mode" else v for name, v in retention.items()}},
    }
    try:
        current = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "ObjectLockConfigurationNotFoundError":
            raise
        current = {}
    current_retention = current.get("Rule", {}).get("DefaultRetention", {})
    wanted_retention = wanted["Rule"]["DefaultRetention"]
    # moto answers Years: 0 beside Days; compare what the template sets.
    if current.get("ObjectLockEnabled") != "Enabled" or any(
        current_retention.get(name) != value for name, value in wanted_retention.items()
    ):
        s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration=wanted)
        applied.append(f"{logical_id}: object lock ({retention.get('Mode')}, {retention.get('Days')} days)")
    return applied


def _complete_key(stack: DeployedStack, logical_id: str, properties: dict[str, Any]) -> list[str]:
    """A key's spec cannot be changed after creation: check it is what the template asks for."""
    described = stack.client("kms").describe_key(KeyId=stack.physical_ids[logical_id])["KeyMetadata"]
    for name, default in (("KeySpec", "SYMMETRIC_DEFAULT"), ("KeyUsage", "ENCRYPT_DECRYPT")):
        if described.get(name) != properties.get(name, default):
            raise StackError(
                f"{logical_id} was created as {name} {described.get(name)}, not {properties.get(name, default)}"
            )
    return []


def _complete_table(stack: DeployedStack, logical_id: str, properties: dict[str, Any]) -> list[str]:
    dynamodb = stack.client("dynamodb")
    table_name = stack.physical_ids[logical_id]
    table = dynamodb.describe_table(TableName=table_name)["Table"]
    present = {index["IndexName"] for index in table.get("GlobalSecondaryIndexes", [])}
    missing = {index["IndexName"] for index in properties.get("GlobalSecondaryIndexes", [])} - present
    if missing:
        raise StackError(f"{logical_id} ({table_name}) lacks its global secondary indexes {sorted(missing)}")
    applied = []
    if properties.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled"):
        backups = dynamodb.describe_continuous_backups(TableName=table_name)["ContinuousBackupsDescription"]
        if backups.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus") != "ENABLED":
            dynamodb.update_continuous_backups(
                TableName=table_name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
            )
            applied.append(f"{logical_id}: point-in-time recovery")
    return applied


def _complete_vector_bucket(stack: DeployedStack, logical_id: str, properties: dict[str, Any]) -> list[str]:
    """An S3 Vectors bucket, which moto's CloudFormation skips (no support for the type): made through the
    s3vectors API under a name of the stack's, and recorded as CloudFormation records it, by its ARN."""
    if str(stack.physical_ids.get(logical_id, "")).startswith("arn:"):
        return []  # AWS made it
    s3vectors = stack.client("s3vectors")
    name = properties.get("VectorBucketName") or _vector_bucket_name(stack.name, logical_id)
    applied = []
    try:
        bucket = s3vectors.get_vector_bucket(vectorBucketName=name)["vectorBucket"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "NotFoundException":
            # LocalStack has no S3 Vectors: its functions get no vector bucket, so collections stay in the function.
            logger.warning("%s: this endpoint has no S3 Vectors (%s); the s3vectors engine is off", logical_id, error)
            stack.physical_ids[logical_id] = ""
            return []
        sse = properties.get("EncryptionConfiguration", {}).get("SseType", "AES256")
        s3vectors.create_vector_bucket(vectorBucketName=name, encryptionConfiguration={"sseType": sse})
        bucket = s3vectors.get_vector_bucket(vectorBucketName=name)["vectorBucket"]
        applied.append(f"{logical_id}: vector bucket {name}")
    stack.physical_ids[logical_id] = str(bucket["vectorBucketArn"])
    return applied


def _complete_stream(stack: DeployedStack, logical_id: str, properties: dict[str, Any]) -> list[str]:
    """A Kinesis stream's capacity mode, which moto's CloudFormation ignores (every stream is PROVISIONED)."""
    wanted = (properties.get("StreamModeDetails") or {}).get("StreamMode", "PROVISIONED")
    kinesis = stack.client("kinesis")
    summary = kinesis.describe_stream_summary(StreamName=stack.physical_ids[logical_id])["StreamDescriptionSummary"]
    if summary.get("StreamModeDetails", {}).get("StreamMode", "PROVISIONED") == wanted:
        return []
    kinesis.update_stream_mode(StreamARN=summary["StreamARN"], StreamModeDetails={"StreamMode": wanted})
    return [f"{logical_id}: stream mode {wanted}"]


def _vector_bucket_name(stack_name: str, logical_id: str) -> str:
    # 3-63 characters of a-z, 0-9 and hyphens.
    cleaned = "".join(c if c.isalnum() else "-" for c in f"{stack_name}-{logical_id}".lower()).strip("-")
    return cleaned[:63].rstrip("-")


_Completer = Callable[[DeployedStack, str, dict[str, Any]], list[str]]
_COMPLETERS: list[tuple[str, _Completer]] = [
    ("AWS::SQS::QueuePolicy", _complete_queue_policy),
    ("AWS::S3::BucketPolicy", _complete_bucket_policy),
    ("AWS::S3::Bucket", _complete_bucket),
    ("AWS::DynamoDB::Table", _complete_table),
    ("AWS::S3Vectors::VectorBucket", _complete_vector_bucket),
    ("AWS::KMS::Key", _complete_key),
    ("AWS::Kinesis::Stream", _complete_stream),
]
