"""Each function's handler fed the recorded events in events/, on resources created from template.yaml
inside moto's in-process mock (the same stack code the local runtime uses)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from botocore.exceptions import EndpointConnectionError
from lambda_helpers import lambda_context
from moto import mock_aws

from candor.core.enrolment import photo_id_for
from candor.core.settings import EMBEDDER_VERSION, EMBEDDING_SIZE
from candor.video.jobs import JobKind, VideoJob, VideoRef
from candor_local.emulator.moto_server import EMULATOR_CREDENTIALS
from candor_local.emulator.stack import DeployedStack, Endpoint, deploy_stack
from candor_local.emulator.template import load_template

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"
BUCKET = "candor-uploads-123456789012-us-east-1"  # the name template.yaml gives stack "candor" in moto's account
# The consent reference of the recorded enrolment (events/embed-faces.json), uploaded as object metadata.
CONSENT = "consent-form-0001"


def _event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture(scope="module")
def stack(model_dir: Path) -> Iterator[DeployedStack]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in EMULATOR_CREDENTIALS.items():
            env.setenv(name, value)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.delenv("AWS_ENDPOINT_URL", raising=False)
        with mock_aws():
            template = load_template(ROOT / "template.yaml", None, "us-east-1")
            deployed = deploy_stack(template, "candor", Endpoint(session=boto3.session.Session()))
            # moto's in-process mock sees every request as plain HTTP, so the TLS-only policy would refuse all.
            boto3.client("s3").delete_bucket_policy(Bucket=deployed.physical_ids["UploadBucket"])
            env.setenv("MODEL_DIR", str(model_dir))
            yield deployed


def _handler(stack: DeployedStack, service: str) -> ModuleType:
    """Import services/<service>/app.py as Lambda would (its folder first on the path, its template
    environment set), under a unique module name."""
    spec_of_function = stack.template.functions[f"{service.title()}Function"]
    for name, value in stack.function_environment(spec_of_function).items():
        if name != "MODEL_DIR":  # /opt/models on Lambda; the setup step's cache here
            os.environ[name] = value
    folder = ROOT / "services" / service
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(f"candor_handler_{service}", folder / "app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(folder))


def _photo(stack: DeployedStack, key: str) -> dict[str, Any] | None:
    table = boto3.resource("dynamodb").Table(stack.physical_ids["PhotosTable"])
    return table.get_item(Key={"photo_id": photo_id_for(BUCKET, key)}).get("Item")


def _put(key: str, path: Path | None = None, data: bytes | None = None, consent: str | None = None) -> None:
    metadata = {"candor-consent": consent} if consent else {}
    body = data if data is not None else path.read_bytes()  # type: ignore[union-attr]
    boto3.client("s3").put_object(Bucket=BUCKET, Key=key, Body=body, Metadata=metadata)


def _create_collection(stack: DeployedStack, collection_id: str) -> None:
    table = boto3.resource("dynamodb").Table(stack.physical_ids["CollectionsTable"])
    table.put_item(
        Item={
            "collection_id": collection_id,
            "created_at": "2026-11-22T04:00:00+00:00",
            "face_model_version": EMBEDDER_VERSION,
        }
    )


def test_bucket_name_in_the_recorded_events_is_the_templates(stack: DeployedStack) -> None:
    assert stack.physical_ids["UploadBucket"] == BUCKET


def test_detect_handler_records_faces_and_passes_them_on(stack: DeployedStack, faces_dir: Path) -> None:
    _create_collection(stack, "demo")
    _put("enroll/demo/obama/obama.jpg", faces_dir / "enroll/obama/obama.jpg", consent=CONSENT)
    _put("photos/two+people at lunch.jpg", faces_dir / "probe/two_people.jpg")
    detect = _handler(stack, "detect")

    response = detect.lambda_handler(_event("detect-s3-upload.json"), lambda_context("DetectFunction"))

    assert response == {"batchItemFailures": []}
    enrolled = _photo(stack, "enroll/demo/obama/obama.jpg")
    assert enrolled is not None and enrolled["status"] == "DETECTED" and enrolled["face_count"] == 1
    assert enrolled["collection_id"] == "demo" and enrolled["external_image_id"] == "obama"
    pair = _photo(stack, "photos/two+people at lunch.jpg")  # the event's key "two%2Bpeople+at+lunch", decoded
    assert pair is not None and pair["face_count"] == 2
    sqs = boto3.client("sqs")
    messages = sqs.receive_message(QueueUrl=stack.physical_ids["EmbedQueue"], MaxNumberOfMessages=10)["Messages"]
    assert sorted(len(json.loads(message["Body"])["faces"]) for message in messages) == [1, 2]


def test_malformed_batch_is_consumed_without_losing_the_good_record(stack: DeployedStack, faces_dir: Path) -> None:
    _create_collection(stack, "demo")
    _put("enroll/demo/obama/obama.jpg", faces_dir / "enroll/obama/obama.jpg", consent=CONSENT)
    _put("photos/not-a-photo.jpg", data=b"plain text, not an image")
    detect = _handler(stack, "detect")

    response = detect.lambda_handler(_event("detect-malformed-batch.json"), lambda_context("DetectFunction"))

    # Malformed events are logged and consumed (retrying cannot fix them); nothing is retried forever.
    assert response == {"batchItemFailures": []}
    bad = _photo(stack, "photos/not-a-photo.jpg")
    assert bad is not None and bad["status"] == "FAILED" and bad["error_code"] == "InvalidImageFormat"
    good = _photo(stack, "enroll/demo/obama/obama.jpg")
    assert good is not None and good["status"] == "DETECTED" and good["face_count"] == 1


def test_embed_handler_stores_vectors_and_enrols_the_face(stack: DeployedStack, faces_dir: Path) -> None:
    _create_collection(stack, "demo")
    _put("enroll/demo/obama/obama.jpg", faces_dir / "enroll/obama/obama.jpg", consent=CONSENT)
    embed = _handler(stack, "embed")

    response = embed.lambda_handler(_event("embed-faces.json"), lambda_context("EmbedFunction"))

    assert response == {"batchItemFailures": []}
    assert _photo(stack, "enroll/demo/obama/obama.jpg")["status"] == "COMPLETE"  # type: ignore[index]
    faces = boto3.resource("dynamodb").Table(stack.physical_ids["FacesTable"])
    items = faces.query(
        IndexName="ByCollection",
        KeyConditionExpression="collection_id = :c",
        ExpressionAttributeValues={":c": "demo"},
    )["Items"]
    assert len(items) == 1 and items[0]["external_image_id"] == "obama"
    assert items[0]["consent_reference"] == CONSENT and "expires_at" not in items[0]  # enrolled: kept
    assert len(items[0]["embedding"].value) == EMBEDDING_SIZE * 4 and items[0]["model_version"] == EMBEDDER_VERSION


def _invoke_api(search: ModuleType, name: str) -> tuple[int, dict[str, Any]]:
    response = search.lambda_handler(_event(name), lambda_context("SearchFunction"))
    return response["statusCode"], json.loads(response["body"])


def test_search_handler_speaks_rekognitions_protocol(stack: DeployedStack, faces_dir: Path) -> None:
    search = _handler(stack, "search")
    collections = boto3.resource("dynamodb").Table(stack.physical_ids["CollectionsTable"])
    collections.delete_item(Key={"collection_id": "demo"})  # earlier tests made it directly
    status, body = _invoke_api(search, "search-create-collection.json")
    assert status == 200 and body["CollectionArn"].endswith(":collection/demo")
    status, body = _invoke_api(search, "search-create-collection.json")
    assert status == 400 and body["__type"] == "ResourceAlreadyExistsException"

    # Enrol through the two pipeline handlers, then search with the recorded request (an S3Object probe).
    _put("enroll/demo/obama/obama.jpg", faces_dir / "enroll/obama/obama.jpg", consent=CONSENT)
    _put("probes/obama2.jpg", faces_dir / "probe/obama1.jpg")
    _handler(stack, "embed").lambda_handler(_event("embed-faces.json"), lambda_context("EmbedFunction"))
    status, body = _invoke_api(search, "search-faces-by-image.json")
    assert status == 200, body
    assert [m["Face"]["ExternalImageId"] for m in body["FaceMatches"]] == ["obama"]
    assert body["FaceMatches"][0]["Similarity"] >= 80

    status, body = _invoke_api(search, "search-bad-image.json")
    assert status == 400 and body["__type"] == "InvalidImageFormatException"


def test_a_video_job_whose_handling_fails_comes_back_in_seconds_not_after_the_visibility_timeout(
    stack: DeployedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = _handler(stack, "video")
    monkeypatch.setattr(video, "settings", replace(video.settings, video_retry_delay_s=1))
    bucket, key = stack.physical_ids["UploadBucket"], "media/door.mp4"
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=b"a video")
    job = VideoJob(
        "job-unreachable", JobKind.FACE_DETECTION, VideoRef(bucket, key), "2026-12-06T00:00:00+00:00", "app", "test"
    )
    video.video_jobs.jobs.create(job)
    sqs, queue_url = boto3.client("sqs"), stack.physical_ids["VideoJobQueue"]
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"job_id": job.job_id}))
    message = sqs.receive_message(QueueUrl=queue_url, MessageSystemAttributeNames=["All"])["Messages"][0]
    record = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message["Attributes"],
        "messageAttributes": {},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue_url.rsplit('/', 1)[-1]}",
        "awsRegion": "us-east-1",
    }

    def unreachable(*_: Any) -> None:
        raise EndpointConnectionError(endpoint_url="https://s3.us-east-1.amazonaws.com")

    monkeypatch.setattr(video.video_jobs.store, "fetch", unreachable)
    with pytest.raises(BatchProcessingError):  # a batch of one that failed: the invocation fails, as Lambda sees
        video.lambda_handler({"Records": [record]}, lambda_context("VideoFunction"))

    assert "Messages" not in sqs.receive_message(QueueUrl=queue_url)  # not at once: the service may be back soon
    time.sleep(1.5)
    again = sqs.receive_message(QueueUrl=queue_url, MessageSystemAttributeNames=["All"])["Messages"]
    assert [m["MessageId"] for m in again] == [message["MessageId"]]  # 1 s, not the queue's 30 minutes
    assert again[0]["Attributes"]["ApproximateReceiveCount"] == "2"
    stored = video.video_jobs.jobs.get(job.job_id)
    assert stored is not None and not stored.finished  # a first failure ends nothing
