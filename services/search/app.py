"""SearchFunction and AdminFunction: the face API behind a Function URL each, speaking Amazon Rekognition's
JSON protocol. AdminFunction (FACE_API_ROLE=admin) serves the policy administration, SearchFunction the rest."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import LambdaFunctionUrlResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from protocol import AMZ_JSON, decode_body, error_body
from rekognition import FaceApi

from candor.accountability.audit import AuditLog, log_anchor
from candor.accountability.policy import GENERAL_PURPOSE, Caller, validate_purpose, validate_reference
from candor.accountability.rules import Accountability
from candor.adapters.aws import (
    DynamoAuditStore,
    DynamoChangeLog,
    DynamoCollectionRepository,
    DynamoFaceRepository,
    DynamoPhotoRepository,
    DynamoQuotaCounter,
    DynamoStreamProcessorRepository,
    DynamoUserRepository,
    DynamoVideoJobRepository,
    S3ImageStore,
    S3IndexSnapshotStore,
    S3VectorStore,
    S3VideoStore,
    SqsPublisher,
    model_source,
)
from candor.collection_service import CollectionStore
from candor.core.errors import CandorError
from candor.core.settings import DETECTOR_FILE, EMBEDDER_FILE, Settings
from candor.index.engines import IndexEngines
from candor.index.sync import IndexSync
from candor.live_processors import StreamProcessors
from candor.search import CollectionIndexes
from candor.video_jobs import VideoJobs
from candor.vision.model_files import model_dir_with
from candor.vision.models import load_models

settings = Settings.from_env()
logger = Logger()
metrics = Metrics()
app = LambdaFunctionUrlResolver()
# The embedder is not in the model layer on AWS (250 MB limit): fetched from the model bucket once per cold start.
model_dir = model_dir_with(
    [DETECTOR_FILE, EMBEDDER_FILE], settings.model_dir, model_source(settings.model_bucket, settings.model_prefix)
)
detector, embedder = load_models(model_dir, settings.model_threads)
collections = DynamoCollectionRepository(settings.collections_table, DynamoChangeLog(settings.collection_changes_table))
faces = DynamoFaceRepository(settings.faces_table)
# Cold start: a collection's index comes from its snapshot in the index bucket, then its change log. A collection
# on S3 Vectors keeps its vectors in its own index of the vector bucket (candor/index/engines.py).
snapshots = S3IndexSnapshotStore(settings.index_bucket) if settings.index_bucket else None
vector_store = S3VectorStore(settings.vector_bucket) if settings.vector_bucket else None
indexes = CollectionIndexes(faces, collections, IndexSync(snapshots, engines=IndexEngines(vector_store)))
accountability = Accountability(
    AuditLog(DynamoAuditStore(settings.audit_table), on_append=log_anchor(logger.info)),
    DynamoQuotaCounter(settings.quotas_table),
)
face_api = FaceApi(
    images=S3ImageStore(),
    collections=collections,
    indexes=indexes,
    store=CollectionStore(collections, faces, DynamoUserRepository(settings.users_table), indexes),
    detector=detector,
    embedder=embedder,
    min_confidence=settings.min_detection_confidence,
    region=os.environ.get("AWS_REGION", "us-east-1"),
    account_id=os.environ.get("CANDOR_ACCOUNT_ID", "000000000000"),
    accountability=accountability,
    photos=DynamoPhotoRepository(settings.photos_table),
    # SearchFunction or AdminFunction (template.yaml): the same code, each serving its own operations.
    role=settings.face_api_role,
    loosening_delay=timedelta(hours=settings.policy_loosening_delay_hours),
    # Start* records a video job and queues it for VideoFunction; Get* pages its results; erasure edits them.
    videos=VideoJobs(
        jobs=DynamoVideoJobRepository(settings.video_jobs_table),
        store=S3VideoStore(settings.video_results_bucket),
        job_queue=SqsPublisher(settings.video_job_queue_url),
        accountability=accountability,
        indexes=indexes,
        result_days=settings.video_result_days,
    )
    if settings.video_jobs_table
    else None,
    video_sample_interval_ms=settings.video_sample_interval_ms,
    video_buckets=(settings.upload_bucket,) if settings.upload_bucket else (),
    # Create/Start/Stop... record the processors; LiveFunction analyses their frames.
    streams=StreamProcessors(DynamoStreamProcessorRepository(settings.stream_processors_table), accountability, indexes)
    if settings.stream_processors_table
    else None,
)


@app.post("/")
def operation() -> Response:
    target = app.current_event.headers.get("x-amz-target", "")
    operation_name = target.rpartition(".")[2]
    try:
        request = decode_body(app.current_event.body, base64_encoded=app.current_event.is_base64_encoded)
        caller = caller_of(app.current_event.raw_event)
        with metrics_timer(operation_name):
            result = face_api.dispatch(target, request, caller)
    except CandorError as error:
        logger.info("request refused", extra={"operation": operation_name, "code": error.code, "reason": error.message})
        return _reply(400, error_body(error))
    return _reply(200, result)


def caller_of(event: dict[str, Any]) -> Caller:
    """Who signed the request (the Function URL's IAM authorizer) and what they state in the X-Candor-*
    headers. Without X-Candor-Purpose the purpose is `general`, the one a plain CreateCollection declares."""
    iam = (event.get("requestContext", {}).get("authorizer") or {}).get("iam") or {}
    identity = iam.get("userArn") or iam.get("callerId") or "anonymous"
    headers = {name.lower(): value for name, value in (event.get("headers") or {}).items()}
    purpose = headers.get("x-candor-purpose")
    case, consent = headers.get("x-candor-case"), headers.get("x-candor-consent")
    return Caller(
        identity=identity,
        purpose=validate_purpose(purpose.strip()) if purpose else GENERAL_PURPOSE,
        case_reference=validate_reference("X-Candor-Case", case.strip()) if case else None,
        consent_reference=validate_reference("X-Candor-Consent", consent.strip()) if consent else None,
    )


@contextmanager
def metrics_timer(operation_name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    elapsed_ms = (time.perf_counter() - started) * 1000
    metrics.add_metric(name=f"{operation_name}Latency", unit=MetricUnit.Milliseconds, value=elapsed_ms)


def _reply(status: int, body: dict[str, Any]) -> Response:
    return Response(status_code=status, content_type=AMZ_JSON, body=json.dumps(body))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.LAMBDA_FUNCTION_URL)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
