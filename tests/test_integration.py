"""Real photos through the real pipeline: upload to the bucket, S3 notification, DetectFunction, EmbedFunction,
then search through the face API with boto3's Rekognition client.

Endpoint-agnostic: with AWS_ENDPOINT_URL unset the local runtime starts moto server; set it (LocalStack, or
an AWS account's endpoints) and the same test deploys template.yaml there and runs against it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from candor.core.enrolment import photo_id_for
from candor.core.settings import EMBEDDER_VERSION
from candor_local.cli.client import client_for
from candor_local.emulator.runtime import LocalEnvironment

pytestmark = pytest.mark.integration

PEOPLE = ("alex_lacamoire", "biden", "kit_harington", "obama", "rose_leslie")
# Every enrolment upload names the enrolled person's consent reference (object metadata).
CONSENTED = {"candor-consent": "consent-form-integration"}


@pytest.fixture(scope="module")
def env(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    logs = tmp_path_factory.mktemp("logs")
    with LocalEnvironment.start(stack_name="candor-it", model_dir=model_dir, log_dir=logs) as environment:
        yield environment


@pytest.fixture(scope="module")
def enrolled(env: LocalEnvironment, faces_dir: Path) -> dict[str, Path]:
    """Create a collection, upload every labelled enrolment photo plus two bad uploads, wait for the pipeline."""
    collection = f"people-{uuid.uuid4().hex[:8]}"
    rekognition = _rekognition(env)
    rekognition.create_collection(CollectionId=collection)
    s3 = env.client("s3")
    bucket = env.resources["UploadBucket"]
    uploads: dict[str, Path] = {}
    for person in PEOPLE:
        for photo in sorted((faces_dir / "enroll" / person).iterdir()):
            key = f"enroll/{collection}/{person}/{photo.name}"
            s3.put_object(Bucket=bucket, Key=key, Body=photo.read_bytes(), Metadata=CONSENTED)
            uploads[key] = photo
    s3.put_object(Bucket=bucket, Key=f"photos/{collection}/broken photo+1.jpg", Body=b"\xff\xd8\xff truncated")
    s3.put_object(Bucket=bucket, Key=f"enroll/{collection}/nobody/empty.png", Body=_blank_png(), Metadata=CONSENTED)
    env.wait_idle(timeout=180)
    return {"collection": collection, **uploads}  # type: ignore[dict-item]


def _rekognition(env: LocalEnvironment) -> Any:
    return env.session.client("rekognition", endpoint_url=env.api_url)


def _photo(env: LocalEnvironment, key: str) -> dict[str, Any]:
    table = env.session.resource("dynamodb", endpoint_url=env.endpoint_url).Table(env.resources["PhotosTable"])
    item = table.get_item(Key={"photo_id": photo_id_for(env.resources["UploadBucket"], key)}).get("Item")
    assert item is not None, f"no photo record for {key}"
    return item


def _blank_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), (90, 120, 150)).save(buffer, "PNG")
    return buffer.getvalue()


def test_every_enrolment_photo_is_processed_and_its_face_indexed(env: LocalEnvironment, enrolled: dict) -> None:
    collection = enrolled["collection"]
    keys = [key for key in enrolled if key.startswith("enroll/") and "/nobody/" not in key]
    for key in keys:
        photo = _photo(env, key)
        assert photo["status"] == "COMPLETE", photo
        assert photo["face_count"] >= 1 and photo["embedder_version"] == EMBEDDER_VERSION
    faces = env.session.resource("dynamodb", endpoint_url=env.endpoint_url).Table(env.resources["FacesTable"])
    items = faces.query(
        IndexName="ByCollection",
        KeyConditionExpression="collection_id = :c",
        ExpressionAttributeValues={":c": collection},
    )["Items"]
    assert sorted(item["external_image_id"] for item in items) == sorted(key.split("/")[2] for key in keys)
    assert _rekognition(env).describe_collection(CollectionId=collection)["FaceCount"] == len(keys)


def test_bad_uploads_end_in_failed_records_and_no_dead_letters(env: LocalEnvironment, enrolled: dict) -> None:
    collection = enrolled["collection"]
    broken = _photo(env, f"photos/{collection}/broken photo+1.jpg")
    assert broken["status"] == "FAILED" and broken["error_code"] == "InvalidImageFormat"
    faceless = _photo(env, f"enroll/{collection}/nobody/empty.png")
    assert faceless["status"] == "FAILED" and faceless["error_code"] == "NoFaceDetected"
    sqs = env.client("sqs")
    for dlq in ("DetectDeadLetterQueue", "EmbedDeadLetterQueue"):
        attributes = sqs.get_queue_attributes(
            QueueUrl=env.resources[dlq], AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        assert attributes["ApproximateNumberOfMessages"] == "0", dlq


def test_search_by_image_finds_the_right_person(env: LocalEnvironment, enrolled: dict, faces_dir: Path) -> None:
    rekognition = _rekognition(env)
    response = rekognition.search_faces_by_image(
        CollectionId=enrolled["collection"], Image={"Bytes": (faces_dir / "probe/obama1.jpg").read_bytes()}
    )
    assert [match["Face"]["ExternalImageId"] for match in response["FaceMatches"]] == ["obama"]
    assert response["FaceMatches"][0]["Similarity"] >= 80


def test_a_stranger_matches_nobody(env: LocalEnvironment, enrolled: dict, faces_dir: Path) -> None:
    response = _rekognition(env).search_faces_by_image(
        CollectionId=enrolled["collection"],
        Image={"Bytes": (faces_dir / "probe/lin-manuel-miranda.png").read_bytes()},
        MaxFaces=5,
    )
    assert response["FaceMatches"] == []


def test_every_face_of_a_group_photo_is_searched(env: LocalEnvironment, enrolled: dict, faces_dir: Path) -> None:
    photo = (faces_dir / "probe/two_people.jpg").read_bytes()
    result = client_for(env).search_all_faces(photo, enrolled["collection"], 80)
    found = {face["FaceMatches"][0]["Face"]["ExternalImageId"] for face in result["Faces"] if face["FaceMatches"]}
    assert found == {"obama", "biden"}


def test_errors_use_rekognitions_exceptions(env: LocalEnvironment, enrolled: dict) -> None:
    rekognition = _rekognition(env)
    with pytest.raises(rekognition.exceptions.ResourceNotFoundException):
        rekognition.search_faces_by_image(CollectionId="no-such-collection", Image={"Bytes": _blank_png()})
    with pytest.raises(rekognition.exceptions.InvalidImageFormatException):
        rekognition.search_faces_by_image(CollectionId=enrolled["collection"], Image={"Bytes": b"not an image"})
    with pytest.raises(rekognition.exceptions.ResourceAlreadyExistsException):
        rekognition.create_collection(CollectionId=enrolled["collection"])
