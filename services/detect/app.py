"""DetectFunction: S3 upload notifications (via SQS) -> faces found, recorded, passed to the embed stage."""

from __future__ import annotations

import time
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
    DynamoCollectionRepository,
    DynamoPhotoRepository,
    S3ImageStore,
    SqsPublisher,
    model_source,
)
from candor.adapters.batch import LoggedSqsBatchProcessor
from candor.adapters.s3_events import photo_refs_from_notification
from candor.core.errors import MalformedEventError
from candor.core.faces import PhotoStatus
from candor.core.settings import DETECTOR_FILE, Settings
from candor.pipeline import detect_photo
from candor.video.jobs import VIDEO_UPLOAD_PREFIX
from candor.vision.embedder import default_embedder_model
from candor.vision.model_files import model_dir_with
from candor.vision.models import load_detector

settings = Settings.from_env()
logger = Logger()
metrics = Metrics()
processor = LoggedSqsBatchProcessor(logger)
detector = load_detector(
    model_dir_with([DETECTOR_FILE], settings.model_dir, model_source(settings.model_bucket, settings.model_prefix)),
    settings.model_threads,
)
images = S3ImageStore()
photos = DynamoPhotoRepository(settings.photos_table)
collections = DynamoCollectionRepository(settings.collections_table)
embed_queue = SqsPublisher(settings.embed_queue_url)
# An upload under videos/ is a stored-video job: VideoFunction takes it from its queue.
video_queue = SqsPublisher(settings.video_job_queue_url)
# The embed stage's model: its crops are cut here, from the photo decoded once (candor/pipeline.py).
crop_model = default_embedder_model()
accountability = Accountability(AuditLog(DynamoAuditStore(settings.audit_table), on_append=log_anchor(logger.info)))


def record_handler(record: SQSRecord) -> None:
    try:
        refs = photo_refs_from_notification(record.body)
    except MalformedEventError as error:
        # Retrying cannot fix a malformed event: log it with its id and consume it.
        logger.error("malformed event", extra={"message_id": record.message_id, "reason": error.message})
        metrics.add_metric(name="MalformedEvents", unit=MetricUnit.Count, value=1)
        return
    for ref in refs:
        if ref.key.startswith(VIDEO_UPLOAD_PREFIX):
            video_queue.publish({"upload": {"bucket": ref.bucket, "key": ref.key, "version_id": ref.version_id}})
            logger.info("video upload passed on to the video queue", extra={"key": ref.key})
            continue
        logger.set_correlation_id(ref.photo_id)
        started = time.perf_counter()
        photo = detect_photo(
            ref,
            images=images,
            photos=photos,
            collections=collections,
            detector=detector,
            embed_queue=embed_queue,
            min_confidence=settings.min_detection_confidence,
            accountability=accountability,
            retention_days=settings.retention_days,
            crop_model=crop_model,
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        metrics.add_metric(name="DetectionLatency", unit=MetricUnit.Milliseconds, value=elapsed_ms)
        if photo.status is PhotoStatus.FAILED:
            metrics.add_metric(name="PhotosFailed", unit=MetricUnit.Count, value=1)
            logger.warning(
                "photo failed", extra={"key": ref.key, "code": photo.error_code, "reason": photo.error_message}
            )
        else:
            metrics.add_metric(name="FacesDetected", unit=MetricUnit.Count, value=len(photo.faces))
            logger.info("faces detected", extra={"key": ref.key, "faces": len(photo.faces), "ms": round(elapsed_ms, 1)})


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
