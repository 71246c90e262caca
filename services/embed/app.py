"""EmbedFunction: detected faces (via SQS) -> embeddings stored; an enrolment's face joins its collection.

The faces of every record of a batch go through the model in one call (candor.pipeline.embed_batch) before
the batch processor visits the records; each record's handler then stores its own faces, and raises to fail
that record alone."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSEvent, SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from candor import pipeline
from candor.accountability.audit import AuditLog, log_anchor
from candor.accountability.rules import Accountability
from candor.adapters.aws import (
    DynamoAuditStore,
    DynamoChangeLog,
    DynamoCollectionRepository,
    DynamoFaceRepository,
    DynamoPhotoRepository,
    S3ImageStore,
    model_source,
)
from candor.adapters.batch import LoggedSqsBatchProcessor
from candor.core.faces import PhotoStatus
from candor.core.settings import EMBEDDER_FILE, Settings
from candor.pipeline import EmbedOutcome
from candor.vision.model_files import model_dir_with
from candor.vision.models import load_embedder

settings = Settings.from_env()
logger = Logger()
metrics = Metrics()
processor = LoggedSqsBatchProcessor(logger)
# The embedder is not in the model layer on AWS (250 MB limit): fetched from the model bucket once per cold start.
embedder = load_embedder(
    model_dir_with([EMBEDDER_FILE], settings.model_dir, model_source(settings.model_bucket, settings.model_prefix)),
    settings.model_threads,
)
images = S3ImageStore()
photos = DynamoPhotoRepository(settings.photos_table)
faces = DynamoFaceRepository(settings.faces_table)
collections = DynamoCollectionRepository(settings.collections_table, DynamoChangeLog(settings.collection_changes_table))
accountability = Accountability(AuditLog(DynamoAuditStore(settings.audit_table), on_append=log_anchor(logger.info)))


# This invocation's messages by id, embedded by embed_batch before the batch processor visits them.
embedded: dict[str, EmbedOutcome] = {}


def embed_batch(event: dict[str, Any]) -> dict[str, EmbedOutcome]:
    """Every record's faces through the model in one call; a body that is not JSON fails its record only."""
    records = list(SQSEvent(event).records)
    requests: list[dict[str, Any] | Exception] = []
    for record in records:
        try:
            requests.append(record.json_body)
        except ValueError as error:
            requests.append(error)
    outcomes = pipeline.embed_batch(
        requests,
        images=images,
        photos=photos,
        collections=collections,
        embedder=embedder,
        retention_days=settings.retention_days,
    )
    return {record.message_id: outcome for record, outcome in zip(records, outcomes, strict=True)}


def record_handler(record: SQSRecord) -> None:
    outcome = embedded.pop(record.message_id)
    if outcome.job is not None:
        logger.set_correlation_id(outcome.job.photo.photo_id)
    photo = pipeline.store_embedded(
        outcome,
        photos=photos,
        faces=faces,
        collections=collections,
        embedder=embedder,
        accountability=accountability,
        retention_days=settings.retention_days,
    )
    elapsed_ms = outcome.seconds * 1000
    metrics.add_metric(name="EmbeddingLatency", unit=MetricUnit.Milliseconds, value=elapsed_ms)
    if photo.status is PhotoStatus.FAILED:
        metrics.add_metric(name="PhotosFailed", unit=MetricUnit.Count, value=1)
        logger.warning(
            "photo failed", extra={"key": photo.key, "code": photo.error_code, "reason": photo.error_message}
        )
    else:
        metrics.add_metric(name="FacesEmbedded", unit=MetricUnit.Count, value=len(photo.face_ids))
        logger.info(
            "faces embedded", extra={"key": photo.key, "faces": len(photo.face_ids), "ms": round(elapsed_ms, 1)}
        )


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    embedded.clear()
    embedded.update(embed_batch(event))
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
