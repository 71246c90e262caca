"""Stored-video jobs end to end in one process (moto for DynamoDB and S3, the real models and videos): a job
is planned into segments, each segment analysed, the last one merges the persons; redelivered messages,
bad videos and erasure. The same jobs through boto3 and the local runtime: tests/test_video_api.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from video_samples import ONE_PERSON, TWO_PEOPLE, as_mp4

from candor.accountability.audit import AuditLog
from candor.accountability.rules import Accountability
from candor.adapters.aws import DynamoVideoJobRepository, S3VideoStore
from candor.adapters.memory import MemoryAuditStore, MemoryPublisher, MemoryQuotaCounter
from candor.core.errors import IdempotentParameterMismatchError, InvalidS3ObjectError
from candor.video.jobs import JobKind, JobStatus, Segment, VideoJob, VideoRef, split, upload_job_id
from candor.video_jobs import SegmentAnalyser, VideoJobs, job_from_upload, merge_segments

BUCKET, RESULTS, TABLE = "uploads", "results", "video-jobs"


@pytest.fixture(scope="module")
def two_people(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return as_mp4(TWO_PEOPLE, tmp_path_factory.mktemp("video") / "two-people.mp4", plays=3)


@pytest.fixture
def videos(moto: None, tmp_path: Path) -> VideoJobs:
    s3 = boto3.client("s3")
    for bucket in (BUCKET, RESULTS):
        s3.create_bucket(Bucket=bucket)
    boto3.client("dynamodb").create_table(
        TableName=TABLE,
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return VideoJobs(
        jobs=DynamoVideoJobRepository(TABLE),
        store=S3VideoStore(RESULTS, cache_dir=tmp_path / "cache"),
        job_queue=MemoryPublisher(),
        segment_queue=MemoryPublisher(),
        accountability=Accountability(AuditLog(MemoryAuditStore()), MemoryQuotaCounter()),
        segment_ms=2000,
    )


@pytest.fixture
def analyser(models: Any) -> SegmentAnalyser:
    detector, embedder = models
    return SegmentAnalyser(detector, embedder, min_confidence=0.8)


def _upload(path: Path, key: str) -> VideoRef:
    boto3.client("s3").upload_file(str(path), BUCKET, key)
    return VideoRef(BUCKET, key)


def _detection_job(video: VideoRef, job_id: str = "job-1") -> VideoJob:
    return VideoJob(job_id, JobKind.FACE_DETECTION, video, datetime.now(UTC).isoformat(), "tester", "general")


def _segments(videos: VideoJobs) -> list[Segment]:
    queue = videos.segment_queue
    assert isinstance(queue, MemoryPublisher)
    messages, queue.messages[:] = list(queue.messages), []
    return [Segment(m["segment"], m["start_ms"], m["end_ms"]) for m in messages]


def test_a_video_is_split_into_segments_that_cover_it_and_end_open() -> None:
    assert split(6720, 2000) == [
        Segment(0, 0, 2000),
        Segment(1, 2000, 4000),
        Segment(2, 4000, 6000),
        Segment(3, 6000, None),
    ]
    assert split(1500, 2000) == [Segment(0, 0, None)]


def test_a_short_video_is_shared_among_the_segment_workers_in_segments_of_a_second_at_least() -> None:
    assert split(4660, 10_000, workers=2) == [Segment(0, 0, 2330), Segment(1, 2330, None)]
    assert split(1700, 10_000, workers=2) == [Segment(0, 0, 1000), Segment(1, 1000, None)]
    assert split(800, 10_000, workers=2) == [Segment(0, 0, None)]
    # Long enough for every worker: segments of the configured length, as without workers.
    assert split(45_000, 10_000, workers=2) == split(45_000, 10_000)


def test_a_job_runs_segment_by_segment_and_the_last_one_finds_the_two_people(
    videos: VideoJobs, analyser: SegmentAnalyser, two_people: Path
) -> None:
    job = videos.start(_detection_job(_upload(two_people, "media/two.mp4")))
    assert job.status is JobStatus.IN_PROGRESS
    assert videos.job_queue.messages == [{"job_id": "job-1"}]  # type: ignore[union-attr]

    planned = videos.plan("job-1")
    assert planned is not None and planned.segments == 4
    assert planned.metadata == {
        "Codec": "h264",
        "DurationMillis": 6720,
        "Format": "QuickTime / MOV",
        "FrameRate": 25.0,
        "FrameWidth": 480,
        "FrameHeight": 270,
    }
    segments = _segments(videos)
    assert [s.number for s in segments] == [0, 1, 2, 3]
    # In any order, one at a time: only the worker that completes the set ends the job.
    for segment in (segments[2], segments[0], segments[3]):
        assert videos.analyse_segment("job-1", segment, analyser).status is JobStatus.IN_PROGRESS  # type: ignore[union-attr]
    done = videos.analyse_segment("job-1", segments[1], analyser)
    assert done is not None and done.status is JobStatus.SUCCEEDED

    results = videos.store.get_results("job-1")
    assert results is not None and (results.width, results.height) == (480, 270)
    persons = {face.person for face in results.faces}
    assert persons == {0, 1}, "two people in the video, one Index each across all four segments"
    timestamps = [face.timestamp_ms for face in results.faces]
    assert timestamps == sorted(timestamps) and timestamps[0] == 0 and timestamps[-1] >= 6400
    assert all(face.embedding is None for face in results.faces), "embeddings are not kept in the results"
    # The two people stand apart: each Index stays on its side of the frame for the whole video.
    for person in (0, 1):
        centres = [face.box[0] + face.box[2] / 2 for face in results.faces if face.person == person]
        assert max(centres) - min(centres) < 120
    # The segments' partial results (with embeddings) are gone.
    listed = boto3.client("s3").list_objects_v2(Bucket=RESULTS).get("Contents", [])
    assert [item["Key"] for item in listed] == ["jobs/job-1/results.json"]


def test_redelivered_messages_change_nothing(videos: VideoJobs, analyser: SegmentAnalyser) -> None:
    video = _upload(ONE_PERSON, "media/one.gif")
    videos.start(_detection_job(video, "job-2"))
    videos.plan("job-2")
    segments = _segments(videos)
    assert len(segments) == 1
    first = videos.analyse_segment("job-2", segments[0], analyser)
    assert first is not None and first.status is JobStatus.SUCCEEDED
    stored = videos.store.get_results("job-2")
    # The same segment again, and the plan again: the job is finished and stays as it was.
    assert videos.analyse_segment("job-2", segments[0], analyser) == first
    assert videos.plan("job-2") == first and _segments(videos) == []
    again = videos.store.get_results("job-2")
    assert stored is not None and again is not None and again.to_dict() == stored.to_dict()
    assert {face.person for face in stored.faces} == {0}


def test_a_client_request_token_returns_the_same_job_and_refuses_another_request(videos: VideoJobs) -> None:
    video = _upload(ONE_PERSON, "media/one.gif")
    first = videos.start(_detection_job(video, "job-a"), token="t-1", fingerprint="video one")
    again = videos.start(_detection_job(video, "job-b"), token="t-1", fingerprint="video one")
    assert again.job_id == first.job_id == "job-a"
    assert videos.job_queue.messages == [{"job_id": "job-a"}]  # type: ignore[union-attr]
    with pytest.raises(IdempotentParameterMismatchError, match="t-1"):
        videos.start(_detection_job(video, "job-c"), token="t-1", fingerprint="video two")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"plain text, not a video at all", "not a video"),
        (None, "still image"),
    ],
)
def test_a_bad_video_fails_its_job_with_the_reason(
    videos: VideoJobs, tmp_path: Path, content: bytes | None, reason: str
) -> None:
    path = tmp_path / "clip.mp4"
    if content is None:
        from PIL import Image

        Image.new("RGB", (64, 64)).save(path, format="JPEG")
    else:
        path.write_bytes(content)
    video = _upload(path, "media/clip.mp4")
    if content == b"":
        with pytest.raises(Exception, match=reason):
            videos.start(_detection_job(video, "job-bad"))
        return
    videos.start(_detection_job(video, "job-bad"))
    failed = videos.plan("job-bad")
    assert failed is not None and failed.status is JobStatus.FAILED
    assert reason in (failed.status_message or "")
    assert _segments(videos) == []


def test_a_missing_video_is_refused_at_start(videos: VideoJobs) -> None:
    with pytest.raises(InvalidS3ObjectError, match="does not exist"):
        videos.start(_detection_job(VideoRef(BUCKET, "media/none.mp4")))


def test_an_upload_names_its_job_and_its_search(videos: VideoJobs) -> None:
    video = VideoRef(BUCKET, "videos/lobby.mp4", "v1")
    job = job_from_upload(
        video,
        {"candor-collection": "staff", "candor-purpose": "security", "candor-case": "case-7", "candor-threshold": "95"},
        200,
        "2026-12-06T00:00:00+00:00",
    )
    assert job.job_id == upload_job_id(BUCKET, "videos/lobby.mp4", "v1")
    assert (job.kind, job.collection_id, job.purpose, job.case_reference, job.threshold) == (
        JobKind.FACE_SEARCH,
        "staff",
        "security",
        "case-7",
        95.0,
    )
    refused = job_from_upload(video, {"candor-threshold": "high"}, 200, "2026-12-06T00:00:00+00:00")
    assert refused.status is JobStatus.FAILED and "candor-threshold" in (refused.status_message or "")
    assert job_from_upload(video, {}, 200, "now").kind is JobKind.FACE_DETECTION


def test_erasure_removes_a_face_from_stored_results(videos: VideoJobs) -> None:
    from candor.video.jobs import FaceSample, JobResults

    def sample(t: int, face_ids: list[str]) -> FaceSample:
        matches = [{"face_id": f, "similarity": 99.0, "external_image_id": f, "photo_id": "p"} for f in face_ids]
        return FaceSample(t, (1, 1, 10, 10), 0.9, [(0, 0)] * 5, {}, {}, person=0, matches=matches)

    videos.store.put_results("job-e", JobResults(100, 100, [sample(0, ["alice", "bob"]), sample(200, ["alice"])]))
    videos.jobs.add_matches("job-e", ["alice", "bob"], 2_000_000_000)
    assert videos.erase_matches({"alice"}) == 2
    results = videos.store.get_results("job-e")
    assert results is not None and results.matched_face_ids() == {"bob"}
    assert videos.jobs.jobs_matching("alice") == [] and videos.jobs.jobs_matching("bob") == ["job-e"]


def test_segments_merge_into_persons_numbered_by_first_appearance() -> None:
    from candor.video.jobs import FaceSample, JobResults

    rng = np.random.default_rng(7)
    a, b = (v / np.linalg.norm(v) for v in rng.normal(size=(2, 128)))

    def sample(t: int, track: int, vector: np.ndarray, left: float) -> FaceSample:
        return FaceSample(t, (left, 10, 40, 40), 0.9, [(0, 0)] * 5, {}, {}, track=track, embedding=list(vector))

    # Segment 0: b appears first then a; segment 1: a continues, b returns after a gap.
    first = JobResults(480, 270, [sample(0, 0, b, 300), sample(200, 0, b, 300), sample(200, 1, a, 20)])
    second = JobResults(480, 270, [sample(2000, 0, a, 22), sample(2400, 1, b, 305)])
    merged = merge_segments([first, second])
    people = [(face.timestamp_ms, face.person) for face in merged.faces]
    assert people == [(0, 0), (200, 0), (200, 1), (2000, 1), (2400, 0)]
    assert json.loads(json.dumps(merged.to_dict()))["faces"][0]["person"] == 0
