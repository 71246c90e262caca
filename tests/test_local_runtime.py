"""The local runtime against a real moto server, with a small fixture template and fixture handlers written
into a temporary folder (not the real services): what Lambda's SQS event source mapping, S3 notifications,
redrive and Function URLs do, the runtime must do too."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from boto3.dynamodb.conditions import Key

from candor_local.emulator.function_url import invoke_function_url
from candor_local.emulator.runtime import LocalEnvironment
from candor_local.emulator.stack import complete_resources, deploy_stack

pytestmark = pytest.mark.integration
SETTLE_S = 0.5

# Short timeouts keep redelivery fast: a failed message is visible again after 2 s, and in the DLQ after
# its second failure.
FIXTURE_TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Greeting:
    Type: String
    Default: hello
Globals:
  Function:
    Runtime: python3.12
    Handler: app.lambda_handler
    Timeout: 1
    MemorySize: 256
    Layers: [!Ref FixtureLayer]
    Environment:
      Variables:
        RESULTS_TABLE: !Ref ResultsTable
        GREETING: !Ref Greeting
        WORK_QUEUE_ARN: !GetAtt WorkQueue.Arn
        UPLOAD_OBJECTS: !Sub "${Uploads.Arn}/*"
Resources:
  Uploads:
    Type: AWS::S3::Bucket
    DependsOn: WorkQueuePolicy
    Properties:
      BucketName: !Sub "${AWS::StackName}-uploads-${AWS::AccountId}"
      PublicAccessBlockConfiguration:
        BlockPublicAcls: true
        BlockPublicPolicy: true
        IgnorePublicAcls: true
        RestrictPublicBuckets: true
      NotificationConfiguration:
        QueueConfigurations:
          - Event: s3:ObjectCreated:*
            Queue: !GetAtt WorkQueue.Arn
  UploadsPolicy:
    Type: AWS::S3::BucketPolicy
    Properties:
      Bucket: !Ref Uploads
      PolicyDocument:
        Version: "2012-10-17"
        Statement:
          - Effect: Deny
            Principal: "*"
            Action: s3:*
            Resource: [!GetAtt Uploads.Arn, !Sub "${Uploads.Arn}/*"]
            Condition: {Bool: {aws:SecureTransport: "false"}}
  WorkQueue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 2
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt WorkDeadLetterQueue.Arn
        maxReceiveCount: 2
  WorkDeadLetterQueue:
    Type: AWS::SQS::Queue
  WorkQueuePolicy:
    Type: AWS::SQS::QueuePolicy
    Properties:
      Queues: [!Ref WorkQueue]
      PolicyDocument:
        Version: "2012-10-17"
        Statement:
          - Effect: Allow
            Principal: {Service: s3.amazonaws.com}
            Action: sqs:SendMessage
            Resource: !GetAtt WorkQueue.Arn
            Condition:
              ArnEquals:
                aws:SourceArn: !Sub "arn:${AWS::Partition}:s3:::${AWS::StackName}-uploads-${AWS::AccountId}"
  ResultsTable:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions:
        - {AttributeName: id, AttributeType: S}
        - {AttributeName: kind, AttributeType: S}
      KeySchema:
        - {AttributeName: id, KeyType: HASH}
      GlobalSecondaryIndexes:
        - IndexName: ByKind
          KeySchema:
            - {AttributeName: kind, KeyType: HASH}
            - {AttributeName: id, KeyType: RANGE}
          Projection: {ProjectionType: ALL}
      PointInTimeRecoverySpecification:
        PointInTimeRecoveryEnabled: true
  FixtureLayer:
    Type: AWS::Serverless::LayerVersion
    Properties:
      ContentUri: layer/
      CompatibleRuntimes: [python3.12]
  WorkFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/
      Events:
        Work:
          Type: SQS
          Properties:
            Queue: !GetAtt WorkQueue.Arn
            BatchSize: 10
            MaximumBatchingWindowInSeconds: 1
            FunctionResponseTypes: [ReportBatchItemFailures]
  ApiFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/
      Handler: api.lambda_handler
      FunctionUrlConfig:
        AuthType: AWS_IAM
"""

# Records every delivery of every message in the results table; fails on request.
FIXTURE_APP = """\
import json
import os
import time
from urllib.parse import unquote_plus

import boto3

table = boto3.resource("dynamodb").Table(os.environ["RESULTS_TABLE"])


def record(item_id, kind, receive_count, **extra):
    table.update_item(
        Key={"id": item_id},
        UpdateExpression="SET #kind = :kind, #counts = list_append(if_not_exists(#counts, :empty), :count)"
        + "".join(f", #{name} = :{name}" for name in extra),
        ExpressionAttributeNames={"#kind": "kind", "#counts": "receive_counts",
                                  **{f"#{k}": k for k in extra}},
        ExpressionAttributeValues={":kind": kind, ":empty": [], ":count": [int(receive_count)],
                                   **{f":{name}": value for name, value in extra.items()}},
    )


def lambda_handler(event, context):
    failures = []
    records = event["Records"]
    bodies = [json.loads(r["body"]) for r in records]
    first = {r["messageId"]: r["attributes"]["ApproximateReceiveCount"] == "1" for r in records}
    if any(b.get("explode") for b in bodies) and all(first.values()):
        raise RuntimeError("the whole batch fails on its first delivery")
    for r, body in zip(records, bodies):
        count = r["attributes"]["ApproximateReceiveCount"]
        if body.get("Event") == "s3:TestEvent":
            continue
        if "Records" in body:
            for s3 in body["Records"]:
                key = unquote_plus(s3["s3"]["object"]["key"])
                record("s3:" + key, "s3", count, bucket=s3["s3"]["bucket"]["name"])
            continue
        record(body["id"], "sqs", count, batch=[b.get("id", "") for b in bodies],
               remaining_ms=context.get_remaining_time_in_millis(), request_id=context.aws_request_id,
               event_source_arn=r["eventSourceARN"], memory=context.memory_limit_in_mb)
        if body.get("poison"):
            failures.append({"itemIdentifier": r["messageId"]})
        if body.get("slow") and count == "1":
            time.sleep(10)  # past the 1 s Timeout: the instance is discarded
        if body.get("crash") and count == "1":
            os._exit(3)
    return {"batchItemFailures": failures}
"""

FIXTURE_API = """\
import base64
import json
import os

from fixture_layer import LAYER_MARK


def lambda_handler(event, context):
    body = event.get("body")
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body).hex()
    payload = {
        "event": {k: event.get(k) for k in ("version", "rawPath", "rawQueryString", "queryStringParameters",
                                            "isBase64Encoded", "cookies")},
        "method": event["requestContext"]["http"]["method"],
        "access_key": event["requestContext"]["authorizer"]["iam"]["accessKey"],
        "content_type": event["headers"].get("content-type"),
        "body": body,
        "layer": LAYER_MARK,
        "function_name": context.function_name,
        "env": {name: os.environ.get(name) for name in ("RESULTS_TABLE", "GREETING", "WORK_QUEUE_ARN",
                                                         "UPLOAD_OBJECTS", "AWS_LAMBDA_FUNCTION_NAME")},
    }
    return {"statusCode": 201, "headers": {"Content-Type": "application/json", "X-Fixture": "yes"},
            "body": json.dumps(payload), "isBase64Encoded": False}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    root = tmp_path_factory.mktemp("fixture-stack")
    (root / "template.yaml").write_text(FIXTURE_TEMPLATE, encoding="utf-8")
    (root / "fn").mkdir()
    (root / "fn" / "app.py").write_text(FIXTURE_APP, encoding="utf-8")
    (root / "fn" / "api.py").write_text(FIXTURE_API, encoding="utf-8")
    (root / "layer" / "python").mkdir(parents=True)
    (root / "layer" / "python" / "fixture_layer.py").write_text('LAYER_MARK = "from the layer"\n', encoding="utf-8")
    with LocalEnvironment.start(
        stack_name="fixture", endpoint_url=None, template_path=root / "template.yaml", log_dir=root / "logs"
    ) as environment:
        environment.wait_idle(timeout=30)  # S3's test event
        yield environment


def _results(env: LocalEnvironment, kind: str) -> dict[str, dict[str, Any]]:
    table = env.session.resource("dynamodb", endpoint_url=env.endpoint_url).Table(env.resources["ResultsTable"])
    items = table.query(IndexName="ByKind", KeyConditionExpression=Key("kind").eq(kind))["Items"]
    return {str(item["id"]): item for item in items}


def _send(env: LocalEnvironment, *bodies: dict[str, Any]) -> None:
    entries = [{"Id": str(i), "MessageBody": json.dumps(body)} for i, body in enumerate(bodies)]
    response = env.client("sqs").send_message_batch(QueueUrl=env.resources["WorkQueue"], Entries=entries)
    assert not response.get("Failed")


def _dead_letters(env: LocalEnvironment) -> list[dict[str, Any]]:
    sqs = env.client("sqs")
    messages: list[dict[str, Any]] = []
    while True:
        received = sqs.receive_message(
            QueueUrl=env.resources["WorkDeadLetterQueue"], MaxNumberOfMessages=10, VisibilityTimeout=60
        ).get("Messages", [])
        if not received:
            return messages
        messages.extend(json.loads(m["Body"]) for m in received)


def _counts(item: dict[str, Any]) -> list[int]:
    return [int(count) for count in item["receive_counts"]]


def test_stack_is_deployed_as_the_template_says(env: LocalEnvironment) -> None:
    s3, sqs, dynamodb = env.client("s3"), env.client("sqs"), env.client("dynamodb")
    bucket, queue = env.resources["Uploads"], env.resources["WorkQueue"]
    assert bucket == f"fixture-uploads-{env.stack.account_id}"

    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert json.loads(attributes["RedrivePolicy"])["maxReceiveCount"] == 2
    assert json.loads(attributes["Policy"])["Statement"][0]["Principal"] == {"Service": "s3.amazonaws.com"}
    notification = s3.get_bucket_notification_configuration(Bucket=bucket)["QueueConfigurations"]
    assert [(n["QueueArn"], n["Events"]) for n in notification] == [(attributes["QueueArn"], ["s3:ObjectCreated:*"])]
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]["BlockPublicPolicy"]
    table = dynamodb.describe_table(TableName=env.resources["ResultsTable"])["Table"]
    assert [index["IndexName"] for index in table["GlobalSecondaryIndexes"]] == ["ByKind"]
    backups = dynamodb.describe_continuous_backups(TableName=env.resources["ResultsTable"])
    assert backups["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == (
        "ENABLED"
    )

    # Deploying again reuses the stack: same resources, nothing left to complete.
    again = deploy_stack(env.template, env.stack.name, env.stack.endpoint)
    assert again.physical_ids == env.stack.physical_ids
    assert complete_resources(again) == []


def test_poison_message_is_retried_then_dead_lettered_while_the_rest_of_its_batch_is_deleted(
    env: LocalEnvironment,
) -> None:
    run = uuid.uuid4().hex[:8]
    good, poison = [f"{run}-good-{i}" for i in range(3)], f"{run}-poison"
    _send(env, *({"id": i} for i in good), {"id": poison, "poison": True})
    env.wait_idle(timeout=30, settle_s=SETTLE_S)

    results = _results(env, "sqs")
    for message_id in good:
        assert _counts(results[message_id]) == [1], "a good message is processed once and deleted"
    assert _counts(results[poison]) == [1, 2], "the poison message is delivered maxReceiveCount times"
    assert sorted(results[good[0]]["batch"]) == sorted([*good, poison]), "one batch, as sent"
    assert results[good[0]]["event_source_arn"].endswith(env.resources["WorkQueue"].rsplit("/", 1)[-1])
    assert 0 < int(results[good[0]]["remaining_ms"]) <= 1000
    assert results[good[0]]["memory"] == "256"
    assert {"id": poison, "poison": True} in _dead_letters(env)


def test_a_handler_that_raises_gets_its_whole_batch_again(env: LocalEnvironment) -> None:
    run = uuid.uuid4().hex[:8]
    calm, explosive = f"{run}-calm", f"{run}-explosive"
    _send(env, {"id": calm}, {"id": explosive, "explode": True})
    env.wait_idle(timeout=30, settle_s=SETTLE_S)

    results = _results(env, "sqs")
    # Nothing was recorded on the first delivery; both messages came back together.
    assert _counts(results[calm]) == [2]
    assert _counts(results[explosive]) == [2]
    assert not {calm, explosive} & {body.get("id") for body in _dead_letters(env)}


def test_an_instance_that_dies_or_times_out_is_replaced_and_its_batch_redelivered(
    env: LocalEnvironment,
) -> None:
    run = uuid.uuid4().hex[:8]
    slow, crash = f"{run}-slow", f"{run}-crash"
    _send(env, {"id": slow, "slow": True})
    env.wait_idle(timeout=30, settle_s=SETTLE_S)
    _send(env, {"id": crash, "crash": True})
    env.wait_idle(timeout=30, settle_s=SETTLE_S)

    results = _results(env, "sqs")
    assert _counts(results[slow]) == [1, 2]
    assert _counts(results[crash]) == [1, 2]
    log = env.log_path("WorkFunction").read_text(encoding="utf-8")
    assert "Task timed out after 1.00 seconds" in log
    assert "REPORT RequestId:" in log


def test_an_upload_reaches_the_handler_as_an_s3_event_with_its_key(env: LocalEnvironment) -> None:
    run = uuid.uuid4().hex[:8]
    # Event keys are URL-encoded (moto encodes "/" too, S3 a space as "+"): the handler must unquote_plus.
    keys = [f"{run}/{name}" for name in ("plain.jpg", "with space/photo 1.jpg", "ünïcödé/Zoë.jpg", "a+b=c&d.jpg")]
    for key in keys:
        env.client("s3").put_object(Bucket=env.resources["Uploads"], Key=key, Body=b"not really a photo")
    env.wait_idle(timeout=30, settle_s=SETTLE_S)

    results = _results(env, "s3")
    assert {f"s3:{key}" for key in keys} <= results.keys()
    assert {results[f"s3:{key}"]["bucket"] for key in keys} == {env.resources["Uploads"]}


def test_function_url_round_trip(env: LocalEnvironment) -> None:
    url = env.api_url + "echo/some%20path?x=1&x=2&y="
    status, headers, body = invoke_function_url(
        url,
        method="POST",
        body=b"\x00\x01\xff",
        headers={"Content-Type": "application/octet-stream", "Cookie": "a=1; b=2"},
        session=env.session,
    )
    assert status == 201
    assert headers["X-Fixture"] == "yes"
    payload = json.loads(body)
    assert payload["event"] == {
        "version": "2.0",
        "rawPath": "/echo/some%20path",
        "rawQueryString": "x=1&x=2&y=",
        "queryStringParameters": {"x": "1,2", "y": ""},
        "isBase64Encoded": True,
        "cookies": ["a=1", "b=2"],
    }
    assert payload["method"] == "POST"
    assert payload["body"] == "0001ff"
    credentials = env.session.get_credentials()
    assert credentials is not None and payload["access_key"] == credentials.access_key
    assert payload["layer"] == "from the layer"
    assert payload["function_name"] == "fixture-ApiFunction"
    assert payload["env"] == {
        "RESULTS_TABLE": env.resources["ResultsTable"],
        "GREETING": "hello",
        "WORK_QUEUE_ARN": env.stack.queue_arn("WorkQueue"),
        "UPLOAD_OBJECTS": f"arn:aws:s3:::{env.resources['Uploads']}/*",
        "AWS_LAMBDA_FUNCTION_NAME": "fixture-ApiFunction",
    }

    status, _, body = invoke_function_url(
        env.api_url,
        method="POST",
        body='{"hello": "json"}',
        headers={"Content-Type": "application/json"},
        session=env.session,
    )
    assert status == 201
    assert json.loads(body)["body"] == '{"hello": "json"}'


def test_function_url_refuses_unsigned_requests_like_aws_iam_auth(env: LocalEnvironment) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(env.api_url, timeout=10)
    assert refused.value.code == 403


def test_the_fixture_template_describes_its_functions(env: LocalEnvironment) -> None:
    work = env.template.functions["WorkFunction"]
    assert [s.queue_logical_id for s in work.sqs_sources] == ["WorkQueue"]
    source = work.sqs_sources[0]
    assert (source.batch_size, source.maximum_batching_window_s, source.report_batch_item_failures) == (
        10,
        1,
        True,
    )
    assert not work.has_function_url
    assert env.template.functions["ApiFunction"].function_url_auth == "AWS_IAM"
    assert work.code_dir == env.template.path.parent / "fn"
    assert work.python_path[1] == env.template.path.parent / "layer" / "python"
    assert work.handler == "app.lambda_handler"
