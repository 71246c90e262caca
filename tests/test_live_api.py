"""Stream processors through boto3's own rekognition and kinesis clients against the local runtime: frames of
a real clip (sample video by Intel Corporation, CC BY 4.0) put on LiveFrameStream as a camera gateway would,
LiveFunction reading them through its Kinesis event source, and Rekognition's records read back from the
processor's output stream; then the same with LiveFunction killed mid-feed."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lambda_helpers import rekognition_with_consent
from video_samples import ONE_PERSON, TWO_PEOPLE, jpeg_frames

from candor.adapters.aws import DynamoAuditStore
from candor.live.processors import frame_record
from candor_local.emulator.runtime import LocalEnvironment

pytestmark = pytest.mark.integration

CONSENT = "consent-form-live-api-tests"
ROLE_ARN = "arn:aws:iam::123456789012:role/CandorStreamProcessor"


@pytest.fixture(scope="module")
def env(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    with LocalEnvironment.start(
        stack_name="candor-live", model_dir=model_dir, log_dir=tmp_path_factory.mktemp("logs")
    ) as environment:
        yield environment


@pytest.fixture(scope="module")
def rekognition(env: LocalEnvironment) -> Any:
    return rekognition_with_consent(env, CONSENT)


@pytest.fixture(scope="module")
def staff(rekognition: Any) -> str:
    collection = f"staff-{uuid.uuid4().hex[:8]}"
    rekognition.create_collection(CollectionId=collection)
    first = jpeg_frames(ONE_PERSON)[0]
    indexed = rekognition.index_faces(
        CollectionId=collection, Image={"Bytes": first}, ExternalImageId="presenter", MaxFaces=1
    )
    assert len(indexed["FaceRecords"]) == 1
    return collection


def _processor(env: LocalEnvironment, rekognition: Any, collection: str) -> tuple[str, str, str]:
    """A RUNNING processor reading a new video stream: (its name, that stream's name, its output stream's name)."""
    kinesis, name = env.client("kinesis"), f"cam-{uuid.uuid4().hex[:8]}"
    output = f"{name}-results"
    kinesis.create_stream(StreamName=output, ShardCount=1)
    output_arn = kinesis.describe_stream(StreamName=output)["StreamDescription"]["StreamARN"]
    rekognition.create_stream_processor(
        Name=name,
        Input={"KinesisVideoStream": {"Arn": f"arn:aws:kinesisvideo:{env.region}:123456789012:stream/{name}/1"}},
        Output={"KinesisDataStream": {"Arn": output_arn}},
        RoleArn=ROLE_ARN,
        Settings={"FaceSearch": {"CollectionId": collection, "FaceMatchThreshold": 80}},
    )
    rekognition.start_stream_processor(Name=name)
    return name, name, output


def _put(env: LocalEnvironment, stream: str, images: list[bytes], fps: float = 5.0) -> None:
    """The frames put as a camera gateway puts them, at `fps`, each with its capture time."""
    kinesis = env.client("kinesis")
    for image in images:
        key, data = frame_record(stream, time.time(), image)
        kinesis.put_record(StreamName=env.resources["LiveFrameStream"], PartitionKey=key, Data=data)
        time.sleep(1 / fps)


def _records(env: LocalEnvironment, output: str, count: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    import json

    kinesis = env.client("kinesis")
    shard = kinesis.list_shards(StreamName=output)["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=output, ShardId=shard, ShardIteratorType="TRIM_HORIZON")[
        "ShardIterator"
    ]
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(found) < count and time.monotonic() < deadline:
        response = kinesis.get_records(ShardIterator=iterator)
        found += [json.loads(record["Data"]) for record in response["Records"]]
        iterator = response["NextShardIterator"]
        time.sleep(0.2)
    return found


def test_a_live_feed_is_searched_as_it_arrives_and_its_run_audited(
    env: LocalEnvironment, rekognition: Any, staff: str
) -> None:
    name, stream, output = _processor(env, rekognition, staff)
    assert rekognition.describe_stream_processor(Name=name)["Status"] == "RUNNING"
    assert {"Name": name, "Status": "RUNNING"} in rekognition.list_stream_processors()["StreamProcessors"]
    images = jpeg_frames(ONE_PERSON, every=5)
    _put(env, stream, images)
    records = _records(env, output, len(images))
    assert len(records) == len(images)
    produced = [r["InputInformation"]["KinesisVideo"]["ProducerTimestamp"] for r in records]
    assert produced == sorted(produced), "in the order they were captured"
    names = {m["Face"]["ExternalImageId"] for r in records for f in r["FaceSearchResponse"] for m in f["MatchedFaces"]}
    assert names == {"presenter"}
    assert len({f["Person"]["Index"] for r in records for f in r["FaceSearchResponse"]}) == 1

    rekognition.stop_stream_processor(Name=name)
    assert rekognition.describe_stream_processor(Name=name)["Status"] == "STOPPED"
    audit = DynamoAuditStore(
        env.resources["AuditTable"], env.session.resource("dynamodb", endpoint_url=env.endpoint_url)
    )
    runs = [r.fields for r in audit.entries(staff) if r.fields.get("operation") == "StartStreamProcessor"]
    assert len([r for r in runs if name in (r.get("searched") or "")]) == 1, "one audit entry per run"
    rekognition.delete_stream_processor(Name=name)


def test_a_killed_function_is_replaced_and_the_feed_goes_on_with_the_same_persons(
    env: LocalEnvironment, rekognition: Any, staff: str
) -> None:
    name, stream, output = _processor(env, rekognition, staff)
    images = jpeg_frames(TWO_PEOPLE, every=5)
    half = len(images) // 2
    _put(env, stream, images[:half])
    assert len(_records(env, output, half)) == half
    (pid,) = [p for p in env.worker_pids("LiveFunction") if p]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not [p for p in env.worker_pids("LiveFunction") if p and p != pid]:
        assert time.monotonic() < deadline, "LiveFunction was not replaced"
        time.sleep(0.2)
    _put(env, stream, images[half:])
    records = _records(env, output, len(images), timeout_s=120)
    # Frames captured while the new instance loads its models arrive late: dropped and counted, never lost.
    dropped = sum(r.get("CandorFrame", {}).get("DroppedFrames", 0) for r in records)
    assert len(records) + dropped == len(images)
    persons = {f["Person"]["Index"] for r in records for f in r["FaceSearchResponse"]}
    assert len(persons) == 2, f"the same two people before and after the restart, not {sorted(persons)}"
    rekognition.stop_stream_processor(Name=name)
    rekognition.delete_stream_processor(Name=name)


def test_rekognitions_states_and_errors_through_boto3(env: LocalEnvironment, rekognition: Any, staff: str) -> None:
    name, _, _ = _processor(env, rekognition, staff)
    for call, request in (
        (rekognition.start_stream_processor, {"Name": name}),
        (rekognition.delete_stream_processor, {"Name": name}),
        (rekognition.update_stream_processor, {"Name": name, "DataSharingPreferenceForUpdate": {"OptIn": True}}),
    ):
        with pytest.raises(rekognition.exceptions.ResourceInUseException):
            call(**request)
    rekognition.stop_stream_processor(Name=name)
    with pytest.raises(rekognition.exceptions.ResourceInUseException):
        rekognition.stop_stream_processor(Name=name)
    rekognition.update_stream_processor(Name=name, DataSharingPreferenceForUpdate={"OptIn": True})
    assert rekognition.describe_stream_processor(Name=name)["DataSharingPreference"] == {"OptIn": True}
    restarted = rekognition.start_stream_processor(Name=name)["SessionId"]
    assert restarted and rekognition.describe_stream_processor(Name=name)["Status"] == "RUNNING"
    rekognition.stop_stream_processor(Name=name)
    rekognition.delete_stream_processor(Name=name)
    with pytest.raises(rekognition.exceptions.ResourceNotFoundException):
        rekognition.describe_stream_processor(Name=name)
    with pytest.raises(rekognition.exceptions.InvalidParameterException):
        selector = {"KVSStreamStartSelector": {"ProducerTimestamp": 1}}
        rekognition.start_stream_processor(Name=name, StartSelector=selector)


def test_bad_and_late_frames_are_reported_and_the_stream_goes_on(
    env: LocalEnvironment, rekognition: Any, staff: str
) -> None:
    name, stream, output = _processor(env, rekognition, staff)
    kinesis, frames_stream = env.client("kinesis"), env.resources["LiveFrameStream"]
    good = jpeg_frames(ONE_PERSON)[0]
    now = time.time()
    sent = [
        frame_record(stream, now - 20, good),  # a backlog: captured 20 s ago, too late to be worth analysing
        frame_record(stream, now - 19.8, good),
        frame_record(stream, now, b"GIF89a but not really"),
        frame_record(stream, now + 0.01, b""),
        frame_record(stream, now + 0.02, os.urandom(710 * 1024)),  # past LIVE_MAX_FRAME_BYTES
        (stream, good),  # the bare bytes of a JPEG are a frame too
    ]
    for key, data in sent:
        kinesis.put_record(StreamName=frames_stream, PartitionKey=key, Data=data)
    records = _records(env, output, 4)
    assert len(records) == 4
    errors = [r.get("CandorFrame", {}).get("Error", {}).get("Code") for r in records]
    assert errors == ["InvalidImageFormat", "InvalidImageFormat", "ImageTooLarge", None]
    assert records[0]["CandorFrame"]["DroppedFrames"] == 2
    assert "empty" in records[1]["CandorFrame"]["Error"]["Message"]
    assert records[3]["FaceSearchResponse"][0]["MatchedFaces"][0]["Face"]["ExternalImageId"] == "presenter"
    assert rekognition.describe_stream_processor(Name=name)["Status"] == "RUNNING", "bad frames stop nothing"
    rekognition.stop_stream_processor(Name=name)
    rekognition.delete_stream_processor(Name=name)
