"""One function instance, as Lambda runs it: a process of its own (`python -m candor_local.emulator.worker CONFIG`).

The runtime sets its environment from the template (plus Lambda's reserved variables) and its import path
to the function's code and layers. For each SQS event source the worker plays Lambda's event source
mapping: it long-polls the queue, batches up to BatchSize within MaximumBatchingWindowInSeconds, invokes
the handler with a real SQS event and a Lambda context, and deletes exactly the messages the handler did
not report in batchItemFailures (none when it raises or times out). Failed messages come back after the
queue's visibility timeout, and the queue's RedrivePolicy moves them to the dead-letter queue. A Function
URL, if the function has one, is served by `candor_local.emulator.function_url`.

For each Kinesis stream event source the worker plays Lambda's shard poller (`ShardPoller`), one per shard:
it reads the shard in order, invokes the handler with a real Kinesis event one batch at a time, and keeps a
checkpoint (`Checkpoints`) after each batch; a failed batch is retried, bisected or skipped as the mapping
says. Only one instance of a function is given its streams (the runtime decides), so a shard never has two
pollers.

One invocation runs at a time, as in a Lambda instance; a function that may run several at once
(ScalingConfig.MaximumConcurrency) gets several processes, each polling the queue as here. An invocation
that outlives the function's Timeout ends the process (Lambda discards the sandbox too); the runtime
starts a new one.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import os
import resource
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from candor_local.emulator.worker_config import QueueSource, StreamSource, WorkerConfig

logger = logging.getLogger("candor_local.emulator.worker")

# Long polls stay short so that a stop request is honoured within about a second.
POLL_WAIT_S = 1
SQS_MAX_RECEIVE = 10
TIMEOUT_EXIT_CODE = 124

Handler = Callable[[Any, Any], Any]


class LambdaContext:
    """The context object of Lambda's Python runtime (awslambdaric), attribute for attribute."""

    def __init__(self, config: WorkerConfig, request_id: str, log_stream_name: str) -> None:
        self.function_name = config.function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = config.function_arn
        # A string, as in Lambda's runtime (it reads AWS_LAMBDA_FUNCTION_MEMORY_SIZE).
        self.memory_limit_in_mb = str(config.memory_mb)
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{config.function_name}"
        self.log_stream_name = log_stream_name
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + config.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def log_stream_name() -> str:
    """Lambda's log stream naming: date/[version]instance-id."""
    return f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"


class Invoker:
    """Invokes the handler one event at a time, under the function's Timeout, with Lambda's
    START/END/REPORT lines around each invocation."""

    def __init__(self, handler: Handler, config: WorkerConfig) -> None:
        self._handler = handler
        self._config = config
        self._lock = threading.Lock()
        self._log_stream = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME") or log_stream_name()

    def __call__(self, event: Any) -> Any:
        with self._lock:
            request_id = str(uuid.uuid4())
            context = LambdaContext(self._config, request_id, self._log_stream)
            _emit(f"START RequestId: {request_id} Version: $LATEST")
            watchdog = threading.Timer(self._config.timeout_s, self._timed_out, args=(request_id,))
            watchdog.daemon = True
            started = time.perf_counter()
            watchdog.start()
            try:
                return self._handler(event, context)
            finally:
                watchdog.cancel()
                duration_ms = (time.perf_counter() - started) * 1000
                used_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
                _emit(f"END RequestId: {request_id}")
                _emit(
                    f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
                    f"Billed Duration: {int(duration_ms) + 1} ms\tMemory Size: {self._config.memory_mb} MB\t"
                    f"Max Memory Used: {used_mb} MB"
                )

    def _timed_out(self, request_id: str) -> None:
        now = datetime.now(UTC).isoformat()
        _emit(f"{now} {request_id} Task timed out after {self._config.timeout_s:.2f} seconds")
        logging.shutdown()
        # Lambda discards a timed-out sandbox; the runtime's supervisor starts a new instance.
        os._exit(TIMEOUT_EXIT_CODE)


def _emit(line: str) -> None:
    """Platform lines go to stdout like Lambda's runtime writes them to the function's log stream."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------------ SQS


def sqs_record(message: Mapping[str, Any], source: QueueSource, region: str) -> dict[str, Any]:
    """One record of the SQS event Lambda delivers, built from a ReceiveMessage result."""
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": {name: str(value) for name, value in message.get("Attributes", {}).items()},
        "messageAttributes": {
            name: _message_attribute(value) for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": source.queue_arn,
        "awsRegion": region,
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def _message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    def b64(data: Any) -> str:
        return base64.b64encode(data if isinstance(data, bytes) else str(data).encode()).decode()

    attribute: dict[str, Any] = {
        "stringListValues": list(value.get("StringListValues", [])),
        "binaryListValues": [b64(item) for item in value.get("BinaryListValues", [])],
        "dataType": value.get("DataType", "String"),
    }
    if "StringValue" in value:
        attribute["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        attribute["binaryValue"] = b64(value["BinaryValue"])
    return attribute


def failed_message_ids(result: Any, message_ids: Iterable[str]) -> set[str]:
    """Message ids to keep, from a ReportBatchItemFailures response, by Lambda's rules: no response, an
    empty one or an empty list is full success; a malformed response, or an itemIdentifier that is empty
    or not in the batch, fails the whole batch."""
    batch = set(message_ids)
    if result is None:
        return set()
    if not isinstance(result, dict):
        logger.warning("handler returned %s, not a batch response: the whole batch failed", type(result).__name__)
        return batch
    failures = result.get("batchItemFailures")
    if not failures:
        return set()
    if not isinstance(failures, list):
        logger.warning("batchItemFailures is not a list: the whole batch failed")
        return batch
    failed: set[str] = set()
    for item in failures:
        identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not identifier or identifier not in batch:
            logger.warning("invalid batch item failure %r: the whole batch failed", item)
            return batch
        failed.add(identifier)
    return failed


class InFlight:
    """The receipt handles of the batch an instance is running, in a file of its own: written before the
    handler runs, removed once the batch is settled. A file left behind names messages whose instance was
    killed; the next start of the runtime makes them visible at once (runtime.release_in_flight) instead of
    after their visibility timeout. Only for endpoints that outlive the runtime (LocalStack, a moto server
    of your own): the embedded one releases its own on restore."""

    def __init__(self, directory: str, name: str) -> None:
        self._path = Path(directory) / f"{name}.json" if directory else None

    def hold(self, queue_url: str, messages: list[dict[str, Any]]) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self._path.with_suffix(".tmp")
        handles = [message["ReceiptHandle"] for message in messages]
        scratch.write_text(json.dumps({"queue_url": queue_url, "receipt_handles": handles}), encoding="utf-8")
        scratch.replace(self._path)

    def settled(self) -> None:
        if self._path is not None:
            self._path.unlink(missing_ok=True)


class QueuePoller:
    """Lambda's event source mapping for one SQS queue."""

    def __init__(
        self,
        source: QueueSource,
        invoke: Callable[[Any], Any],
        region: str,
        stop: threading.Event,
        in_flight: InFlight | None = None,
    ) -> None:
        self._source = source
        self._invoke = invoke
        self._region = region
        self._stop = stop
        self._sqs = boto3.client("sqs", region_name=region)
        self._in_flight = in_flight or InFlight("", "")

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self.receive_batch()
                if batch:
                    self.process(batch)
            except Exception:
                # The poller outlives endpoint hiccups, as Lambda's does (handler errors never get here).
                logger.exception("polling %s failed; retrying", self._source.queue_url)
                self._stop.wait(1.0)

    def receive_batch(self) -> list[dict[str, Any]]:
        """Up to BatchSize messages: the first receive long-polls; later ones fill the batch until the
        batching window (counted from the first message) closes."""
        source = self._source
        messages: list[dict[str, Any]] = []
        window_closes = 0.0
        while not self._stop.is_set() and len(messages) < source.batch_size:
            if messages:
                remaining = window_closes - time.monotonic()
                if source.maximum_batching_window_s <= 0 or remaining <= 0:
                    break
                wait = min(POLL_WAIT_S, int(remaining))
            else:
                wait = POLL_WAIT_S
            response = self._sqs.receive_message(
                QueueUrl=source.queue_url,
                MaxNumberOfMessages=min(SQS_MAX_RECEIVE, source.batch_size - len(messages)),
                WaitTimeSeconds=wait,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            received = response.get("Messages", [])
            if not received:
                if not messages:
                    return []
                if wait == 0:
                    self._stop.wait(0.05)  # under a second of window left: short polls, gently
                continue
            if not messages:
                window_closes = time.monotonic() + source.maximum_batching_window_s
            messages.extend(dict(message) for message in received)
        return messages

    def process(self, messages: list[dict[str, Any]]) -> None:
        event = {"Records": [sqs_record(m, self._source, self._region) for m in messages]}
        ids = [m["MessageId"] for m in messages]
        self._in_flight.hold(self._source.queue_url, messages)
        try:
            result = self._invoke(event)
        except Exception:
            # Lambda logs the error; every message of the batch becomes visible again after the timeout.
            logger.exception("invocation failed: none of the %d messages is deleted", len(messages))
            self._in_flight.settled()
            return
        failed = failed_message_ids(result, ids) if self._source.report_batch_item_failures else set()
        done = [m for m in messages if m["MessageId"] not in failed]
        if failed:
            logger.info("%d of %d messages reported failed; they will be retried", len(failed), len(messages))
        self._delete(done)
        self._in_flight.settled()

    def _delete(self, messages: list[dict[str, Any]]) -> None:
        for start in range(0, len(messages), SQS_MAX_RECEIVE):
            chunk = messages[start : start + SQS_MAX_RECEIVE]
            response = self._sqs.delete_message_batch(
                QueueUrl=self._source.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
            )
            for failure in response.get("Failed", []):
                logger.warning("could not delete message %s: %s", failure.get("Id"), failure.get("Message"))


# ------------------------------------------------------------------------------------------------ Kinesis

# An idle shard is read this often (Lambda reads each shard about once a second; shorter keeps tests quick).
SHARD_POLL_S = 0.25
KINESIS_MAX_RECORDS = 10000  # GetRecords' Limit
_RETRY_BACKOFF_MAX_S = 5.0


def epoch_seconds(moment: datetime | float) -> float:
    """A Kinesis record's ApproximateArrivalTimestamp (a datetime from boto3, a number in raw JSON) in epoch s."""
    return moment.timestamp() if isinstance(moment, datetime) else float(moment)


def kinesis_record(record: Mapping[str, Any], shard_id: str, source: StreamSource, region: str) -> dict[str, Any]:
    """One record of the Kinesis event Lambda delivers, built from a GetRecords result."""
    arrival = record["ApproximateArrivalTimestamp"]
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": record["PartitionKey"],
            "sequenceNumber": record["SequenceNumber"],
            "data": base64.b64encode(record["Data"]).decode(),
            "approximateArrivalTimestamp": epoch_seconds(arrival),
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard_id}:{record['SequenceNumber']}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": source.invoke_identity_arn,
        "awsRegion": region,
        "eventSourceARN": source.stream_arn,
    }


class Checkpoints:
    """Where a Kinesis mapping's shard pollers have got to, in a file of the data directory (one per mapping):
    per shard, the sequence number of the last record done (handled, or skipped after its retries) and how
    many deliveries of the records after it failed. Rewritten whole (a temporary file, then a rename) after
    each batch and before each delivery, so a killed instance's replacement resumes after the last record
    done; the records after it are delivered again (at least once, as Lambda). A delivery the instance did
    not outlive (a timeout ends it) counts as failed. `started_at` is when the mapping first polled: a LATEST
    mapping reads from there, so records put while its instance was down are not lost."""

    def __init__(self, directory: str, function_name: str, source: StreamSource, stream_created: float) -> None:
        self._path = Path(directory) / f"{function_name}.{source.mapping_id}.json" if directory else None
        self._lock = threading.Lock()
        saved = self.read(directory, function_name, source)
        if saved.get("stream_arn") != source.stream_arn or saved.get("stream_created") != stream_created:
            saved = {}  # none yet, or the stream's: a stream made again starts afresh
        self._state: dict[str, Any] = {
            "stream_arn": source.stream_arn,
            "stream_created": stream_created,
            "started_at": saved.get("started_at", time.time()),
            "shards": saved.get("shards", {}),
        }
        with self._lock:
            self._write()

    @staticmethod
    def read(directory: str, function_name: str, source: StreamSource) -> dict[str, Any]:
        path = Path(directory) / f"{function_name}.{source.mapping_id}.json"
        try:
            state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if directory else {}
        except (OSError, ValueError):
            return {}
        return state

    @property
    def started_at(self) -> float:
        return float(self._state["started_at"])

    def sequence_number(self, shard_id: str) -> str | None:
        return self._state["shards"].get(shard_id, {}).get("sequence_number")

    def failed_deliveries(self, shard_id: str) -> int:
        return int(self._state["shards"].get(shard_id, {}).get("failed_deliveries", 0))

    def save(self, shard_id: str, sequence_number: str | None, failed_deliveries: int) -> None:
        with self._lock:
            self._state["shards"][shard_id] = {
                "sequence_number": sequence_number,
                "failed_deliveries": failed_deliveries,
            }
            self._write()

    def _write(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self._path.with_name(f"{self._path.name}.{threading.get_ident()}.tmp")
        scratch.write_text(json.dumps(self._state, indent=2), encoding="utf-8")
        scratch.replace(self._path)


def shard_iterator(
    kinesis: Any, source: StreamSource, shard_id: str, sequence_number: str | None, started_at: float
) -> str:
    """Where a shard's reading resumes: after the checkpoint, else at the mapping's StartingPosition (LATEST
    as it was when the mapping first polled)."""
    where: dict[str, Any]
    if sequence_number is not None:
        where = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": sequence_number}
    elif source.starting_position == "TRIM_HORIZON":
        where = {"ShardIteratorType": "TRIM_HORIZON"}
    else:
        timestamp = source.starting_position_timestamp if source.starting_position == "AT_TIMESTAMP" else started_at
        where = {"ShardIteratorType": "AT_TIMESTAMP", "Timestamp": timestamp}
    response = kinesis.get_shard_iterator(StreamARN=source.stream_arn, ShardId=shard_id, **where)
    return str(response["ShardIterator"])


def shards_behind(kinesis: Any, directory: str, function_name: str, source: StreamSource) -> list[str]:
    """The shards of a mapping that hold records its poller has not done yet (read from its checkpoint file)."""
    saved = Checkpoints.read(directory, function_name, source)
    if not saved:
        return ["(not started)"]
    behind = []
    for shard in kinesis.list_shards(StreamARN=source.stream_arn)["Shards"]:
        shard_id = shard["ShardId"]
        sequence_number = saved["shards"].get(shard_id, {}).get("sequence_number")
        iterator = shard_iterator(kinesis, source, shard_id, sequence_number, float(saved["started_at"]))
        if kinesis.get_records(StreamARN=source.stream_arn, ShardIterator=iterator, Limit=1)["Records"]:
            behind.append(shard_id)
    return behind


def first_failed_index(result: Any, sequence_numbers: list[str]) -> int | None:
    """Where a ReportBatchItemFailures response says the batch failed: the index of the lowest failed
    sequence number (a malformed response fails the whole batch, as Lambda reads it); None: all done."""
    failed = failed_message_ids(result, sequence_numbers)
    if not failed:
        return None
    return min(sequence_numbers.index(sequence_number) for sequence_number in failed)


class ShardPoller:
    """Lambda's event source mapping for one shard of a Kinesis stream: reads the shard in order, one batch
    at a time, and checkpoints after each. A batch the handler fails is retried (from its first reported
    failure with ReportBatchItemFailures; split in two with BisectBatchOnFunctionError) until its records
    have failed MaximumRetryAttempts retries; then it is skipped, logged, and reported to the OnFailure
    queue if there is one, and the shard goes on."""

    def __init__(
        self,
        source: StreamSource,
        shard_id: str,
        invoke: Callable[[Any], Any],
        config: WorkerConfig,
        stop: threading.Event,
        checkpoints: Checkpoints,
    ) -> None:
        self._source = source
        self._shard_id = shard_id
        self._invoke = invoke
        self._region = config.region
        self._function_arn = config.function_arn
        self._stop = stop
        self._checkpoints = checkpoints
        self._kinesis = boto3.client("kinesis", region_name=config.region)

    def run(self) -> None:
        iterator: str | None = None
        while not self._stop.is_set():
            try:
                if iterator is None:
                    iterator = shard_iterator(
                        self._kinesis,
                        self._source,
                        self._shard_id,
                        self._checkpoints.sequence_number(self._shard_id),
                        self._checkpoints.started_at,
                    )
                records, iterator = self.read_batch(iterator)
                if records:
                    self.process(records)
                if iterator is None:
                    logger.info("%s is closed and read to its end", self._shard_id)
                    return
            except Exception:
                # An endpoint hiccup or an expired iterator: read again from the checkpoint.
                logger.exception("polling %s of %s failed; retrying", self._shard_id, self._source.stream_name)
                iterator = None
                self._stop.wait(1.0)

    def read_batch(self, iterator: str) -> tuple[list[dict[str, Any]], str | None]:
        """Up to BatchSize records in shard order, and the iterator after them (None: the shard is closed).
        Reading goes on until the batch is full or the batching window (from the first record) closes."""
        source = self._source
        records: list[dict[str, Any]] = []
        window_closes = 0.0
        next_iterator: str | None = iterator
        while next_iterator is not None and not self._stop.is_set() and len(records) < source.batch_size:
            response = self._kinesis.get_records(
                StreamARN=source.stream_arn,
                ShardIterator=next_iterator,
                Limit=min(KINESIS_MAX_RECORDS, source.batch_size - len(records)),
            )
            next_iterator = response.get("NextShardIterator")
            received = response.get("Records", [])
            if received and not records:
                window_closes = time.monotonic() + source.maximum_batching_window_s
            records.extend(received)
            if not records:
                self._stop.wait(SHARD_POLL_S)
                break
            remaining = window_closes - time.monotonic()
            if remaining <= 0:
                break
            if not received:
                self._stop.wait(min(SHARD_POLL_S, remaining))
        return records, next_iterator

    def process(self, records: list[dict[str, Any]]) -> None:
        self._settle(records, self._checkpoints.failed_deliveries(self._shard_id))

    def _settle(self, batch: list[dict[str, Any]], failures: int) -> None:
        """Deliver `batch` until it is done or skipped; `failures`: failed deliveries of its first record."""
        source = self._source
        while batch and not self._stop.is_set():
            if 0 <= source.maximum_retry_attempts < failures:
                self._skip(batch, failures)
                return
            if failures:
                self._stop.wait(min(_RETRY_BACKOFF_MAX_S, 0.2 * 2 ** (failures - 1)))
            last_done = self._checkpoints.sequence_number(self._shard_id)
            self._checkpoints.save(self._shard_id, last_done, failures + 1)  # failed, unless it returns
            sequence_numbers = [record["SequenceNumber"] for record in batch]
            event = {"Records": [kinesis_record(r, self._shard_id, source, self._region) for r in batch]}
            raised = False
            try:
                result = self._invoke(event)
            except Exception:
                raised = True
                logger.exception(
                    "invocation failed (%d records of %s from %s, failed %d time(s))",
                    len(batch),
                    self._shard_id,
                    sequence_numbers[0],
                    failures + 1,
                )
            if raised:
                failures += 1
                if source.bisect_batch_on_function_error and len(batch) > 1:
                    half = len(batch) // 2
                    self._settle(batch[:half], failures)
                    self._settle(batch[half:], failures)
                    return
                continue
            failed_at = first_failed_index(result, sequence_numbers) if source.report_batch_item_failures else None
            if failed_at is None:
                self._checkpoints.save(self._shard_id, sequence_numbers[-1], 0)
                return
            # Done up to the first failure; the retry starts at it and carries its failures.
            failures += 1
            logger.info(
                "%d of %d records reported failed; retrying from %s",
                len(batch) - failed_at,
                len(batch),
                sequence_numbers[failed_at],
            )
            done_to = sequence_numbers[failed_at - 1] if failed_at else last_done
            self._checkpoints.save(self._shard_id, done_to, failures)
            batch = batch[failed_at:]

    def _skip(self, batch: list[dict[str, Any]], failures: int) -> None:
        source = self._source
        first, last = batch[0]["SequenceNumber"], batch[-1]["SequenceNumber"]
        logger.error(
            "skipping %d record(s) of %s %s (sequence numbers %s to %s): they failed %d time(s) and "
            "MaximumRetryAttempts is %d%s",
            len(batch),
            source.stream_name,
            self._shard_id,
            first,
            last,
            failures,
            source.maximum_retry_attempts,
            "; the OnFailure queue is told" if source.on_failure_queue_url else "",
        )
        if source.on_failure_queue_url:
            self._report_failure(batch, failures)
        self._checkpoints.save(self._shard_id, last, 0)

    def _report_failure(self, batch: list[dict[str, Any]], failures: int) -> None:
        """What Lambda sends an OnFailure destination for a stream batch: where the batch is, not its records."""

        def when(record: Mapping[str, Any]) -> str:
            arrival = record["ApproximateArrivalTimestamp"]
            moment = arrival if isinstance(arrival, datetime) else datetime.fromtimestamp(float(arrival), UTC)
            return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

        message = {
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": self._function_arn,
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": failures,
            },
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "version": "1.0",
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "KinesisBatchInfo": {
                "shardId": self._shard_id,
                "startSequenceNumber": batch[0]["SequenceNumber"],
                "endSequenceNumber": batch[-1]["SequenceNumber"],
                "approximateArrivalOfFirstRecord": when(batch[0]),
                "approximateArrivalOfLastRecord": when(batch[-1]),
                "batchSize": len(batch),
                "streamArn": self._source.stream_arn,
            },
        }
        try:
            sqs = boto3.client("sqs", region_name=self._region)
            sqs.send_message(QueueUrl=self._source.on_failure_queue_url, MessageBody=json.dumps(message))
        except Exception:  # the batch is skipped either way, as Lambda's would be
            logger.exception("could not tell the OnFailure queue of the skipped batch")


def stream_pollers(
    config: WorkerConfig, invoke: Callable[[Any], Any], stop: threading.Event
) -> list[tuple[str, ShardPoller]]:
    """A poller for each shard of each of the instance's streams, named; the shards are those open or
    holding records when the instance starts (a stream resharded later needs a restart)."""
    pollers = []
    for source in config.streams:
        kinesis = boto3.client("kinesis", region_name=config.region)
        summary = kinesis.describe_stream_summary(StreamARN=source.stream_arn)["StreamDescriptionSummary"]
        created = summary["StreamCreationTimestamp"]
        created_s = created.timestamp() if isinstance(created, datetime) else float(created)
        checkpoints = Checkpoints(config.checkpoint_dir, config.function_name, source, created_s)
        for shard in kinesis.list_shards(StreamARN=source.stream_arn)["Shards"]:
            poller = ShardPoller(source, shard["ShardId"], invoke, config, stop, checkpoints)
            pollers.append((f"poll-{source.stream_name}-{shard['ShardId']}", poller))
    return pollers


# ------------------------------------------------------------------------------------------------ process


def load_handler(handler: str, python_path: Iterable[str]) -> Handler:
    """Import `module.function` the way Lambda does, with the code and layers first on sys.path."""
    for entry in reversed(list(python_path)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    module_name, _, function_name = handler.rpartition(".")
    module = importlib.import_module(module_name.replace("/", "."))
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ImportError(f"handler {handler!r}: {module_name} has no function {function_name}")
    return function


def _write_ready(path: str, **details: Any) -> None:
    target = Path(path)
    scratch = target.with_suffix(".tmp")
    scratch.write_text(json.dumps({"pid": os.getpid(), **details}), encoding="utf-8")
    scratch.replace(target)


def _configure_logging() -> None:
    # Lambda's runtime gives the root logger one handler writing to the log stream; functions' own
    # loggers (Powertools) write JSON to stdout themselves.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(levelname)s]\t%(asctime)s\t%(name)s\t%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logger.setLevel(logging.INFO)


def run(config: WorkerConfig) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    started = time.perf_counter()
    handler = load_handler(config.handler, config.python_path)  # Lambda's init phase
    invoke = Invoker(handler, config)
    logger.info("%s initialised in %.0f ms", config.name, (time.perf_counter() - started) * 1000)

    threads: list[threading.Thread] = []
    details: dict[str, Any] = {}
    if config.function_url is not None:
        from candor_local.emulator.function_url import FunctionUrlServer

        server = FunctionUrlServer(config.function_url, invoke, config.region)
        details["port"] = server.port
        threads.append(threading.Thread(target=server.serve_forever, name="function-url", daemon=True))
        stop_server: Callable[[], None] | None = server.shutdown
    else:
        stop_server = None
    for index, source in enumerate(config.queues):
        in_flight = InFlight(config.in_flight_dir, f"{config.name.replace('#', '-')}-{index}")
        poller = QueuePoller(source, invoke, config.region, stop, in_flight)
        threads.append(threading.Thread(target=poller.run, name=f"poll-{source.queue_arn}", daemon=True))
    for name, shard_poller in stream_pollers(config, invoke, stop):
        threads.append(threading.Thread(target=shard_poller.run, name=name, daemon=True))
    for thread in threads:
        thread.start()
    _write_ready(config.ready_file, **details)
    logger.info(
        "%s ready (%d queue(s)%s%s)",
        config.name,
        len(config.queues),
        f", {len(config.streams)} Kinesis stream(s)" if config.streams else "",
        f", Function URL on port {details['port']}" if "port" in details else "",
    )

    parent = os.getppid()
    orphaned = False
    while not stop.wait(0.5):
        if not any(thread.is_alive() for thread in threads):
            break
        if os.getppid() != parent:
            # The runtime is gone (killed without stopping us): an orphan would poll forever.
            logger.warning("%s: the runtime exited; stopping", config.name)
            orphaned = True
            break
    stop.set()
    if stop_server is not None:
        stop_server()
    for thread in threads:
        # A stop lets the invocation in flight finish; an orphan has no one left to finish it for.
        thread.join(timeout=0 if orphaned else POLL_WAIT_S + 5)
    logger.info("%s stopped", config.name)
    return 0


def invoke_once(config: WorkerConfig, event_path: Path, result_path: Path) -> int:
    """`sam local invoke` without Docker: one init, one invocation with the event file, the result as JSON."""
    handler = load_handler(config.handler, config.python_path)
    event = json.loads(event_path.read_text(encoding="utf-8"))
    result = Invoker(handler, config)(event)
    result_path.write_text(json.dumps(result, default=str), encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 4 and args[0] == "--invoke":
        _configure_logging()
        return invoke_once(WorkerConfig.load(Path(args[1])), Path(args[2]), Path(args[3]))
    if len(args) != 1:
        sys.stderr.write(
            "usage: python -m candor_local.emulator.worker CONFIG.json | --invoke CONFIG.json EVENT.json RESULT.json\n"
        )
        return 2
    _configure_logging()
    config = WorkerConfig.load(Path(args[0]))
    try:
        return run(config)
    except Exception:
        # An init error: Lambda reports it and tries a fresh instance; so does the runtime's supervisor.
        logger.exception("%s failed to start", config.name)
        return 1


if __name__ == "__main__":
    sys.exit(main())
