"""Stream processors through the handlers, on the template's resources in moto: the face API's
CreateStreamProcessor..DeleteStreamProcessor (SearchFunction's handler) and LiveFunction's handler given
Kinesis events of real frames (sample video by Intel Corporation, CC BY 4.0), reading what it wrote on the
processor's output stream. The state machine, the rules (purpose, floor, quotas, one audit entry per run),
frames in order, late frames dropped and reported, bad frames reported while the stream goes on, and the
tracker carried over a restart of the function."""

from __future__ import annotations

import base64
import copy
import importlib.util
import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import numpy as np
import pytest
from lambda_helpers import lambda_context
from moto import mock_aws
from PIL import Image
from video_samples import ONE_PERSON, TWO_PEOPLE, jpeg_frames

from candor.adapters.aws import DynamoAuditStore
from candor.core.faces import BoundingBox
from candor.live.processors import LiveSession, frame_record
from candor.video.tracking import FaceTracker
from candor_local.emulator.moto_server import EMULATOR_CREDENTIALS
from candor_local.emulator.stack import Endpoint, deploy_stack
from candor_local.emulator.template import load_template

ROOT = Path(__file__).resolve().parents[1]
SEARCH, LIVE = ROOT / "services" / "search", ROOT / "services" / "live"
EVENT = json.loads((ROOT / "events" / "search-create-collection.json").read_text())
REGION, ACCOUNT = "us-east-1", "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/CandorStreamProcessor"
CONSENT = "consent-form-live-tests"


def _video_arn(stream: str) -> str:
    return f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:stream/{stream}/1700000000000"


def _import(path: Path, name: str) -> ModuleType:
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))


class Stack:
    """The template in moto, with SearchFunction's and LiveFunction's handlers as Lambda imports them."""

    def __init__(self, env: pytest.MonkeyPatch, model_dir: Path) -> None:
        template = load_template(ROOT / "template.yaml", None, REGION)
        self.deployed = deploy_stack(template, "candor", Endpoint(session=boto3.session.Session()))
        s3 = boto3.client("s3")
        for bucket in s3.list_buckets()["Buckets"]:  # moto's in-process mock is plain HTTP: no TLS-only policy
            s3.delete_bucket_policy(Bucket=bucket["Name"])
        self.env, self.template, self.model_dir = env, template, model_dir
        self.search = self.handler("SearchFunction", SEARCH / "app.py", "candor_live_test_search")
        self.live = self.handler("LiveFunction", LIVE / "app.py", "candor_live_test_live")
        self.kinesis = boto3.client("kinesis")
        self.restarts = 0

    def handler(self, function: str, path: Path, name: str) -> ModuleType:
        for key, value in self.deployed.function_environment(self.template.functions[function]).items():
            self.env.setenv(key, value)
        self.env.setenv("MODEL_DIR", str(self.model_dir))
        return _import(path, name)

    def restart_live(self) -> None:
        """A new LiveFunction instance: everything in memory is gone, the tables are not."""
        self.restarts += 1
        self.live = self.handler("LiveFunction", LIVE / "app.py", f"candor_live_test_live_{self.restarts}")

    def call(
        self, operation: str, request: dict[str, Any], service: str = "RekognitionService", **headers: str
    ) -> tuple[int, dict[str, Any]]:
        """One Function URL request to SearchFunction's handler; X_Candor_Consent is X-Candor-Consent."""
        event = copy.deepcopy(EVENT)
        named = {key.lower().replace("_", "-"): value for key, value in headers.items()}
        event["headers"].update({"x-amz-target": f"{service}.{operation}", **named})
        event["body"] = json.dumps(request)
        response = self.search.lambda_handler(event, lambda_context("SearchFunction"))
        return response["statusCode"], json.loads(response["body"])

    def ok(self, operation: str, request: dict[str, Any], **headers: str) -> dict[str, Any]:
        status, body = self.call(operation, request, **headers)
        assert status == 200, (operation, body)
        return body

    def output_stream(self, name: str) -> str:
        self.kinesis.create_stream(StreamName=name, ShardCount=1)
        return str(self.kinesis.describe_stream(StreamName=name)["StreamDescription"]["StreamARN"])

    def feed(self, stream: str, frames: list[tuple[float, bytes]], first_sequence: int = 0) -> dict[str, int]:
        """LiveFunction's handler given one Kinesis batch of these (capture time, image) frames."""
        records = []
        for n, (captured, image) in enumerate(frames):
            key, data = frame_record(stream, captured, image)
            records.append(
                {
                    "kinesis": {
                        "kinesisSchemaVersion": "1.0",
                        "partitionKey": key,
                        "sequenceNumber": str(49_000_000 + first_sequence + n),
                        "data": base64.b64encode(data).decode(),
                        "approximateArrivalTimestamp": time.time(),
                    },
                    "eventSource": "aws:kinesis",
                    "eventName": "aws:kinesis:record",
                }
            )
        counts: dict[str, int] = self.live.lambda_handler({"Records": records}, lambda_context("LiveFunction"))
        return counts

    def outputs(self, stream_name: str) -> list[dict[str, Any]]:
        shard = self.kinesis.list_shards(StreamName=stream_name)["Shards"][0]["ShardId"]
        iterator = self.kinesis.get_shard_iterator(
            StreamName=stream_name, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        return [json.loads(r["Data"]) for r in self.kinesis.get_records(ShardIterator=iterator)["Records"]]


@pytest.fixture(scope="module")
def stack(model_dir: Path) -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in EMULATOR_CREDENTIALS.items():
            env.setenv(name, value)
        env.setenv("AWS_DEFAULT_REGION", REGION)
        env.delenv("AWS_ENDPOINT_URL", raising=False)
        with mock_aws():
            yield Stack(env, model_dir)


@pytest.fixture(scope="module")
def staff(stack: Stack) -> str:
    """A collection with the woman of the one-person clip enrolled from its first frame."""
    stack.ok("CreateCollection", {"CollectionId": "staff"})
    first = base64.b64encode(jpeg_frames(ONE_PERSON)[0]).decode()
    indexed = stack.ok(
        "IndexFaces",
        {"CollectionId": "staff", "Image": {"Bytes": first}, "ExternalImageId": "presenter", "MaxFaces": 1},
        X_Candor_Consent=CONSENT,
    )
    assert len(indexed["FaceRecords"]) == 1
    return "staff"


def _processor(name: str, stream: str, output_arn: str, collection: str, **settings: Any) -> dict[str, Any]:
    return {
        "Name": name,
        "Input": {"KinesisVideoStream": {"Arn": _video_arn(stream)}},
        "Output": {"KinesisDataStream": {"Arn": output_arn}},
        "RoleArn": ROLE_ARN,
        "Settings": {"FaceSearch": {"CollectionId": collection, **settings}},
    }


def test_a_processor_goes_through_rekognitions_states(stack: Stack, staff: str) -> None:
    output = stack.output_stream("states-out")
    arn = stack.ok("CreateStreamProcessor", _processor("states", "states-cam", output, staff))["StreamProcessorArn"]
    assert arn.startswith(f"arn:aws:rekognition:{REGION}:") and arn.endswith(":streamprocessor/states")
    described = stack.ok("DescribeStreamProcessor", {"Name": "states"})
    assert described["Status"] == "STOPPED" and described["Settings"]["FaceSearch"]["CollectionId"] == staff
    assert described["Input"]["KinesisVideoStream"]["Arn"] == _video_arn("states-cam")

    status, taken = stack.call("CreateStreamProcessor", _processor("states", "other-cam", output, staff))
    assert (status, taken["__type"]) == (400, "ResourceInUseException")
    status, same_input = stack.call("CreateStreamProcessor", _processor("states-2", "states-cam", output, staff))
    assert (status, same_input["__type"]) == (400, "ResourceInUseException")
    assert "states-cam" in same_input["Message"]

    session = stack.ok("StartStreamProcessor", {"Name": "states"})["SessionId"]
    assert session and stack.ok("DescribeStreamProcessor", {"Name": "states"})["Status"] == "RUNNING"
    for operation, request in (
        ("StartStreamProcessor", {"Name": "states"}),
        ("DeleteStreamProcessor", {"Name": "states"}),
        ("UpdateStreamProcessor", {"Name": "states", "DataSharingPreferenceForUpdate": {"OptIn": True}}),
    ):
        status, busy = stack.call(operation, request)
        assert (status, busy["__type"]) == (400, "ResourceInUseException"), operation
    stack.ok("StopStreamProcessor", {"Name": "states"})
    status, stopped = stack.call("StopStreamProcessor", {"Name": "states"})
    assert (status, stopped["__type"]) == (400, "ResourceInUseException")
    stack.ok("UpdateStreamProcessor", {"Name": "states", "DataSharingPreferenceForUpdate": {"OptIn": True}})
    assert stack.ok("DescribeStreamProcessor", {"Name": "states"})["DataSharingPreference"] == {"OptIn": True}

    first = stack.ok("ListStreamProcessors", {"MaxResults": 1})
    assert first["StreamProcessors"] == [{"Name": "states", "Status": "STOPPED"}] or first.get("NextToken")
    status, bad_token = stack.call("ListStreamProcessors", {"NextToken": "bm90LW91cnM="})
    assert (status, bad_token["__type"]) == (400, "InvalidPaginationTokenException")
    stack.ok("DeleteStreamProcessor", {"Name": "states"})
    status, gone = stack.call("DescribeStreamProcessor", {"Name": "states"})
    assert (status, gone["__type"]) == (400, "ResourceNotFoundException")
    # Deleted, its input is free again.
    stack.ok("CreateStreamProcessor", _processor("states-2", "states-cam", output, staff))
    stack.ok("DeleteStreamProcessor", {"Name": "states-2"})


def test_requests_are_refused_as_rekognition_refuses_them(stack: Stack, staff: str) -> None:
    output = stack.output_stream("refused-out")
    not_video = _processor("refused", "cam", output, staff)
    not_video["Input"]["KinesisVideoStream"]["Arn"] = f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:channel/cam/1"
    assert stack.call("CreateStreamProcessor", not_video)[1]["__type"] == "InvalidParameterException"
    missing = _processor("refused", "cam", output, "nobody-here")
    assert stack.call("CreateStreamProcessor", missing)[1]["__type"] == "ResourceNotFoundException"
    below_floor = _processor("refused", "cam", output, staff, FaceMatchThreshold=10)
    assert stack.call("CreateStreamProcessor", below_floor)[1]["__type"] == "InvalidParameterException"
    undeclared = stack.call("CreateStreamProcessor", _processor("refused", "cam", output, staff),
                            X_Candor_Purpose="fraud", X_Candor_Case="CASE-1")  # fmt: skip
    assert undeclared[1]["__type"] == "AccessDeniedException"
    assert stack.call("StartStreamProcessor", {"Name": "nobody"})[1]["__type"] == "ResourceNotFoundException"


def test_frames_are_searched_in_order_and_the_run_is_audited_once(stack: Stack, staff: str) -> None:
    output = stack.output_stream("door-out")
    stack.ok("CreateStreamProcessor", _processor("door", "door-cam", output, staff, FaceMatchThreshold=80))
    stack.ok("StartStreamProcessor", {"Name": "door"})
    frames = jpeg_frames(ONE_PERSON, every=5)
    now = time.time()
    counts = stack.feed("door-cam", [(now + n * 0.2, image) for n, image in enumerate(frames)])
    assert counts["analysed"] == len(frames) and counts["dropped"] == counts["bad"] == 0

    records = stack.outputs("door-out")
    assert len(records) == len(frames)
    produced = [r["InputInformation"]["KinesisVideo"]["ProducerTimestamp"] for r in records]
    assert produced == sorted(produced) and produced[0] == pytest.approx(now)
    for record in records:
        assert record["InputInformation"]["KinesisVideo"]["StreamArn"] == _video_arn("door-cam")
        assert record["StreamProcessorInformation"]["Status"] == "RUNNING"
        (face,) = record["FaceSearchResponse"]
        assert 0 < face["DetectedFace"]["BoundingBox"]["Width"] < 1 and face["DetectedFace"]["Confidence"] > 80
        assert face["Person"]["Index"] == records[0]["FaceSearchResponse"][0]["Person"]["Index"]
    matched = [r["FaceSearchResponse"][0]["MatchedFaces"] for r in records]
    # She turns her head: a profile may fall below 80, and nobody else is ever named.
    assert sum(1 for m in matched if m) >= len(matched) - 1
    assert all(m[0]["Face"]["ExternalImageId"] == "presenter" and m[0]["Similarity"] >= 80 for m in matched if m)

    before = _audit_entries(stack, staff)
    stack.ok("StopStreamProcessor", {"Name": "door"})
    (entry,) = [e for e in _audit_entries(stack, staff) if e not in before]
    assert entry["operation"] == "StartStreamProcessor" and entry["faces_matched"] == 1
    assert f"{len(frames)} frames" in entry["searched"]
    # Stopped, its frames are read by nobody.
    assert stack.feed("door-cam", [(time.time(), frames[0])], first_sequence=100)["unread"] == 1
    assert len(stack.outputs("door-out")) == len(frames)
    stack.ok("DeleteStreamProcessor", {"Name": "door"})


def test_late_frames_are_dropped_and_reported_and_bad_frames_do_not_stop_the_stream(stack: Stack, staff: str) -> None:
    output = stack.output_stream("hall-out")
    stack.ok("CreateStreamProcessor", _processor("hall", "hall-cam", output, staff))
    stack.ok("StartStreamProcessor", {"Name": "hall"})
    image = jpeg_frames(ONE_PERSON)[0]
    now = time.time()
    counts = stack.feed(
        "hall-cam",
        [
            (now - 30, image),  # the feed fell behind: these two are too late to be worth analysing
            (now - 29.8, image),
            (now, b"not an image at all"),
            (now + 0.1, b""),
            (now + 0.2, image),
        ],
    )
    assert counts == {"analysed": 1, "dropped": 2, "bad": 2, "unread": 0}
    records = stack.outputs("hall-out")
    assert len(records) == 3
    assert records[0]["CandorFrame"] == {
        "DroppedFrames": 2,
        "Error": {"Code": "InvalidImageFormat", "Message": records[0]["CandorFrame"]["Error"]["Message"]},
    }
    assert records[0]["FaceSearchResponse"] == []
    assert records[1]["CandorFrame"]["Error"]["Code"] == "InvalidImageFormat"
    assert "empty" in records[1]["CandorFrame"]["Error"]["Message"]
    assert "CandorFrame" not in records[2] and len(records[2]["FaceSearchResponse"]) == 1
    stack.ok("StopStreamProcessor", {"Name": "hall"})
    stack.ok("DeleteStreamProcessor", {"Name": "hall"})


def test_the_tracker_survives_a_restart_and_a_redelivered_batch_is_not_redone(stack: Stack, staff: str) -> None:
    output = stack.output_stream("lobby-out")
    stack.ok("CreateStreamProcessor", _processor("lobby", "lobby-cam", output, staff))
    stack.ok("StartStreamProcessor", {"Name": "lobby"})
    frames = jpeg_frames(TWO_PEOPLE, every=5)
    now = time.time()
    timed = [(now + n * 0.2, image) for n, image in enumerate(frames)]
    half = len(timed) // 2
    stack.feed("lobby-cam", timed[:half])
    stack.restart_live()
    # The first half again (Kinesis redelivers a batch whose checkpoint was lost), then the rest.
    assert stack.feed("lobby-cam", timed[:half])["analysed"] == 0
    stack.feed("lobby-cam", timed[half:], first_sequence=half)
    records = stack.outputs("lobby-out")
    assert len(records) == len(frames)
    persons = [{face["Person"]["Index"] for face in r["FaceSearchResponse"]} for r in records]
    assert all(len(p) == 2 for p in persons)
    assert set.union(*persons) == persons[0], "the same two Person.Index values before and after the restart"
    stack.ok("StopStreamProcessor", {"Name": "lobby"})
    stack.ok("DeleteStreamProcessor", {"Name": "lobby"})


def test_a_processor_past_its_identification_quota_fails_and_names_nobody_more(stack: Stack) -> None:
    collection = "quota-staff"
    policy = {"Purposes": ["general"], "SearchesPerCallerPerMinute": 1}
    stack.search.face_api.role = "admin"  # the policy administration is AdminFunction's: the same handler
    try:
        request = {"CollectionId": collection, "Policy": policy}
        status, body = stack.call("CreateCollection", request, service="CandorService")
    finally:
        stack.search.face_api.role = "search"
    assert status == 200, body
    frames = jpeg_frames(TWO_PEOPLE)
    first = base64.b64encode(frames[0]).decode()
    stack.ok("IndexFaces", {"CollectionId": collection, "Image": {"Bytes": first}, "ExternalImageId": "pair"},
             X_Candor_Consent=CONSENT)  # fmt: skip
    output = stack.output_stream("quota-out")
    stack.ok("CreateStreamProcessor", _processor("quota", "quota-cam", output, collection, FaceMatchThreshold=80))
    stack.ok("StartStreamProcessor", {"Name": "quota"})
    stack.feed("quota-cam", [(time.time(), frames[0])])
    described = stack.ok("DescribeStreamProcessor", {"Name": "quota"})
    assert described["Status"] == "FAILED" and "refused" in described["StatusMessage"]
    (record,) = stack.outputs("quota-out")
    assert all(face["MatchedFaces"] == [] for face in record["FaceSearchResponse"])
    stack.ok("DeleteStreamProcessor", {"Name": "quota"})


def test_a_face_that_stays_put_is_searched_once_a_second_and_one_that_moves_at_once(
    stack: Stack, staff: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = stack.output_stream("desk-out")
    stack.ok("CreateStreamProcessor", _processor("desk", "desk-cam", output, staff))
    stack.ok("StartStreamProcessor", {"Name": "desk"})
    embedded: list[int] = []
    real = stack.live.live.embedder

    class CountingEmbedder:
        def embed_faces(self, pixels: Any, faces: list[Any]) -> Any:
            embedded.append(len(faces))
            return real.embed_faces(pixels, faces)

    monkeypatch.setattr(stack.live.live, "embedder", CountingEmbedder())
    frame = Image.open(io.BytesIO(jpeg_frames(ONE_PERSON)[0])).convert("RGB")
    left, right = Image.new("RGB", (frame.width * 2, frame.height)), Image.new("RGB", (frame.width * 2, frame.height))
    left.paste(frame, (0, 0))
    right.paste(frame, (frame.width, 0))
    encoded = []
    for image in (left, right):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    now = time.time()
    # 2 s of a still face at 5 frames/s, then the face is across the frame (the camera was moved).
    timed = [(now + n * 0.2, encoded[0]) for n in range(11)] + [(now + 2.2, encoded[1])]
    assert stack.feed("desk-cam", timed)["analysed"] == len(timed)

    assert embedded == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1], "searched at 0, 1 and 2 s, and when it moved"
    records = stack.outputs("desk-out")
    assert len(records) == len(timed)
    for record in records:
        (face,) = record["FaceSearchResponse"]
        assert [m["Face"]["ExternalImageId"] for m in face["MatchedFaces"]] == ["presenter"]
    similarity = [r["FaceSearchResponse"][0]["MatchedFaces"][0]["Similarity"] for r in records]
    assert similarity[1:5] == [similarity[0]] * 4, "the frames in between keep the search's match"
    assert len({r["FaceSearchResponse"][0]["Person"]["Index"] for r in records}) == 1
    stack.ok("StopStreamProcessor", {"Name": "desk"})
    stack.ok("DeleteStreamProcessor", {"Name": "desk"})


def _audit_entries(stack: Stack, collection: str) -> list[dict[str, Any]]:
    return [record.fields for record in DynamoAuditStore(stack.deployed.physical_ids["AuditTable"]).entries(collection)]


def test_faces_that_arrived_together_are_searched_again_one_a_frame_and_never_twice_the_age_apart() -> None:
    tracker = FaceTracker()
    boxes = [BoundingBox(100.0 * n, 0, 50, 50) for n in range(4)]
    session = LiveSession("run", tracker)
    tracks = tracker.update(0, [(box, np.eye(4, dtype=np.float32)[n], 0.9) for n, box in enumerate(boxes)])
    for track in tracks:
        session.searched(track, 0, [])
    continuing = session.continuing(boxes)
    assert sorted(continuing) == [0, 1, 2, 3]
    assert sorted(session.kept_searches(continuing, 800)) == [0, 1, 2, 3]  # all under a second old
    assert len(session.kept_searches(continuing, 1000)) == 3  # one searched again in this frame
    assert session.kept_searches(continuing, 2000) == {}  # two seconds: every one, whatever the order
