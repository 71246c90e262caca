"""Every response the face API gives conforms to the model of its operation (botocore's Rekognition model, or
Candor's own in services/search/candor-service-2.json): parsed with botocore's parser as boto3 parses it, it
loses nothing but the documented extensions, and every member has the model's type and constraints. Requests
go through the search function's handler, on the template's resources in moto, with real photos.
Bad requests get the status code and error type a client sees."""

from __future__ import annotations

import base64
import copy
import dataclasses
import importlib.util
import json
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.parsers import create_parser
from lambda_helpers import lambda_context
from moto import mock_aws
from video_samples import TWO_PEOPLE, as_mp4

from candor.adapters.aws import SqsPublisher
from candor.video.jobs import Segment
from candor.video_jobs import SegmentAnalyser
from candor_local.emulator.moto_server import EMULATOR_CREDENTIALS
from candor_local.emulator.stack import Endpoint, deploy_stack
from candor_local.emulator.template import load_template

ROOT = Path(__file__).resolve().parents[1]
SEARCH = ROOT / "services" / "search"
EVENT = json.loads((ROOT / "events" / "search-create-collection.json").read_text())
CONSENT = "consent-form-conformance"
COLLECTION = "conformance"
MISSING_FACE_ID = "00000000-0000-4000-8000-000000000000"

# Members Candor adds to Rekognition's responses (README, "Switching from Rekognition"): boto3 drops them.
EXTENSIONS = {
    "RekognitionService.SearchFacesByImage": {"FalseMatchRisk"},
    "RekognitionService.SearchFaces": {"FalseMatchRisk"},
    "RekognitionService.SearchUsers": {"FalseMatchRisk"},
    "RekognitionService.SearchUsersByImage": {"FalseMatchRisk"},
    "RekognitionService.GetFaceDetection": {"Progress"},
    "RekognitionService.GetFaceSearch": {"Progress", "FalseMatchRisk"},
}
# Values that differ from the model by design (README): a face's IndexFacesModelVersion names Candor's embedder
# (`sface-2021dec+five-point-112`), where the model's pattern expects Rekognition's numbered versions.
DEVIATIONS = ("IndexFacesModelVersion' failed to satisfy constraint: Member must satisfy regular expression pattern",)


@pytest.fixture(scope="module")
def search(model_dir: Path) -> Iterator[ModuleType]:
    """The search function's handler, imported as Lambda imports it, on the template's resources in moto."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in EMULATOR_CREDENTIALS.items():
            env.setenv(name, value)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.delenv("AWS_ENDPOINT_URL", raising=False)
        with mock_aws():
            template = load_template(ROOT / "template.yaml", None, "us-east-1")
            deployed = deploy_stack(template, "candor", Endpoint(session=boto3.session.Session()))
            # moto's in-process mock sees every request as plain HTTP, so the TLS-only policies would refuse all.
            s3 = boto3.client("s3")
            for bucket in s3.list_buckets()["Buckets"]:
                s3.delete_bucket_policy(Bucket=bucket["Name"])
            for name, value in deployed.function_environment(template.functions["SearchFunction"]).items():
                env.setenv(name, value)
            env.setenv("MODEL_DIR", str(model_dir))
            yield _import_search()


def _protocol() -> ModuleType:
    """services/search/protocol.py, as the handler imports it (the same module once the handler is loaded)."""
    sys.path.insert(0, str(SEARCH))
    try:
        return importlib.import_module("protocol")
    finally:
        sys.path.remove(str(SEARCH))


def _import_search() -> ModuleType:
    sys.path.insert(0, str(SEARCH))
    try:
        spec = importlib.util.spec_from_file_location("candor_conformance_search", SEARCH / "app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SEARCH))


def invoke(search: ModuleType, target: str, body: str, **headers: str) -> tuple[int, bytes]:
    """One Function URL request to the handler: (status, response body). X_Candor_Consent is X-Candor-Consent."""
    event = copy.deepcopy(EVENT)
    event["headers"].update({"x-amz-target": target, **{k.lower().replace("_", "-"): v for k, v in headers.items()}})
    event["body"] = body
    response = search.lambda_handler(event, lambda_context("SearchFunction"))
    return response["statusCode"], response["body"].encode()


def run_video_jobs(search: ModuleType) -> None:
    """What VideoFunction does, in this process: plan each queued job, then analyse its segments."""
    sqs = boto3.client("sqs")
    analyser = SegmentAnalyser(search.detector, search.embedder, search.settings.min_detection_confidence,
                               search.indexes)  # fmt: skip
    # The segment queue is VideoFunction's alone: found by its name, as SearchFunction has no URL for it.
    segment_queue_url = next(url for url in sqs.list_queues()["QueueUrls"] if "VideoSegmentQueue" in url)
    videos = dataclasses.replace(search.face_api.videos, segment_queue=SqsPublisher(segment_queue_url))
    for queue_url in (search.settings.video_job_queue_url, segment_queue_url):
        while messages := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages"):
            for message in messages:
                body = json.loads(message["Body"])
                if "segment" in body:
                    segment = Segment(int(body["segment"]), int(body["start_ms"]), body.get("end_ms"))
                    videos.analyse_segment(body["job_id"], segment, analyser)
                else:
                    videos.plan(body["job_id"])
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def _image(path: Path) -> dict[str, str]:
    return {"Bytes": base64.b64encode(path.read_bytes()).decode()}


class Calls:
    """Runs operations and keeps each response, by target, for the conformance checks."""

    def __init__(self, search: ModuleType) -> None:
        self.search = search
        self.responses: dict[str, list[bytes]] = {}

    def __call__(self, target: str, request: dict[str, Any], **headers: str) -> dict[str, Any]:
        # The policy administration is AdminFunction's: the same handler with FACE_API_ROLE=admin.
        face_api = self.search.face_api
        face_api.role = "admin" if target in sys.modules["rekognition"].ADMIN_OPERATIONS else "search"
        try:
            status, body = invoke(self.search, target, json.dumps(request), **headers)
        finally:
            face_api.role = "search"
        assert status == 200, (target, body)
        self.responses.setdefault(target, []).append(body)
        return json.loads(body)


@pytest.fixture(scope="module")
def responses(search: ModuleType, faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[bytes]]:
    """Every operation Candor serves, called the way a client would, with what it answered."""
    call, tmp_path = Calls(search), tmp_path_factory.mktemp("video")
    rekognition = "RekognitionService."
    obama, obama2 = _image(faces_dir / "enroll/obama/obama.jpg"), _image(faces_dir / "enroll/obama/obama2.jpg")
    biden, probe = _image(faces_dir / "enroll/biden/biden.jpg"), _image(faces_dir / "probe/obama1.jpg")
    two_people = _image(faces_dir / "probe/two_people.jpg")

    call(rekognition + "CreateCollection", {"CollectionId": COLLECTION})
    call(rekognition + "DescribeCollection", {"CollectionId": COLLECTION})
    call(rekognition + "ListCollections", {"MaxResults": 1})
    call(rekognition + "ListCollections", {})
    indexed = [
        call(rekognition + "IndexFaces", {"CollectionId": COLLECTION, "Image": image, "ExternalImageId": person},
             X_Candor_Consent=CONSENT)["FaceRecords"][0]["Face"]["FaceId"]
        for image, person in ((obama, "obama"), (obama2, "obama"), (biden, "biden"))
    ]  # fmt: skip
    call(rekognition + "IndexFaces", {"CollectionId": COLLECTION, "Image": two_people, "QualityFilter": "HIGH",
         "MaxFaces": 1}, X_Candor_Consent=CONSENT)  # fmt: skip
    call(rekognition + "ListFaces", {"CollectionId": COLLECTION, "MaxResults": 2})
    call(rekognition + "DescribeCollection", {"CollectionId": COLLECTION})
    call(rekognition + "DetectFaces", {"Image": two_people, "Attributes": ["ALL"]})
    call(rekognition + "SearchFaces", {"CollectionId": COLLECTION, "FaceId": indexed[0], "MaxFaces": 5})
    call(rekognition + "SearchFacesByImage", {"CollectionId": COLLECTION, "Image": probe, "MaxFaces": 5})
    call(rekognition + "CompareFaces", {"SourceImage": obama, "TargetImage": two_people, "SimilarityThreshold": 80})
    call(rekognition + "CompareFaces", {"SourceImage": probe, "TargetImage": obama2})
    call(rekognition + "CreateUser", {"CollectionId": COLLECTION, "UserId": "barack"})
    call(rekognition + "AssociateFaces", {"CollectionId": COLLECTION, "UserId": "barack",
         "FaceIds": [indexed[0], indexed[1], indexed[2], MISSING_FACE_ID]})  # fmt: skip
    call(rekognition + "ListUsers", {"CollectionId": COLLECTION})
    call(rekognition + "ListFaces", {"CollectionId": COLLECTION, "UserId": "barack"})
    call(rekognition + "SearchUsers", {"CollectionId": COLLECTION, "UserId": "barack"})
    call(rekognition + "SearchUsers", {"CollectionId": COLLECTION, "FaceId": indexed[2]})
    call(rekognition + "SearchUsersByImage", {"CollectionId": COLLECTION, "Image": two_people, "MaxUsers": 3})
    call(rekognition + "DisassociateFaces", {"CollectionId": COLLECTION, "UserId": "barack",
         "FaceIds": [indexed[1], indexed[2]]})  # fmt: skip
    call(rekognition + "DeleteFaces", {"CollectionId": COLLECTION, "FaceIds": [indexed[2], MISSING_FACE_ID]})

    # Stream processors: the whole life of one, through every state a caller can see.
    name, region = "conformance-door", "us-east-1"
    processor = {
        "Name": name,
        "Input": {
            "KinesisVideoStream": {"Arn": f"arn:aws:kinesisvideo:{region}:123456789012:stream/door/1700000000000"}
        },
        "Output": {"KinesisDataStream": {"Arn": f"arn:aws:kinesis:{region}:123456789012:stream/door-results"}},
        "RoleArn": "arn:aws:iam::123456789012:role/CandorStreamProcessor",
        "Settings": {"FaceSearch": {"CollectionId": COLLECTION, "FaceMatchThreshold": 90}},
        "DataSharingPreference": {"OptIn": False},
    }
    call(rekognition + "CreateStreamProcessor", processor)
    call(rekognition + "StartStreamProcessor", {"Name": name, "StopSelector": {"MaxDurationInSeconds": 120}})
    assert call(rekognition + "DescribeStreamProcessor", {"Name": name})["Status"] == "RUNNING"
    call(rekognition + "ListStreamProcessors", {"MaxResults": 10})
    call(rekognition + "StopStreamProcessor", {"Name": name})
    region_of_interest = {"BoundingBox": {"Left": 0.1, "Top": 0.1, "Width": 0.5, "Height": 0.5}}
    update = {"DataSharingPreferenceForUpdate": {"OptIn": True}, "RegionsOfInterestForUpdate": [region_of_interest]}
    call(rekognition + "UpdateStreamProcessor", {"Name": name, **update})
    assert call(rekognition + "DescribeStreamProcessor", {"Name": name})["Status"] == "STOPPED"
    call(rekognition + "DeleteStreamProcessor", {"Name": name})

    # Stored video: in progress first (with Candor's Progress), then the finished results, paged.
    upload_bucket = search.settings.upload_bucket
    boto3.client("s3").upload_file(str(as_mp4(TWO_PEOPLE, tmp_path / "two.mp4")), upload_bucket, "media/two.mp4")
    video = {"S3Object": {"Bucket": upload_bucket, "Name": "media/two.mp4"}}
    detection = call(rekognition + "StartFaceDetection", {"Video": video, "FaceAttributes": "ALL"})["JobId"]
    face_search = call(rekognition + "StartFaceSearch", {"Video": video, "CollectionId": COLLECTION,
                       "FaceMatchThreshold": 80})["JobId"]  # fmt: skip
    assert call(rekognition + "GetFaceDetection", {"JobId": detection})["JobStatus"] == "IN_PROGRESS"
    run_video_jobs(search)
    page = call(rekognition + "GetFaceDetection", {"JobId": detection, "MaxResults": 2})
    assert page["JobStatus"] == "SUCCEEDED" and len(page["Faces"]) == 2
    call(rekognition + "GetFaceDetection", {"JobId": detection, "NextToken": page["NextToken"]})
    assert call(rekognition + "GetFaceSearch", {"JobId": face_search, "SortBy": "INDEX"})["JobStatus"] == "SUCCEEDED"

    candor = "CandorService."
    policy = {"Purposes": ["general", "fraud"], "MinFaceMatchThreshold": 85, "MaxFalseMatchRisk": 0.5}
    call(candor + "CreateCollection", {"CollectionId": "conformance-policy", "Policy": policy})
    call(candor + "PutCollectionPolicy", {"CollectionId": COLLECTION, "Policy": {"Purposes": ["general"]}})
    # A loosening waits, pending; cancelled, the policy in force stays.
    loosened = {"Purposes": ["general", "fraud"], "SearchesPerMinute": 5000}
    assert "PendingPolicy" in call(candor + "PutCollectionPolicy", {"CollectionId": COLLECTION, "Policy": loosened})
    assert "PendingPolicy" in call(candor + "DescribeCollectionPolicy", {"CollectionId": COLLECTION})
    assert "PendingPolicy" not in call(candor + "CancelCollectionPolicyChange", {"CollectionId": COLLECTION})
    call(candor + "DescribeCollectionPolicy", {"CollectionId": COLLECTION})
    call(candor + "DescribeCollectionPolicy", {"CollectionId": "conformance-policy"})
    call(candor + "SearchAllFacesByImage", {"CollectionId": COLLECTION, "Image": two_people, "MaxFaces": 3})
    call(candor + "ReindexCollection", {"CollectionId": COLLECTION, "MaxFaces": 10})
    call(candor + "ErasePerson", {"CollectionId": COLLECTION, "PersonId": "obama"})
    call(rekognition + "DeleteUser", {"CollectionId": COLLECTION, "UserId": "barack"})
    call(rekognition + "IndexFaces", {"CollectionId": COLLECTION, "Image": biden, "ExternalImageId": "biden"},
         X_Candor_Consent=CONSENT)  # fmt: skip
    call(candor + "ErasePerson", {"CollectionId": COLLECTION, "PersonId": "biden", "Image": biden})
    call(rekognition + "DeleteCollection", {"CollectionId": "conformance-policy"})
    return call.responses


def _served(search: ModuleType) -> list[str]:
    rekognition = sys.modules["rekognition"]  # imported by the handler
    return [f"{service}.{name}" for service, operations in rekognition.SERVICES.items() for name in operations]


def _normal(value: Any) -> Any:
    """Timestamps as the seconds the wire carries, so that parsed and sent compare."""
    if isinstance(value, dict):
        return {key: _normal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normal(item) for item in value]
    if isinstance(value, datetime):
        return value.timestamp()
    return value


def conformance_problems(target: str, body: bytes) -> list[str]:
    """What in a response boto3 would not read as Candor sent it, or what breaks the output shape."""
    protocol = _protocol()
    output = protocol.operation_model(target).output_shape
    sent = {key: value for key, value in json.loads(body).items() if key not in EXTENSIONS.get(target, set())}
    parsed = create_parser("json").parse({"status_code": 200, "headers": {}, "body": body}, output)
    parsed.pop("ResponseMetadata", None)
    problems = [] if _normal(parsed) == sent else [f"boto3 reads {_normal(parsed)!r}, Candor sent {sent!r}"]
    for _, message in protocol.shape_problems(sent, output):
        if not any(deviation in message for deviation in DEVIATIONS):
            problems.append(message)
    return problems


def test_every_operation_candor_serves_was_called(search: ModuleType, responses: dict[str, list[bytes]]) -> None:
    assert sorted(responses) == sorted(_served(search))


SERVED = [
    *(
        f"RekognitionService.{name}"
        for name in (
            "CreateCollection", "DescribeCollection", "ListCollections", "DeleteCollection", "DetectFaces",
            "IndexFaces", "ListFaces", "DeleteFaces", "SearchFaces", "SearchFacesByImage", "CompareFaces",
            "CreateUser", "DeleteUser", "ListUsers", "AssociateFaces", "DisassociateFaces", "SearchUsers",
            "SearchUsersByImage",
        )
    ),
    *(
        f"CandorService.{name}"
        for name in (
            "SearchAllFacesByImage", "CreateCollection", "PutCollectionPolicy", "DescribeCollectionPolicy",
            "ErasePerson", "ReindexCollection",
        )
    ),
]  # fmt: skip


@pytest.mark.parametrize("target", SERVED)
def test_the_response_conforms_to_the_operations_model(target: str, responses: dict[str, list[bytes]]) -> None:
    assert responses[target], f"{target} was not called"
    for body in responses[target]:
        assert conformance_problems(target, body) == [], body[:2000]


def test_the_checks_see_a_response_that_does_not_conform() -> None:
    """The check itself: an extra member, a mistyped one and a broken constraint are each found."""
    assert conformance_problems("RekognitionService.DescribeCollection", b'{"FaceCount": 2, "Shards": 1}')
    assert conformance_problems("RekognitionService.DescribeCollection", b'{"FaceCount": "2"}')
    assert conformance_problems("RekognitionService.ListUsers", b'{"Users": [{"UserId": "u", "UserStatus": "GONE"}]}')
    assert conformance_problems("RekognitionService.DescribeCollection", b'{"FaceCount": 2}') == []


# What a hostile caller sends, and the status and error type it gets back (never a 502).
HOSTILE = [
    ("RekognitionService.DetectFaces", "[" * 100_000 + "]" * 100_000, "SerializationException"),
    ("RekognitionService.DetectFaces", '{"Image": {"S3Object": {"Bucket": ["b"], "Name": "k"}}}',
     "SerializationException"),
    ("RekognitionService.DetectFaces", '{"Image": {"S3Object": {"Bucket": "b-ok", "Name": 5}}}',
     "SerializationException"),
    ("RekognitionService.DetectFaces", '{"Image": {"S3Object": {"Bucket": "b-ok", "Name": "k", "Version": 1}}}',
     "SerializationException"),
    ("RekognitionService.DetectFaces", '{"Image": {"S3Object": {"Bucket": "../../etc", "Name": "passwd"}}}',
     "ValidationException"),
    ("RekognitionService.CreateCollection", '{"CollectionId": null}', "ValidationException"),
    ("RekognitionService.CreateCollection", '{"CollectionId": 42}', "SerializationException"),
    ("RekognitionService.CreateCollection", '{"CollectionId": true}', "SerializationException"),
    ("RekognitionService.IndexFaces", '{"CollectionId": "c", "Image": {"Bytes": "aGk="}, "DetectionAttributes": "ALL"}',
     "SerializationException"),
    ("RekognitionService.SearchFaces", '{"CollectionId": "c", "FaceId": "x", "FaceMatchThreshold": NaN}',
     "SerializationException"),
    ("RekognitionService.DetectFaces", '{"Image": {"Bytes": "aGk=", "S3Object": {"Bucket": "bkt", "Name": "k"}}}',
     "InvalidParameterException"),
    ("RekognitionService.DetectLabels", "{}", "UnknownOperationException"),
]  # fmt: skip


@pytest.mark.parametrize(("target", "body", "exception"), HOSTILE)
def test_a_hostile_request_gets_rekognitions_400(search: ModuleType, target: str, body: str, exception: str) -> None:
    status, payload = invoke(search, target, body)
    assert (status, json.loads(payload)["__type"]) == (400, exception)
    if target == "RekognitionService.CreateCollection":
        listed = json.loads(invoke(search, "RekognitionService.ListCollections", "{}")[1])["CollectionIds"]
        assert not {"None", "42", "True", "true", "null"} & set(listed)


def test_an_image_over_5_mb_is_too_large(search: ModuleType) -> None:
    """Bytes that decode to more than 5 MB: ImageTooLargeException (such a body exceeds a Function URL's 6 MB
    request limit on AWS, so it is sent to the handler directly here)."""
    image = base64.b64encode(b"\xff\xd8\xff" + bytes(5 * 1024 * 1024)).decode()
    status, payload = invoke(search, "RekognitionService.DetectFaces", json.dumps({"Image": {"Bytes": image}}))
    assert (status, json.loads(payload)["__type"]) == (400, "ImageTooLargeException")
