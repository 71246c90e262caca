"""Kinesis data stream event sources in the local runtime, as Lambda's Kinesis event source mapping plays
them: one poller per shard reads it in order, one batch at a time, invokes the handler with a real Kinesis
event, and checkpoints after each batch; a failed batch is retried from its first reported failure, or
bisected and finally skipped after MaximumRetryAttempts; a killed instance's replacement resumes after the
checkpoint, and so does the next `candor up` with the same data directory.

The test stack's handler writes each delivery it gets (the batch's records, as the event holds them) to an
S3 object named after the moment it started, so the tests read back what was delivered, in what order and
how often."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from candor_local.emulator.runtime import LocalEnvironment
from candor_local.emulator.stack import Endpoint, deploy_stack
from candor_local.emulator.template import KinesisEventSource, TemplateError, load_template

FIXTURE_TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.12
    Timeout: 10
    Environment:
      Variables:
        DELIVERIES_BUCKET: !Ref Deliveries
Resources:
  Deliveries:
    Type: AWS::S3::Bucket
  SkippedBatches:
    Type: AWS::SQS::Queue
  OrderedStream:
    Type: AWS::Kinesis::Stream
    Properties:
      ShardCount: 1
      StreamModeDetails: {StreamMode: PROVISIONED}
  RaisingStream:
    Type: AWS::Kinesis::Stream
    Properties:
      ShardCount: 1
  SlowStream:
    Type: AWS::Kinesis::Stream
    Properties:
      ShardCount: 1
  StuckStream:
    Type: AWS::Kinesis::Stream
    Properties:
      ShardCount: 1
  OrderedFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/
      Handler: app.ordered
      Environment:
        Variables:
          STREAM_NAME: !Ref OrderedStream
          STREAM_ARN: !GetAtt OrderedStream.Arn
      Events:
        Records:
          Type: Kinesis
          Properties:
            Stream: !GetAtt OrderedStream.Arn
            StartingPosition: TRIM_HORIZON
            BatchSize: 5
            MaximumBatchingWindowInSeconds: 1
            FunctionResponseTypes: [ReportBatchItemFailures]
  RaisingFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/
      Handler: app.raising
      Events:
        Records:
          Type: Kinesis
          Properties:
            Stream: !GetAtt RaisingStream.Arn
            StartingPosition: LATEST
            BatchSize: 4
            MaximumBatchingWindowInSeconds: 1
            ParallelizationFactor: 1
            MaximumRetryAttempts: 2
            BisectBatchOnFunctionError: true
            DestinationConfig:
              OnFailure:
                Type: SQS
                Destination: !GetAtt SkippedBatches.Arn
  SlowFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/
      Handler: app.slow
      Events:
        Records:
          Type: Kinesis
          Properties:
            Stream: !GetAtt SlowStream.Arn
            StartingPosition: TRIM_HORIZON
            BatchSize: 2
  StuckFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/
      Handler: app.stuck
      Timeout: 1
      Events:
        Records:
          Type: Kinesis
          Properties:
            Stream: !GetAtt StuckStream.Arn
            StartingPosition: LATEST
            BatchSize: 1
            MaximumRetryAttempts: 1
"""

# Records whose data starts with "fail-once" are reported failed the first time they come; "poison" raises.
FIXTURE_APP = """\
import base64
import json
import os
import time
import uuid

import boto3

s3 = boto3.client("s3")
BUCKET = os.environ["DELIVERIES_BUCKET"]


def record_delivery(event):
    key = f"{os.environ['AWS_LAMBDA_FUNCTION_NAME']}/{time.time_ns():020d}-{uuid.uuid4().hex}"
    body = {"records": event["Records"], "pid": os.getpid(), "stream": os.environ.get("STREAM_NAME")}
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(body).encode())


def first_time(sequence_number):
    marker = f"markers/{sequence_number}"
    try:
        s3.head_object(Bucket=BUCKET, Key=marker)
        return False
    except s3.exceptions.ClientError:
        s3.put_object(Bucket=BUCKET, Key=marker, Body=b"")
        return True


def ordered(event, context):
    record_delivery(event)
    failures = []
    for record in event["Records"]:
        data = base64.b64decode(record["kinesis"]["data"]).decode()
        number = record["kinesis"]["sequenceNumber"]
        if data.startswith("fail-once") and first_time(number):
            failures.append({"itemIdentifier": number})
    return {"batchItemFailures": failures}


def raising(event, context):
    record_delivery(event)
    if any(base64.b64decode(r["kinesis"]["data"]) == b"poison" for r in event["Records"]):
        raise ValueError("poison record")


def slow(event, context):
    record_delivery(event)
    time.sleep(0.4)


def stuck(event, context):
    record_delivery(event)
    if any(base64.b64decode(r["kinesis"]["data"]) == b"stuck" for r in event["Records"]):
        time.sleep(5)  # past the function's Timeout
"""

RECORD_KEYS = {
    "kinesis",
    "eventSource",
    "eventVersion",
    "eventID",
    "eventName",
    "invokeIdentityArn",
    "awsRegion",
    "eventSourceARN",
}


def _write_stack(root: Path, template_text: str = FIXTURE_TEMPLATE) -> Path:
    (root / "fn").mkdir(parents=True, exist_ok=True)
    (root / "fn" / "app.py").write_text(FIXTURE_APP, encoding="utf-8")
    template = root / "template.yaml"
    template.write_text(template_text, encoding="utf-8")
    return template


def _put(env: LocalEnvironment, stream: str, items: list[tuple[str, str]]) -> None:
    """(partition key, data) records in one PutRecords call: a shard keeps them in the call's order, and the
    first read of the shard sees them all (so a batch holds what the test expects)."""
    response = env.client("kinesis").put_records(
        StreamName=env.resources[stream], Records=[{"PartitionKey": key, "Data": data.encode()} for key, data in items]
    )
    assert response["FailedRecordCount"] == 0


def _deliveries(env: LocalEnvironment, function: str) -> list[list[dict[str, Any]]]:
    """Each delivery to the function, in the order they started: its records as the event held them."""
    s3 = env.client("s3")
    bucket = env.resources["Deliveries"]
    prefix = f"{env.stack.function_name(function)}/"
    keys = sorted(
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    )
    return [json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())["records"] for key in keys]


def _data(records: list[dict[str, Any]]) -> list[str]:
    return [base64.b64decode(record["kinesis"]["data"]).decode() for record in records]


def _delivered_data(env: LocalEnvironment, function: str) -> list[list[str]]:
    return [_data(batch) for batch in _deliveries(env, function)]


def _wait_for(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition was not met in time")
        time.sleep(0.2)


# ------------------------------------------------------------------------------------- the template


def _mapping_template(properties: str) -> str:
    """A one-function template whose Kinesis event has these properties (YAML, 12 spaces in)."""
    return f"""\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  Frames:
    Type: AWS::Kinesis::Stream
    Properties:
      ShardCount: 1
  Alerts:
    Type: AWS::SNS::Topic
  FrameFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/
      Runtime: python3.12
      Handler: app.ordered
      Events:
        Frames:
          Type: Kinesis
          Properties:
            Stream: !GetAtt Frames.Arn
{properties}
"""


def test_a_kinesis_mapping_left_to_lambdas_defaults_is_described_with_them(tmp_path: Path) -> None:
    template = load_template(_write_stack(tmp_path, _mapping_template("            StartingPosition: LATEST")))
    function = template.functions["FrameFunction"]
    assert function.kinesis_sources == (
        KinesisEventSource(
            logical_id="FrameFunctionFrames",
            stream_logical_id="Frames",
            starting_position="LATEST",
            batch_size=100,
            maximum_batching_window_s=0,
            maximum_retry_attempts=-1,
            bisect_batch_on_function_error=False,
            report_batch_item_failures=False,
        ),
    )
    assert function.sqs_sources == ()
    assert function.instances == 1


def test_every_setting_of_the_fixture_mappings_is_read(tmp_path: Path) -> None:
    functions = load_template(_write_stack(tmp_path)).functions
    (ordered,) = functions["OrderedFunction"].kinesis_sources
    assert (ordered.stream_logical_id, ordered.starting_position, ordered.batch_size) == (
        "OrderedStream",
        "TRIM_HORIZON",
        5,
    )
    assert (ordered.maximum_batching_window_s, ordered.report_batch_item_failures) == (1, True)
    (raising,) = functions["RaisingFunction"].kinesis_sources
    assert (raising.maximum_retry_attempts, raising.bisect_batch_on_function_error) == (2, True)
    assert raising.on_failure_queue_logical_id == "SkippedBatches"
    assert not raising.report_batch_item_failures


@pytest.mark.parametrize(
    ("properties", "refusal"),
    [
        ("            StartingPosition: LATEST\n            ParallelizationFactor: 2", "ParallelizationFactor is 2"),
        (
            "            StartingPosition: LATEST\n            FilterCriteria:\n"
            '              Filters: [{Pattern: \'{"data": {"x": [1]}}\'}]',
            "FilterCriteria",
        ),
        ("            StartingPosition: LATEST\n            BatchSize: 20000", "out of Lambda's range"),
        (
            "            StartingPosition: LATEST\n            DestinationConfig:\n              OnFailure:\n"
            "                Type: SNS\n                Destination: !Ref Alerts",
            "OnFailure destination must be an SQS queue",
        ),
    ],
)
def test_a_kinesis_mapping_the_local_runtime_cannot_play_is_refused(
    tmp_path: Path, properties: str, refusal: str
) -> None:
    with pytest.raises(TemplateError, match=refusal):
        load_template(_write_stack(tmp_path, _mapping_template(properties)))


def test_a_disabled_kinesis_mapping_polls_nothing(tmp_path: Path) -> None:
    properties = "            StartingPosition: LATEST\n            Enabled: false"
    template = load_template(_write_stack(tmp_path, _mapping_template(properties)))
    assert template.functions["FrameFunction"].kinesis_sources == ()


def test_a_stream_is_deployed_and_its_ref_and_arn_resolve(tmp_path: Path, moto: None) -> None:
    template = load_template(_write_stack(tmp_path))
    stack = deploy_stack(template, "kinesis", Endpoint(session=boto3.session.Session()))
    name = stack.physical_ids["OrderedStream"]
    summary = boto3.client("kinesis").describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    environment = stack.function_environment(template.functions["OrderedFunction"])
    assert environment["STREAM_NAME"] == name
    assert environment["STREAM_ARN"] == summary["StreamARN"] == stack.stream_arn("OrderedStream")
    assert summary["OpenShardCount"] == 1


# ------------------------------------------------------------------------------------- the runtime


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    root = tmp_path_factory.mktemp("kinesis-stack")
    template = _write_stack(root)
    with LocalEnvironment.start(stack_name="kinesis", template_path=template, log_dir=root / "logs") as environment:
        yield environment


@pytest.mark.integration
def test_records_are_delivered_in_order_as_lambdas_kinesis_event(env: LocalEnvironment) -> None:
    items = [(f"camera-{n % 3}", f"frame-{n}") for n in range(12)]
    _put(env, "OrderedStream", items)
    env.wait_idle(timeout=60, settle_s=0.5)

    batches = _deliveries(env, "OrderedFunction")
    records = [record for batch in batches for record in batch]
    assert _data(records) == [data for _, data in items]
    assert all(len(batch) <= 5 for batch in batches)
    assert [r["kinesis"]["partitionKey"] for r in records] == [key for key, _ in items]
    stream_arn = env.stack.stream_arn("OrderedStream")
    first = records[0]
    assert set(first) == RECORD_KEYS
    assert first["kinesis"]["kinesisSchemaVersion"] == "1.0"
    assert set(first["kinesis"]) == {
        "kinesisSchemaVersion",
        "partitionKey",
        "sequenceNumber",
        "data",
        "approximateArrivalTimestamp",
    }
    assert isinstance(first["kinesis"]["approximateArrivalTimestamp"], float)
    assert abs(first["kinesis"]["approximateArrivalTimestamp"] - time.time()) < 120
    assert (first["eventSource"], first["eventVersion"], first["eventName"]) == (
        "aws:kinesis",
        "1.0",
        "aws:kinesis:record",
    )
    assert first["eventSourceARN"] == stream_arn
    assert first["awsRegion"] == env.region
    assert first["eventID"] == f"shardId-000000000000:{first['kinesis']['sequenceNumber']}"
    assert first["invokeIdentityArn"].startswith(f"arn:aws:iam::{env.stack.account_id}:role/kinesis-OrderedFunction")
    sequence_numbers = [int(r["kinesis"]["sequenceNumber"]) for r in records]
    assert sequence_numbers == sorted(sequence_numbers)


@pytest.mark.integration
def test_a_reported_failure_is_retried_from_that_record_and_nothing_before_it_comes_again(
    env: LocalEnvironment,
) -> None:
    already = len(_deliveries(env, "OrderedFunction"))
    items = [("k", "ok-a"), ("k", "ok-b"), ("k", "fail-once-c"), ("k", "ok-d"), ("k", "ok-e")]
    _put(env, "OrderedStream", items)
    env.wait_idle(timeout=60, settle_s=0.5)

    batches = _delivered_data(env, "OrderedFunction")[already:]
    delivered = [data for batch in batches for data in batch]
    # Once up to the failure, then again from it: a, b once; c and what follows it twice.
    assert delivered == ["ok-a", "ok-b", "fail-once-c", "ok-d", "ok-e", "fail-once-c", "ok-d", "ok-e"]
    assert batches[-1][0] == "fail-once-c"


@pytest.mark.integration
def test_a_raising_batch_is_bisected_retried_and_skipped_and_later_records_still_arrive(
    env: LocalEnvironment,
) -> None:
    _put(env, "RaisingStream", [("k", "one"), ("k", "two"), ("k", "poison"), ("k", "four")])
    env.wait_idle(timeout=60, settle_s=0.5)
    _put(env, "RaisingStream", [("k", "after")])
    env.wait_idle(timeout=60, settle_s=0.5)

    batches = _delivered_data(env, "RaisingFunction")
    delivered = [data for batch in batches for data in batch]
    # The poison record comes 1 + MaximumRetryAttempts times, then it is skipped; the shard goes on.
    assert delivered.count("poison") == 3
    assert batches[-1] == ["after"]
    # Bisecting isolates it: its neighbours get through in the half without it.
    assert ["one", "two"] in batches
    assert all(len(batch) <= 4 for batch in batches)
    order = [delivered.index(data) for data in ("one", "two", "poison", "four", "after")]
    assert order == sorted(order)
    # The OnFailure queue is told where the skipped records are (not what they hold), as Lambda tells it.
    sqs = env.client("sqs")
    messages = sqs.receive_message(QueueUrl=env.resources["SkippedBatches"], MaxNumberOfMessages=10, WaitTimeSeconds=1)
    infos = [json.loads(m["Body"])["KinesisBatchInfo"] for m in messages.get("Messages", [])]
    assert infos and all(info["streamArn"] == env.stack.stream_arn("RaisingStream") for info in infos)
    assert sum(info["batchSize"] for info in infos) >= 1
    log = env.log_path("RaisingFunction").read_text(encoding="utf-8")
    assert "skipping" in log and "MaximumRetryAttempts is 2" in log


@pytest.mark.integration
def test_a_killed_instance_is_replaced_and_resumes_after_the_checkpoint(env: LocalEnvironment) -> None:
    items = [("k", f"slow-{n}") for n in range(10)]
    _put(env, "SlowStream", items)
    _wait_for(lambda: len(_deliveries(env, "SlowFunction")) >= 2)
    killed = env.worker_pid("SlowFunction")
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    _wait_for(lambda: env.worker_pid("SlowFunction") not in (None, killed))
    env.wait_idle(timeout=60, settle_s=0.5)

    batches = _delivered_data(env, "SlowFunction")
    delivered = [data for batch in batches for data in batch]
    first_deliveries = list(dict.fromkeys(delivered))
    assert first_deliveries == [data for _, data in items]  # nothing lost, in order
    # At least once: only the batch in flight when the instance was killed may come again (BatchSize 2).
    again = sorted({data for data in delivered if delivered.count(data) > 1}, key=first_deliveries.index)
    assert len(delivered) - len(items) == len(again) <= 2
    positions = [first_deliveries.index(data) for data in again]
    assert positions == list(range(positions[0], positions[0] + len(positions))) if positions else not again


@pytest.mark.integration
def test_a_batch_that_times_out_counts_as_failed_across_the_replaced_instances(env: LocalEnvironment) -> None:
    # Each timeout ends the instance (as Lambda discards the sandbox); the replacement knows the batch's count.
    _put(env, "StuckStream", [("k", "stuck"), ("k", "next")])
    env.wait_idle(timeout=90, settle_s=0.5)
    assert _delivered_data(env, "StuckFunction") == [["stuck"], ["stuck"], ["next"]]
    log = env.log_path("StuckFunction").read_text(encoding="utf-8")
    assert "Task timed out after 1.00 seconds" in log and "MaximumRetryAttempts is 1" in log


@pytest.mark.integration
def test_the_checkpoint_outlives_the_runtime_with_its_data_directory(tmp_path: Path) -> None:
    template = _write_stack(tmp_path / "stack")
    data_dir = tmp_path / "data"

    def start() -> LocalEnvironment:
        return LocalEnvironment.start(
            stack_name="kinesis-kept", template_path=template, log_dir=tmp_path / "logs", data_dir=data_dir
        )

    with start() as env:
        _put(env, "OrderedStream", [("k", "before-1"), ("k", "before-2")])
        env.wait_idle(timeout=60, settle_s=0.5)
    with start() as env:
        _put(env, "OrderedStream", [("k", "after-1")])
        env.wait_idle(timeout=60, settle_s=0.5)
        delivered = [data for batch in _delivered_data(env, "OrderedFunction") for data in batch]
    # TRIM_HORIZON would start from the first record again; the checkpoint starts after the last one done.
    assert delivered == ["before-1", "before-2", "after-1"]
