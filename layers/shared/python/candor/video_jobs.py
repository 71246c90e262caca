"""Stored-video jobs as plain service functions: start, plan (probe and split), analyse a segment, finish.

A job is recorded IN_PROGRESS and queued. The plan step probes the video and fans its segments out over a
queue; each segment worker samples its part of the video, detects, embeds, searches and tracks, and stores its
partial results; the worker that completes the last segment merges every segment's tracks into persons (one
Person.Index each for the whole video), audits the search once with every match, stores the results, ends
the job and publishes Rekognition's completion message. Every step can run again (a redelivered message):
a finished job is left alone, a segment done is not redone, and only one worker ends a job.

Bad input (not a video, an unsupported codec, empty, truncated, too large or too long) ends the job FAILED
with the reason; anything else raises so the queue retries it, and the handler fails the job on its last
receive, so no job stays IN_PROGRESS for ever."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from candor.accountability.policy import GENERAL_PURPOSE, Caller, validate_purpose, validate_reference
from candor.accountability.rules import Accountability, Returned, SearchAuthorization
from candor.core.enrolment import META_COLLECTION
from candor.core.errors import (
    CandorError,
    InvalidParameterError,
    InvalidS3ObjectError,
    InvalidVideoError,
    ResourceNotFoundError,
    VideoTooLargeError,
)
from candor.core.faces import BoundingBox, DetectedFace
from candor.core.settings import MAX_FACES, MAX_VIDEO_BYTES, VIDEO_RESULT_DAYS, VIDEO_SEGMENT_MS
from candor.ports import FaceDetector, FaceEmbedder, JobNotifier, MessagePublisher, VideoJobRepository, VideoStore
from candor.search import CollectionIndexes, authorize_collection_search, match_faces, returned_per_person
from candor.video.frames import probe_video, sample_frames
from candor.video.jobs import (
    META_CASE,
    META_JOB_TAG,
    META_PURPOSE,
    META_THRESHOLD,
    FaceSample,
    JobKind,
    JobResults,
    JobStatus,
    Segment,
    VideoJob,
    VideoRef,
    split,
    upload_job_id,
)
from candor.video.tracking import FaceTracker, Track, TrackedFace, merge
from candor.vision.quality import assess_face

logger = logging.getLogger(__name__)

# Who the audit log names for a job an upload started (the uploader's identity is in S3's logs), as for photos.
UPLOAD_CALLER = "upload-pipeline"
# What ends a job FAILED at once: retrying cannot fix the video (or the collection it names).
JOB_ERRORS = (InvalidVideoError, VideoTooLargeError, InvalidS3ObjectError, ResourceNotFoundError)
# A job recorded this long ago and still not planned was never queued (its start crashed): a retry queues it.
STALLED_START = timedelta(minutes=5)
# Matches kept per face sample (Rekognition Video returns the best few per person and timestamp).
MAX_MATCHES_PER_FACE = 5


@dataclass
class SegmentAnalyser:
    """Samples one segment of a video and finds, tracks and (for a search) matches its faces."""

    detector: FaceDetector
    embedder: FaceEmbedder
    min_confidence: float
    indexes: CollectionIndexes | None = None

    def analyse(self, path: Any, segment: Segment, job: VideoJob) -> JobResults:
        searching = job.kind is JobKind.FACE_SEARCH
        if searching:
            if self.indexes is None or job.collection_id is None or job.threshold is None:
                raise RuntimeError("a face search segment needs the collection indexes, a collection and a threshold")
            _, index, records = self.indexes.get(job.collection_id)
        tracker = FaceTracker()
        samples: list[FaceSample] = []
        width = height = 0
        for frame in sample_frames(path, job.sample_interval_ms, segment.start_ms, segment.end_ms):
            height, width = frame.image.shape[:2]
            found = self.detector.detect(frame.image, max_faces=MAX_FACES, min_confidence=self.min_confidence)
            if not found:
                tracker.update(frame.timestamp_ms, [])
                continue
            vectors = self.embedder.embed_faces(frame.image, found)
            matched = (
                match_faces(index, records, vectors, job.threshold or 0.0, MAX_MATCHES_PER_FACE)
                if searching
                else [[] for _ in found]
            )
            tracks = tracker.update(
                frame.timestamp_ms,
                [(face.bounding_box, vector, face.confidence) for face, vector in zip(found, vectors, strict=True)],
            )
            for face, vector, track, matches in zip(found, vectors, tracks, matched, strict=True):
                samples.append(_sample(frame.image, frame.timestamp_ms, face, vector, track, matches))
        return JobResults(width, height, samples)


def _sample(
    pixels: np.ndarray, timestamp_ms: int, face: DetectedFace, vector: np.ndarray, track: int, matches: list[Any]
) -> FaceSample:
    assessed = assess_face(pixels, face)
    box = face.bounding_box
    return FaceSample(
        timestamp_ms=timestamp_ms,
        box=(box.left, box.top, box.width, box.height),
        confidence=face.confidence,
        landmarks=[(float(x), float(y)) for x, y in face.landmarks],
        pose={"Roll": assessed.pose.roll, "Yaw": assessed.pose.yaw, "Pitch": assessed.pose.pitch},
        quality={"Brightness": assessed.quality.brightness, "Sharpness": assessed.quality.sharpness},
        track=track,
        embedding=[round(float(value), 6) for value in vector],
        matches=[
            {
                "face_id": match.face_id,
                "similarity": match.similarity,
                "external_image_id": match.external_image_id,
                "photo_id": match.photo_id,
            }
            for match in matches
        ],
    )


@dataclass
class VideoJobs:
    """The jobs' tables, stores and queues, and the rules every face search of a video passes."""

    jobs: VideoJobRepository
    store: VideoStore
    job_queue: MessagePublisher | None = None
    segment_queue: MessagePublisher | None = None
    notifier: JobNotifier | None = None
    accountability: Accountability | None = None
    indexes: CollectionIndexes | None = None
    segment_ms: int = VIDEO_SEGMENT_MS
    segment_workers: int = 1  # segments analysed at once (the Segments event's MaximumConcurrency)
    result_days: int = VIDEO_RESULT_DAYS
    max_video_bytes: int = MAX_VIDEO_BYTES
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    # --- start -------------------------------------------------------------------------------------------

    def start(self, job: VideoJob, token: str | None = None, fingerprint: str | None = None) -> VideoJob:
        """Checks the video and (for a search) the collection's rules, records the job and queues it. With a
        ClientRequestToken used before, the job it started (nothing new is queued unless that one never was).
        A job that failed before it started (an upload's bad metadata) is only recorded."""
        if job.finished:
            return self.jobs.create(job)[0]
        try:
            size = self.store.size(job.video)
        except ResourceNotFoundError as error:
            raise InvalidS3ObjectError(f"Video.S3Object cannot be read: {error.message}") from error
        if size == 0:
            raise InvalidVideoError(f"the video s3://{job.video.bucket}/{job.video.key} is empty (0 bytes)")
        if size > self.max_video_bytes:
            raise VideoTooLargeError(f"the video is {size:,} bytes; the limit is {self.max_video_bytes:,} bytes")
        if job.kind is JobKind.FACE_SEARCH:
            authorized = self.authorize(job, identifications=0)
            job = replace(job, threshold=authorized.threshold, false_match_risk=authorized.false_match_risk)
        recorded, created = self.jobs.create(job, token, fingerprint)
        # Queued once; again only for a job that was recorded but never planned (a start that crashed before
        # it queued the job, retried with its token).
        stalled = self.clock() - datetime.fromisoformat(recorded.created_at) > STALLED_START
        if created or (recorded.segments is None and not recorded.finished and stalled):
            self._queue_job(recorded.job_id)
        return recorded

    def record_failed_start(self, job: VideoJob, error: CandorError) -> VideoJob:
        """An upload whose job cannot start (a refusal, a video too large): recorded FAILED with the reason,
        so that GetFaceSearch of its JobId says why, and notified."""
        recorded, _ = self.jobs.create(job)
        if not recorded.finished:
            self.fail(recorded, error.message)
        return self.jobs.get(job.job_id) or recorded

    def authorize(self, job: VideoJob, identifications: int) -> SearchAuthorization:
        if self.accountability is None or self.indexes is None or job.collection_id is None:
            raise RuntimeError("a face search job is authorized where the collection rules and indexes are known")
        return authorize_collection_search(
            self.accountability, self.indexes, job.collection_id, _caller(job), job.kind.api, job.threshold,
            identifications,
        )  # fmt: skip

    def _queue_job(self, job_id: str) -> None:
        if self.job_queue is None:
            raise RuntimeError("starting a job needs the job queue")
        self.job_queue.publish({"job_id": job_id})

    # --- plan --------------------------------------------------------------------------------------------

    def plan(self, job_id: str) -> VideoJob | None:
        """Probes the job's video and queues its segments."""
        job = self.jobs.get(job_id)
        if job is None or job.finished:
            return job
        try:
            metadata = probe_video(self.store.fetch(job.video, self.max_video_bytes))
        except JOB_ERRORS as error:
            return self.fail(job, error.message)
        segments = split(metadata.duration_ms, self.segment_ms, self.segment_workers)
        self.jobs.set_plan(job_id, metadata.to_rekognition(), len(segments))
        if self.segment_queue is None:
            raise RuntimeError("planning a job needs the segment queue")
        for segment in segments:
            self.segment_queue.publish(
                {"job_id": job_id, "segment": segment.number, "start_ms": segment.start_ms, "end_ms": segment.end_ms}
            )
        logger.info("job %s: %d ms of video in %d segment(s)", job_id, metadata.duration_ms, len(segments))
        return self.jobs.get(job_id)

    # --- segments ----------------------------------------------------------------------------------------

    def analyse_segment(self, job_id: str, segment: Segment, analyser: SegmentAnalyser) -> VideoJob | None:
        job = self.jobs.get(job_id)
        if job is None or job.finished:
            return job
        if segment.number not in job.segments_done:
            try:
                results = analyser.analyse(self.store.fetch(job.video, self.max_video_bytes), segment, job)
            except JOB_ERRORS as error:
                return self.fail(job, error.message)
            self.store.put_segment(job_id, segment.number, results)
            job = self.jobs.segment_done(job_id, segment.number)
        if job.segments is not None and len(job.segments_done) >= job.segments:
            return self.finish(job)
        return job

    # --- finish ------------------------------------------------------------------------------------------

    def finish(self, job: VideoJob) -> VideoJob:
        """Merges the segments' tracks into persons, audits the search, stores the results, ends the job."""
        if job.segments is None:
            raise RuntimeError(f"job {job.job_id} is finished before it was planned")
        results = merge_segments([self.store.get_segment(job.job_id, n) for n in range(job.segments)])
        risk = job.false_match_risk
        if job.kind is JobKind.FACE_SEARCH:
            persons = _matches_per_person(results)
            try:
                # The rules in force now: a policy tightened while the job ran holds for its results.
                authorized = self.authorize(job, identifications=sum(1 for matches in persons if matches))
            except CandorError as error:
                return self.fail(job, f"the face search was refused when its results were ready: {error.message}")
            risk = authorized.false_match_risk
            self.jobs.add_matches(job.job_id, sorted(results.matched_face_ids()), self._expires_at())
            assert self.accountability is not None and job.collection_id is not None
            self.accountability.record_search(
                job.collection_id,
                _caller(job),
                job.kind.api,
                threshold=authorized.threshold,
                matches=persons,
                searched=f"video s3://{job.video.bucket}/{job.video.key} (job {job.job_id})",
                authorization=authorized,
            )
        self.store.put_results(job.job_id, results)
        if self.jobs.finish(job.job_id, JobStatus.SUCCEEDED, None, self._expires_at(), risk):
            self._notify(job, JobStatus.SUCCEEDED)
        self.store.delete_segments(job.job_id, job.segments)
        return self.jobs.get(job.job_id) or job

    def fail(self, job: VideoJob, message: str) -> VideoJob:
        logger.warning("job %s failed: %s", job.job_id, message)
        if self.jobs.finish(job.job_id, JobStatus.FAILED, message, self._expires_at()):
            self._notify(job, JobStatus.FAILED)
        return self.jobs.get(job.job_id) or job

    def _notify(self, job: VideoJob, status: JobStatus) -> None:
        if job.notification is None or self.notifier is None:
            return
        message = {
            "JobId": job.job_id,
            "Status": status.value,
            "API": job.kind.api,
            "JobTag": job.job_tag or "",
            "Timestamp": int(self.clock().timestamp() * 1000),
            "Video": {"S3ObjectName": job.video.key, "S3Bucket": job.video.bucket},
        }
        try:
            self.notifier.notify(job.notification.topic_arn, job.notification.role_arn, message)
        except Exception:
            logger.exception("job %s: the completion message to %s was not published", job.job_id, job.notification)

    def _expires_at(self) -> int:
        return int(self.clock().timestamp()) + self.result_days * 86_400

    # --- erasure -----------------------------------------------------------------------------------------

    def erase_matches(self, face_ids: set[str]) -> int:
        """Removes every match of these stored faces from the jobs' stored results; returns how many went."""
        removed = 0
        jobs: dict[str, set[str]] = {}
        for face_id in sorted(face_ids):
            for job_id in self.jobs.jobs_matching(face_id):
                jobs.setdefault(job_id, set()).add(face_id)
        for job_id, erased in sorted(jobs.items()):
            results = self.store.get_results(job_id)
            if results is not None:
                results, count = results.without_faces(erased)
                self.store.put_results(job_id, results)
                removed += count
            self.jobs.remove_matches(job_id, sorted(erased))
        return removed


def job_from_upload(video: VideoRef, metadata: dict[str, str], sample_interval_ms: int, created_at: str) -> VideoJob:
    """The job an upload under videos/ starts: a face search of the collection its metadata names (for the
    purpose and case it states), else face detection. Its JobId is upload_job_id's."""
    collection_id = metadata.get(META_COLLECTION) or None
    job = VideoJob(
        job_id=upload_job_id(video.bucket, video.key, video.version_id),
        kind=JobKind.FACE_SEARCH if collection_id else JobKind.FACE_DETECTION,
        video=video,
        created_at=created_at,
        caller_identity=UPLOAD_CALLER,
        purpose=GENERAL_PURPOSE,
        collection_id=collection_id,
        job_tag=metadata.get(META_JOB_TAG) or None,
        sample_interval_ms=sample_interval_ms,
    )
    try:
        purpose = metadata.get(META_PURPOSE)
        case = metadata.get(META_CASE)
        threshold = metadata.get(META_THRESHOLD)
        return replace(
            job,
            purpose=validate_purpose(purpose.strip()) if purpose else GENERAL_PURPOSE,
            case_reference=validate_reference(META_CASE, case.strip()) if case else None,
            threshold=_threshold(threshold) if threshold else None,
        )
    except CandorError as error:
        # Recorded as the job's failure: the uploader reads why with the JobId.
        return replace(
            job, status=JobStatus.FAILED, status_message=f"the upload's metadata is refused: {error.message}"
        )


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 100.0:
        raise InvalidParameterError(f"{META_THRESHOLD} must be a number from 0 to 100, not {text!r}")
    return value


def merge_segments(segments: list[JobResults]) -> JobResults:
    """One video's results from its segments': tracks merged into persons numbered by first appearance,
    embeddings dropped (they are not results), every sample ordered by timestamp then person."""
    tracks: list[Track] = []
    sample_of: dict[int, FaceSample] = {}
    for number, part in enumerate(segments):
        by_track: dict[int, Track] = {}
        for sample in part.faces:
            if sample.embedding is None:
                raise ValueError(f"segment {number} holds a face without its embedding")
            track = by_track.setdefault(sample.track, Track(track_id=number * 1_000_000 + sample.track))
            left, top, width, height = sample.box
            face = TrackedFace(
                sample.timestamp_ms,
                BoundingBox(left, top, width, height),
                np.asarray(sample.embedding, dtype=np.float32),
                sample.confidence,
            )
            sample_of[id(face)] = sample
            track.faces.append(face)
        tracks.extend(by_track.values())
    faces: list[FaceSample] = []
    for person in merge(tracks):
        for face in person.faces:
            sample = sample_of[id(face)]
            faces.append(replace(sample, person=person.index, track=0, embedding=None))
    faces.sort(key=lambda sample: (sample.timestamp_ms, sample.person or 0))
    width = max((part.width for part in segments), default=0)
    height = max((part.height for part in segments), default=0)
    return JobResults(width, height, faces)


def _matches_per_person(results: JobResults) -> list[list[Returned]]:
    """What the audit keeps of a video search: per person, each stored face matched with its best similarity."""
    persons: dict[int, dict[str, float]] = {}
    for sample in results.faces:
        best = persons.setdefault(sample.person or 0, {})
        for match in sample.matches:
            best[match["face_id"]] = max(best.get(match["face_id"], 0.0), float(match["similarity"]))
    return returned_per_person(persons)


def _caller(job: VideoJob) -> Caller:
    return Caller(job.caller_identity, job.purpose, job.case_reference)
