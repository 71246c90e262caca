"""Stored-video jobs (Rekognition Video's StartFaceDetection / StartFaceSearch): the job record, its segments,
its identifiers and the results it keeps. No I/O: the service functions are in candor/video_jobs.py."""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

# An upload under this prefix is a video job, not a photo (the detect stage passes it on to the video queue).
VIDEO_UPLOAD_PREFIX = "videos/"
# The shortest segment a short video is split into for parallel workers (opening and seeking cost ~50 ms).
MIN_SEGMENT_MS = 1000
# Upload metadata of a video job, beside the photos' candor-collection: why and for which case it is searched.
META_PURPOSE = "candor-purpose"
META_CASE = "candor-case"
META_THRESHOLD = "candor-threshold"
META_JOB_TAG = "candor-job-tag"


class JobKind(StrEnum):
    FACE_DETECTION = "FaceDetection"
    FACE_SEARCH = "FaceSearch"

    @property
    def api(self) -> str:
        """The API name Rekognition's completion message carries."""
        return f"Start{self.value}"


class JobStatus(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class VideoRef:
    bucket: str
    key: str
    version_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "version_id": self.version_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoRef:
        return cls(str(data["bucket"]), str(data["key"]), data.get("version_id") or None)


@dataclass(frozen=True)
class NotificationChannel:
    """Rekognition's NotificationChannel: the completion message goes to the topic, published as the role."""

    topic_arn: str
    role_arn: str


@dataclass(frozen=True)
class Segment:
    """[start_ms, end_ms) of the video; the last segment runs to the end (end_ms None)."""

    number: int
    start_ms: int
    end_ms: int | None


@dataclass(frozen=True)
class VideoJob:
    job_id: str
    kind: JobKind
    video: VideoRef
    created_at: str
    caller_identity: str
    purpose: str
    case_reference: str | None = None
    collection_id: str | None = None
    threshold: float | None = None
    job_tag: str | None = None
    notification: NotificationChannel | None = None
    sample_interval_ms: int = 200
    status: JobStatus = JobStatus.IN_PROGRESS
    status_message: str | None = None
    # Filled when the video is probed: Rekognition's VideoMetadata, and how many segments it was split into.
    metadata: dict[str, Any] | None = None
    segments: int | None = None
    segments_done: frozenset[int] = frozenset()
    completed_at: str | None = None
    false_match_risk: float | None = None

    @property
    def finished(self) -> bool:
        return self.status is not JobStatus.IN_PROGRESS

    def with_status(self, status: JobStatus, message: str | None, completed_at: str) -> VideoJob:
        return replace(self, status=status, status_message=message, completed_at=completed_at)


def new_job_id() -> str:
    return uuid.uuid4().hex


def upload_job_id(bucket: str, key: str, version_id: str | None = None) -> str:
    """The JobId of the job an upload starts: the same upload (a redelivered notification) is the same job,
    and whoever uploaded can compute it to ask for the results."""
    return hashlib.sha256(f"upload|{bucket}|{key}|{version_id or ''}".encode()).hexdigest()[:64]


def request_fingerprint(kind: JobKind, request: dict[str, Any]) -> str:
    """What a ClientRequestToken stands for: the same token with another fingerprint is a mismatch."""
    canonical = json.dumps({"kind": kind.value, **request}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def split(duration_ms: int, segment_ms: int, workers: int = 1) -> list[Segment]:
    """Segments of `segment_ms` covering the whole video, the last one open-ended (so its decoder sees the
    end of the file and can tell a truncated one). A video shorter than `workers` segments is shared
    evenly among that many workers instead, in segments of at least MIN_SEGMENT_MS: a short clip is not
    left to one worker while the others wait."""
    segment_ms = min(segment_ms, max(MIN_SEGMENT_MS, math.ceil(duration_ms / max(1, workers))))
    count = max(1, math.ceil(duration_ms / segment_ms))
    return [
        Segment(number, number * segment_ms, None if number == count - 1 else (number + 1) * segment_ms)
        for number in range(count)
    ]


@dataclass
class FaceSample:
    """One face in one sampled frame, as a segment found it and the job's results keep it.

    `box` and `landmarks` are in pixels of the frame; `track` is the segment's own track number until the
    segments are merged, then `person` is its Person.Index for the whole video."""

    timestamp_ms: int
    box: tuple[float, float, float, float]  # left, top, width, height
    confidence: float
    landmarks: list[tuple[float, float]]
    pose: dict[str, float]
    quality: dict[str, float]
    track: int = 0
    person: int | None = None
    embedding: list[float] | None = None
    matches: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "t": self.timestamp_ms,
            "box": list(self.box),
            "confidence": self.confidence,
            "landmarks": [list(point) for point in self.landmarks],
            "pose": self.pose,
            "quality": self.quality,
            "track": self.track,
            "matches": self.matches,
        }
        if self.person is not None:
            data["person"] = self.person
        if self.embedding is not None:
            data["embedding"] = self.embedding
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaceSample:
        left, top, width, height = (float(value) for value in data["box"])
        return cls(
            timestamp_ms=int(data["t"]),
            box=(left, top, width, height),
            confidence=float(data["confidence"]),
            landmarks=[(float(x), float(y)) for x, y in data["landmarks"]],
            pose=dict(data["pose"]),
            quality=dict(data["quality"]),
            track=int(data.get("track", 0)),
            person=data.get("person"),
            embedding=data.get("embedding"),
            matches=list(data.get("matches", [])),
        )


@dataclass
class JobResults:
    """What GetFaceDetection and GetFaceSearch page through: every face sample, by timestamp then person."""

    width: int
    height: int
    faces: list[FaceSample]

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "faces": [face.to_dict() for face in self.faces]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobResults:
        return cls(int(data["width"]), int(data["height"]), [FaceSample.from_dict(f) for f in data["faces"]])

    def without_faces(self, face_ids: set[str]) -> tuple[JobResults, int]:
        """These results with no match of the stored faces `face_ids` (an erasure), and how many went."""
        removed = 0
        for face in self.faces:
            kept = [match for match in face.matches if match["face_id"] not in face_ids]
            removed += len(face.matches) - len(kept)
            face.matches = kept
        return self, removed

    def matched_face_ids(self) -> set[str]:
        return {match["face_id"] for face in self.faces for match in face.matches}
