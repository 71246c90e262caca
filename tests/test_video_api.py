"""Rekognition Video's stored-video face operations through boto3's own rekognition client against the local
runtime: StartFaceDetection/GetFaceDetection, StartFaceSearch/GetFaceSearch, paging and sorting, idempotency,
the SNS completion message, the audit entry, erasure of a person's matches, bad videos, a worker killed
mid-job, and an upload under videos/ (sample videos by Intel Corporation, CC BY 4.0)."""

from __future__ import annotations

import io
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from botocore.exceptions import ClientError
from lambda_helpers import rekognition_with_consent
from video_samples import ONE_PERSON, SIGNING, TWO_PEOPLE, as_mp4

from candor.adapters.aws import DynamoAuditStore
from candor.video.jobs import upload_job_id
from candor_local.cli.client import client_for
from candor_local.emulator.runtime import LocalEnvironment

pytestmark = pytest.mark.integration

CONSENT = "consent-form-video-tests"
ROLE_ARN = "arn:aws:iam::123456789012:role/CandorVideoNotifications"


@pytest.fixture(scope="module")
def env(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    with LocalEnvironment.start(
        stack_name="candor-video",
        model_dir=model_dir,
        log_dir=tmp_path_factory.mktemp("logs"),
        # Two-second segments: the test videos (2-7 s) are split, so persons are merged across segment borders.
        parameter_overrides={"VideoSegmentSeconds": "2"},
    ) as environment:
        yield environment


@pytest.fixture(scope="module")
def rekognition(env: LocalEnvironment) -> Any:
    return rekognition_with_consent(env, CONSENT)


@pytest.fixture(scope="module")
def videos(env: LocalEnvironment, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Keys in the upload bucket, outside videos/ (Start calls name them)."""
    folder = tmp_path_factory.mktemp("videos")
    s3 = env.client("s3")
    bucket = env.resources["UploadBucket"]
    files = {
        "two": as_mp4(TWO_PEOPLE, folder / "two.mp4", plays=3),
        "one": as_mp4(ONE_PERSON, folder / "one.mp4", plays=1),
    }
    (folder / "notes.mp4").write_bytes(b"meeting notes, not a video")
    files["text"] = folder / "notes.mp4"
    keys = {}
    for name, path in files.items():
        keys[name] = f"media/{uuid.uuid4().hex}/{path.name}"
        s3.upload_file(str(path), bucket, keys[name])
    return keys


@pytest.fixture(scope="module")
def staff(env: LocalEnvironment, rekognition: Any) -> str:
    """A collection with the woman of the one-person clip enrolled from one of its frames."""
    collection = f"staff-{uuid.uuid4().hex[:8]}"
    rekognition.create_collection(CollectionId=collection)
    with av.open(str(ONE_PERSON)) as source:
        frame = next(source.decode(video=0)).to_image()
    buffer = io.BytesIO()
    frame.save(buffer, format="JPEG", quality=95)
    indexed = rekognition.index_faces(
        CollectionId=collection, Image={"Bytes": buffer.getvalue()}, ExternalImageId="presenter", MaxFaces=1
    )
    assert len(indexed["FaceRecords"]) == 1
    return collection


def _video(env: LocalEnvironment, key: str) -> dict[str, Any]:
    return {"S3Object": {"Bucket": env.resources["UploadBucket"], "Name": key}}


def _wait(get: Any, job_id: str, timeout_s: float = 180.0, **kwargs: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response: dict[str, Any] = get(JobId=job_id, **kwargs)
        if response["JobStatus"] != "IN_PROGRESS":
            return response
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still IN_PROGRESS after {timeout_s:.0f} s")


def _all_pages(get: Any, job_id: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    token = None
    while True:
        response = get(JobId=job_id, **kwargs, **({"NextToken": token} if token else {}))
        entries.extend(response[key])
        token = response.get("NextToken")
        if not token:
            return entries


def test_face_detection_finds_two_people_in_a_video(
    env: LocalEnvironment, rekognition: Any, videos: dict[str, str]
) -> None:
    job_id = rekognition.start_face_detection(Video=_video(env, videos["two"]))["JobId"]
    done = _wait(rekognition.get_face_detection, job_id)
    assert done["JobStatus"] == "SUCCEEDED", done.get("StatusMessage")
    assert done["VideoMetadata"]["Codec"] == "h264" and done["VideoMetadata"]["FrameWidth"] == 480
    assert done["VideoMetadata"]["DurationMillis"] == 6720
    faces = done["Faces"]
    timestamps = [face["Timestamp"] for face in faces]
    assert timestamps == sorted(timestamps)
    # Two faces in nearly every 200 ms sample of the 6.7 s video.
    assert len(set(timestamps)) >= 30 and len(faces) >= 60
    box = faces[0]["Face"]["BoundingBox"]
    assert 0 < box["Width"] < 1 and 0 <= box["Left"] < 1 and faces[0]["Face"]["Confidence"] > 80
    # Paged: the pages hold every face once, in the same order.
    assert _all_pages(rekognition.get_face_detection, job_id, "Faces", MaxResults=25) == faces


def test_face_search_indexes_persons_matches_the_enrolled_one_and_audits_once(
    env: LocalEnvironment, rekognition: Any, videos: dict[str, str], staff: str
) -> None:
    job_id = rekognition.start_face_search(
        Video=_video(env, videos["one"]), CollectionId=staff, FaceMatchThreshold=90, JobTag="lobby-camera"
    )["JobId"]
    done = _wait(rekognition.get_face_search, job_id)
    assert done["JobStatus"] == "SUCCEEDED", done.get("StatusMessage")
    assert done["JobTag"] == "lobby-camera" and done["JobId"] == job_id
    persons = done["Persons"]
    assert {p["Person"]["Index"] for p in persons} == {0}
    matched = [p for p in persons if p["FaceMatches"]]
    assert len(matched) >= len(persons) * 0.6, "she is matched in most samples"
    assert {m["Face"]["ExternalImageId"] for p in matched for m in p["FaceMatches"]} == {"presenter"}
    assert all(m["Similarity"] >= 90 for p in matched for m in p["FaceMatches"])

    audit = DynamoAuditStore(
        env.resources["AuditTable"], env.session.resource("dynamodb", endpoint_url=env.endpoint_url)
    )
    searches = [r.fields for r in audit.entries(staff) if r.fields.get("operation") == "StartFaceSearch"]
    assert len(searches) == 1, "one audit entry per job"
    (entry,) = searches
    assert entry["outcome"] == "allowed" and job_id in entry["searched"]
    assert entry["faces_searched"] == 1 and entry["faces_matched"] == 1 and entry["threshold"] == 90


def test_a_person_with_no_match_appears_with_no_matches_and_persons_sort_by_index(
    env: LocalEnvironment, rekognition: Any, videos: dict[str, str], staff: str
) -> None:
    job_id = rekognition.start_face_search(Video=_video(env, videos["two"]), CollectionId=staff)["JobId"]
    done = _wait(rekognition.get_face_search, job_id)
    assert done["JobStatus"] == "SUCCEEDED", done.get("StatusMessage")
    by_time = done["Persons"]
    assert {p["Person"]["Index"] for p in by_time} == {0, 1}, "two people, one Index each across four segments"
    # The presenter of the one-person clip is one of the two; the man beside her is not enrolled.
    named = {p["Person"]["Index"] for p in by_time if p["FaceMatches"]}
    assert len(named) == 1, "one of the two is matched, the other appears with no matches"
    (stranger,) = {0, 1} - named
    assert all(p["FaceMatches"] == [] for p in by_time if p["Person"]["Index"] == stranger)
    by_index = _all_pages(rekognition.get_face_search, job_id, "Persons", SortBy="INDEX", MaxResults=7)
    indexes = [p["Person"]["Index"] for p in by_index]
    assert indexes == sorted(indexes) and len(by_index) == len(by_time)
    with pytest.raises(ClientError) as bad_token:
        rekognition.get_face_search(JobId=job_id, NextToken="not-a-token")
    assert bad_token.value.response["Error"]["Code"] == "InvalidPaginationTokenException"
    with pytest.raises(ClientError) as other_sort:
        first = rekognition.get_face_search(JobId=job_id, MaxResults=5, SortBy="INDEX")
        rekognition.get_face_search(JobId=job_id, NextToken=first["NextToken"], SortBy="TIMESTAMP")
    assert other_sort.value.response["Error"]["Code"] == "InvalidPaginationTokenException"


def test_client_request_tokens_and_request_errors(
    env: LocalEnvironment, rekognition: Any, videos: dict[str, str]
) -> None:
    token = uuid.uuid4().hex
    first = rekognition.start_face_detection(Video=_video(env, videos["one"]), ClientRequestToken=token)["JobId"]
    again = rekognition.start_face_detection(Video=_video(env, videos["one"]), ClientRequestToken=token)["JobId"]
    assert again == first
    with pytest.raises(ClientError) as mismatch:
        rekognition.start_face_detection(Video=_video(env, videos["two"]), ClientRequestToken=token)
    assert mismatch.value.response["Error"]["Code"] == "IdempotentParameterMismatchException"
    with pytest.raises(ClientError) as unknown:
        rekognition.get_face_detection(JobId="0" * 32)
    assert unknown.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as wrong_kind:
        rekognition.get_face_search(JobId=first)
    assert wrong_kind.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as missing:
        rekognition.start_face_detection(Video=_video(env, "media/no-such-video.mp4"))
    assert missing.value.response["Error"]["Code"] == "InvalidS3ObjectException"
    elsewhere = {"S3Object": {"Bucket": env.resources["IndexBucket"], "Name": videos["one"]}}
    with pytest.raises(ClientError) as other_bucket:
        rekognition.start_face_detection(Video=elsewhere)
    assert other_bucket.value.response["Error"]["Code"] == "InvalidS3ObjectException"
    assert env.resources["UploadBucket"] in other_bucket.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as bad_arn:
        rekognition.start_face_detection(
            Video=_video(env, videos["one"]), NotificationChannel={"SNSTopicArn": "topic", "RoleArn": ROLE_ARN}
        )
    assert bad_arn.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as no_collection:
        rekognition.start_face_search(Video=_video(env, videos["one"]), CollectionId="nobody-here")
    assert no_collection.value.response["Error"]["Code"] == "ResourceNotFoundException"


def _subscribed_queue(env: LocalEnvironment) -> tuple[str, str]:
    sns, sqs = env.client("sns"), env.client("sqs")
    topic = sns.create_topic(Name=f"AmazonRekognition-{uuid.uuid4().hex[:8]}")["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"video-done-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
    return topic, queue_url


def _completion(env: LocalEnvironment, queue_url: str) -> dict[str, Any]:
    sqs = env.client("sqs")
    for _ in range(20):
        messages = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1).get("Messages", [])
        if messages:
            body: dict[str, Any] = json.loads(messages[0]["Body"])
            return body
    raise AssertionError("no completion message on the topic's queue")


def test_the_completion_message_goes_to_the_topic_and_a_bad_video_fails_with_its_reason(
    env: LocalEnvironment, rekognition: Any, videos: dict[str, str]
) -> None:
    topic, queue_url = _subscribed_queue(env)
    channel = {"SNSTopicArn": topic, "RoleArn": ROLE_ARN}
    good = rekognition.start_face_detection(
        Video=_video(env, videos["one"]), NotificationChannel=channel, JobTag="good"
    )["JobId"]
    message = _completion(env, queue_url)
    assert message["JobId"] == good and message["Status"] == "SUCCEEDED"
    assert message["API"] == "StartFaceDetection" and message["JobTag"] == "good"
    assert message["Video"] == {"S3ObjectName": videos["one"], "S3Bucket": env.resources["UploadBucket"]}
    assert isinstance(message["Timestamp"], int)

    bad = rekognition.start_face_detection(Video=_video(env, videos["text"]), NotificationChannel=channel)["JobId"]
    failed = _wait(rekognition.get_face_detection, bad)
    assert failed["JobStatus"] == "FAILED" and "not a video" in failed["StatusMessage"]
    assert _completion(env, queue_url)["Status"] == "FAILED"
    assert (
        env.client("sqs").get_queue_attributes(
            QueueUrl=env.resources["VideoJobDeadLetterQueue"], AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]["ApproximateNumberOfMessages"]
        == "0"
    ), "a bad video is not retried"


def _blank_video(path: Path, codec: str, size: tuple[int, int], times: list[int], **stream: Any) -> Path:
    """A video of black frames at `times` (in the stream's time base), written with PyAV."""
    width, height = size
    pixel_format = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    with av.open(str(path), mode="w") as container:
        output = container.add_stream(codec, rate=stream.get("rate", 25))
        output.width, output.height, output.pix_fmt = width, height, pixel_format
        if "time_base" in stream:
            output.time_base = output.codec_context.time_base = stream["time_base"]
        for pts in times:
            frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")
            frame = frame.reformat(format=pixel_format)
            frame.pts = pts
            container.mux(output.encode(frame))
        container.mux(output.encode())
    return path


@pytest.fixture(scope="module")
def bad_videos(env: LocalEnvironment, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Keys of videos every job must refuse: truncated, an unsupported codec, frames too big, too long."""
    folder = tmp_path_factory.mktemp("bad-videos")
    signing = SIGNING.read_bytes()
    (folder / "cut.mkv").write_bytes(signing[: len(signing) // 2])
    files = [
        folder / "cut.mkv",
        _blank_video(folder / "motion-jpeg.mkv", "mjpeg", (64, 64), [0, 1, 2]),
        _blank_video(folder / "huge.mp4", "libx264", (4096, 2304), [0]),
        # Two frames seven hours apart: a video of 7 h, past the 6 h limit, in a few kilobytes.
        _blank_video(folder / "long.mkv", "libx264", (64, 64), [0, 7 * 3600], rate=None, time_base=Fraction(1, 1)),
    ]
    keys = {}
    for path in files:
        keys[path.stem] = f"media/{uuid.uuid4().hex}/{path.name}"
        env.client("s3").upload_file(str(path), env.resources["UploadBucket"], keys[path.stem])
    return keys


def test_every_bad_video_fails_its_job_with_the_reason_and_other_jobs_are_untouched(
    env: LocalEnvironment, rekognition: Any, videos: dict[str, str], bad_videos: dict[str, str]
) -> None:
    reasons = {
        "cut": "truncated",
        "motion-jpeg": "codec mjpeg is not supported",
        "huge": "4096x2304; the limit is 8,294,400 pixels",
        "long": "lasts 25200.0 s; the limit is 21600.0 s",
    }
    bad = {name: rekognition.start_face_detection(Video=_video(env, key))["JobId"] for name, key in bad_videos.items()}
    good = rekognition.start_face_detection(Video=_video(env, videos["one"]))["JobId"]
    for name, job_id in bad.items():
        failed = _wait(rekognition.get_face_detection, job_id)
        assert failed["JobStatus"] == "FAILED", name
        assert reasons[name] in failed["StatusMessage"], (name, failed["StatusMessage"])
        assert "Faces" not in failed
    assert _wait(rekognition.get_face_detection, good)["JobStatus"] == "SUCCEEDED"

    empty = f"media/{uuid.uuid4().hex}/empty.mp4"
    env.client("s3").put_object(Bucket=env.resources["UploadBucket"], Key=empty, Body=b"")
    with pytest.raises(ClientError) as refused:
        rekognition.start_face_detection(Video=_video(env, empty))
    assert refused.value.response["Error"]["Code"] == "InvalidParameterException"
    assert "empty" in refused.value.response["Error"]["Message"]
    queues = ("VideoJobDeadLetterQueue", "VideoSegmentDeadLetterQueue")
    for queue in queues:
        attributes = env.client("sqs").get_queue_attributes(
            QueueUrl=env.resources[queue], AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        assert attributes["ApproximateNumberOfMessages"] == "0", f"a bad video is not retried into {queue}"


def test_erasure_removes_the_persons_matches_from_stored_results(
    env: LocalEnvironment, rekognition: Any, videos: dict[str, str]
) -> None:
    collection = f"erase-{uuid.uuid4().hex[:8]}"
    rekognition.create_collection(CollectionId=collection)
    with av.open(str(ONE_PERSON)) as source:
        frame = next(source.decode(video=0)).to_image()
    buffer = io.BytesIO()
    frame.save(buffer, format="JPEG", quality=95)
    rekognition.index_faces(CollectionId=collection, Image={"Bytes": buffer.getvalue()}, ExternalImageId="visitor")
    job_id = rekognition.start_face_search(Video=_video(env, videos["one"]), CollectionId=collection)["JobId"]
    before = _wait(rekognition.get_face_search, job_id)
    assert any(p["FaceMatches"] for p in before["Persons"])

    erased = client_for(env).call("CandorService.ErasePerson", {"CollectionId": collection, "PersonId": "visitor"})
    assert erased["VideoMatchesRemoved"] == sum(len(p["FaceMatches"]) for p in before["Persons"])
    after = rekognition.get_face_search(JobId=job_id)
    assert all(p["FaceMatches"] == [] for p in after["Persons"])
    assert len(after["Persons"]) == len(before["Persons"]), "the person is still seen, no longer named"


def test_an_upload_under_videos_starts_a_job_its_job_id_names(
    env: LocalEnvironment, rekognition: Any, tmp_path: Path
) -> None:
    path = as_mp4(ONE_PERSON, tmp_path / "upload.mp4")
    bucket, key = env.resources["UploadBucket"], f"videos/{uuid.uuid4().hex}/upload.mp4"
    env.client("s3").upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"candor-job-tag": "door"}})
    job_id = upload_job_id(bucket, key)
    deadline = time.monotonic() + 60
    while True:
        try:
            done = _wait(rekognition.get_face_detection, job_id)
            break
        except ClientError as error:
            assert error.response["Error"]["Code"] == "ResourceNotFoundException"
            assert time.monotonic() < deadline, "the upload never became a job"
            time.sleep(0.5)
    assert done["JobStatus"] == "SUCCEEDED" and done["JobTag"] == "door" and done["Faces"]


def test_a_worker_killed_mid_job_is_replaced_and_the_job_ends_the_same(
    env: LocalEnvironment, rekognition: Any, videos: dict[str, str]
) -> None:
    reference = _wait(
        rekognition.get_face_detection, rekognition.start_face_detection(Video=_video(env, videos["two"]))["JobId"]
    )
    sqs = env.client("sqs")
    # A killed instance's message comes back after the queue's visibility timeout: a short one here.
    sqs.set_queue_attributes(QueueUrl=env.resources["VideoSegmentQueue"], Attributes={"VisibilityTimeout": "8"})
    time.sleep(1.5)
    job_id = rekognition.start_face_detection(Video=_video(env, videos["two"]))["JobId"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        progress = rekognition.get_face_detection(JobId=job_id).get("Progress")
        if progress:
            break
        time.sleep(0.1)
    for pid in env.worker_pids("VideoFunction"):
        if pid:
            os.kill(pid, signal.SIGKILL)
    done = _wait(rekognition.get_face_detection, job_id, timeout_s=240)
    assert done["JobStatus"] == "SUCCEEDED", done.get("StatusMessage")
    assert [f["Timestamp"] for f in done["Faces"]] == [f["Timestamp"] for f in reference["Faces"]]
    assert len(done["Faces"]) == len(reference["Faces"])
