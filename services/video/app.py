"""VideoFunction: stored-video jobs from VideoJobQueue (started by the face API, or by an upload under videos/
that the detect stage passed on: probe, split, fan out) and their segments from VideoSegmentQueue (detect,
embed, search, track; the worker that completes the last segment merges the tracks and ends the job)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from candor.accountability.audit import AuditLog, log_anchor
from candor.accountability.rules import Accountability
from candor.adapters.aws import (
    DynamoAuditStore,
    DynamoQuotaCounter,
    DynamoVideoJobRepository,
    S3VideoStore,
    SnsJobNotifier,
    SqsPublisher,
)
from candor.adapters.batch import LoggedSqsBatchProcessor
from candor.adapters.wiring import collection_indexes, detector_and_embedder
from candor.core.errors import CandorError, MalformedEventError
from candor.core.settings import Settings
from candor.video.jobs import Segment, VideoRef
from candor.video_jobs import SegmentAnalyser, VideoJobs, job_from_upload

settings = Settings.from_env()
logger = Logger()
metrics = Metrics()
processor = LoggedSqsBatchProcessor(logger)
detector, embedder = detector_and_embedder(settings)
indexes = collection_indexes(settings)
job_queue = SqsPublisher(settings.video_job_queue_url)
segment_queue = SqsPublisher(settings.video_segment_queue_url)
video_jobs = VideoJobs(
    jobs=DynamoVideoJobRepository(settings.video_jobs_table),
    store=S3VideoStore(settings.video_results_bucket),
    job_queue=job_queue,
    segment_queue=segment_queue,
    notifier=SnsJobNotifier(),
    accountability=Accountability(
        AuditLog(DynamoAuditStore(settings.audit_table), on_append=log_anchor(logger.info)),
        DynamoQuotaCounter(settings.quotas_table),
    ),
    indexes=indexes,
    segment_ms=settings.video_segment_ms,
    segment_workers=settings.video_segment_workers,
    result_days=settings.video_result_days,
)
analyser = SegmentAnalyser(detector, embedder, settings.min_detection_confidence, indexes)


def record_handler(record: SQSRecord) -> None:
    try:
        message = _message(record.body)
    except MalformedEventError as error:
        logger.error("malformed message", extra={"message_id": record.message_id, "reason": error.message})
        metrics.add_metric(name="MalformedEvents", unit=MetricUnit.Count, value=1)
        return
    job_id = str(message.get("job_id") or "")
    logger.set_correlation_id(job_id or None)
    try:
        if "upload" in message:
            start_upload(message["upload"])
        elif "segment" in message:
            segment = Segment(int(message["segment"]), int(message["start_ms"]), message.get("end_ms"))
            job = video_jobs.analyse_segment(job_id, segment, analyser)
            logger.info("segment analysed", extra={"segment": segment.number, "status": job and job.status.value})
        else:
            job = video_jobs.plan(job_id)
            logger.info("job planned", extra={"segments": job and job.segments, "status": job and job.status.value})
    except Exception as error:
        # A failure retrying cannot fix ends the job on the last receive (the message then dead-letters).
        receives = int(record.attributes.approximate_receive_count or 1)
        if job_id and receives >= settings.video_max_receives:
            job = video_jobs.jobs.get(job_id)
            if job is not None:
                video_jobs.fail(job, f"internal error after {receives} attempts: {type(error).__name__}: {error}")
                metrics.add_metric(name="VideoJobsFailed", unit=MetricUnit.Count, value=1)
        _retry_soon(record, segment_queue if "segment" in message else job_queue, receives)
        raise


def _retry_soon(record: SQSRecord, queue: SqsPublisher, receives: int) -> None:
    """The failed message back in seconds, more with each receive, rather than after the queue's visibility
    timeout: a job is not held up half an hour by a service that was briefly unreachable."""
    delay = settings.video_retry_delay_s * receives
    try:
        queue.retry_in(record.receipt_handle, delay)
    except Exception:  # the visibility timeout still brings it back
        logger.warning("could not bring the message back sooner", exc_info=True)
    else:
        logger.info("message back in %d s", delay, extra={"message_id": record.message_id, "receives": receives})


def start_upload(upload: dict[str, Any]) -> None:
    video = VideoRef.from_dict(upload)
    job = job_from_upload(video, video_jobs.store.metadata(video), settings.video_sample_interval_ms, _now())
    try:
        video_jobs.start(job)
    except CandorError as error:
        video_jobs.record_failed_start(job, error)
    logger.info("video upload started a job", extra={"job": job.job_id, "key": video.key})


def _message(body: str) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except json.JSONDecodeError as error:
        raise MalformedEventError(f"message body is not JSON: {error}") from error
    if not isinstance(message, dict) or not ({"job_id", "upload"} & message.keys()):
        raise MalformedEventError("a video message names a job_id or an upload")
    return message


def _now() -> str:
    return datetime.now(UTC).isoformat()


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
