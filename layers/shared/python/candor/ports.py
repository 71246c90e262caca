"""The small interfaces the service functions depend on. Each has an AWS adapter (candor.adapters.aws)
and an in-memory one (candor.adapters.memory) for unit tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from candor.accountability.policy import CollectionPolicy
from candor.core.errors import FaceModelMismatchError
from candor.core.faces import DetectedFace, FaceRecord, PhotoRecord
from candor.live.processors import LiveSession, ProcessorStatus, StreamProcessor
from candor.video.jobs import JobResults, JobStatus, VideoJob, VideoRef

T = TypeVar("T")


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    metadata: dict[str, str] = field(default_factory=dict)
    version_id: str | None = None
    # Which upload of the key this is: a re-upload under the same key must not be mistaken for the last one.
    etag: str | None = None
    last_modified: str | None = None


@dataclass
class Collection:
    collection_id: str
    created_at: str
    face_model_version: str
    # The number of the collection's latest change (IndexChange.seq): a warm search function that has applied
    # fewer reads the ones it misses from the change log, and only those.
    change_seq: int = 0
    face_count: int = 0
    # Where its vectors are searched (candor/index/engines.py): "in-function" (the search function's own index)
    # or "s3vectors" (an Amazon S3 Vectors index of its own). Changed only by a migration (candor/index/migration.py).
    index_engine: str = "in-function"
    # What the collection may be searched for, and how (candor/accountability/policy.py); the safe default otherwise.
    policy: CollectionPolicy = field(default_factory=CollectionPolicy)

    def require_face_model(self, version: str) -> None:
        """Refuses to mix or compare two models' vectors: the collection must hold faces of `version`."""
        if self.face_model_version != version:
            raise FaceModelMismatchError(
                f"collection {self.collection_id!r} holds faces embedded by face model "
                f"{self.face_model_version!r}; this stack embeds with {version!r} and never compares the two. "
                f"Re-index it first: candor collections reindex {self.collection_id}"
            )


@dataclass(frozen=True)
class IndexChange:
    """One change to what a collection's searches can return, as its change log records it: face ids only,
    never embeddings (a reader fetches the added faces' records from the faces table)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    users: tuple[tuple[str, str | None], ...] = ()  # (face id, the user it belongs to now, or None)
    seq: int = 0  # its place in the log, given when it is appended

    def parts(self, size: int) -> list[IndexChange]:
        """The same change in pieces of at most `size` face ids each, so no log entry outgrows an item."""
        parts = [IndexChange(added=self.added[start : start + size]) for start in range(0, len(self.added), size)]
        parts += [
            IndexChange(removed=self.removed[start : start + size]) for start in range(0, len(self.removed), size)
        ]
        parts += [IndexChange(users=self.users[start : start + size]) for start in range(0, len(self.users), size)]
        return parts or [self]


@dataclass(frozen=True)
class User:
    """Rekognition's user: one person's faces in a collection, searched as one (faces carry the user_id)."""

    collection_id: str
    user_id: str
    created_at: str


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; `next_token` is None on the last page."""

    items: list[T]
    next_token: str | None


class ImageStore(Protocol):
    def get(self, bucket: str, key: str, version_id: str | None = None, max_bytes: int | None = None) -> StoredImage:
        """Raises ImageTooLargeError past max_bytes without reading the body, ResourceNotFoundError if absent."""
        ...

    def add_tag(self, bucket: str, key: str, name: str, value: str) -> None:
        """Adds one tag to the object, keeping the tags it has."""
        ...

    def delete(self, bucket: str, key: str) -> None: ...


class PhotoRepository(Protocol):
    def save(self, photo: PhotoRecord) -> None: ...

    def get(self, photo_id: str) -> PhotoRecord | None: ...

    def delete(self, photo_id: str) -> None: ...


class FaceRepository(Protocol):
    def save_all(self, faces: Sequence[FaceRecord]) -> None: ...

    def list_collection(self, collection_id: str) -> Iterable[FaceRecord]: ...

    def list_collection_page(self, collection_id: str, limit: int, after: str | None = None) -> Page[FaceRecord]:
        """Up to `limit` faces of the collection in face_id order, starting after the face id `after`."""
        ...

    def delete_all(self, face_ids: Sequence[str]) -> None: ...

    def existing(self, face_ids: Sequence[str]) -> set[str]:
        """Which of these faces are in the table, read consistently (never from the ByCollection index)."""
        ...

    def get_many(self, face_ids: Sequence[str]) -> dict[str, FaceRecord]:
        """The records of those of these faces that are in the table, read consistently."""
        ...

    def set_user(self, face_ids: Sequence[str], user_id: str | None) -> None:
        """Associate the faces with a user (None: with nobody)."""
        ...


class CollectionRepository(Protocol):
    def get(self, collection_id: str) -> Collection | None: ...

    def create(self, collection: Collection) -> None:
        """Raises ResourceAlreadyExistsError when the id is taken."""
        ...

    def delete(self, collection_id: str) -> None: ...

    def list_ids(self) -> list[str]: ...

    def mark_changed(self, collection_id: str, change: IndexChange) -> None:
        """Appends `change` to the collection's change log, then raises its change_seq to the change's number."""
        ...

    def changes(self, collection_id: str, after: int, upto: int) -> list[IndexChange]:
        """Those of the changes numbered after+1 to upto that the log still holds, in order. Entries expire
        after CHANGE_LOG_DAYS: a reader missing one rebuilds from the faces table."""
        ...

    def set_policy(self, collection_id: str, policy: CollectionPolicy) -> None:
        """Raises ResourceNotFoundError for a missing collection."""
        ...

    def set_model_version(self, collection_id: str, version: str) -> None:
        """The face model the collection's faces are embedded with (after a re-index); ResourceNotFoundError
        for a missing collection."""
        ...

    def set_index_engine(self, collection_id: str, engine: str, change_seq: int) -> bool:
        """Moves the collection to `engine` if its change_seq is still `change_seq` (nothing changed since the
        caller brought the new engine up to date); False when it moved on meanwhile."""
        ...


class ChangeLog(Protocol):
    """What a warm index reads of a collection's change log (CollectionRepository.changes)."""

    def changes(self, collection_id: str, after: int, upto: int) -> list[IndexChange]: ...


class UserRepository(Protocol):
    def get(self, collection_id: str, user_id: str) -> User | None: ...

    def create(self, user: User) -> None:
        """Raises ConflictError when the user id is taken in the collection."""
        ...

    def delete(self, collection_id: str, user_id: str) -> None: ...

    def list_page(self, collection_id: str, limit: int, after: str | None = None) -> Page[User]:
        """Up to `limit` users in user_id order, starting after the user id `after`."""
        ...


class IndexSnapshotStore(Protocol):
    """Where a collection's persisted vector index is kept between cold starts (S3 on AWS)."""

    def fetch(self, collection_id: str, directory: Path, only: Sequence[str] = ()) -> bool:
        """Writes the latest snapshot's files into `directory` (with `only`, just the files named there and
        those under the folders named with a trailing "/"); False when there is no snapshot."""
        ...

    def publish(self, collection_id: str, directory: Path, keep_previous: bool = True) -> None:
        """Stores the index persisted in `directory` as the latest snapshot under the name `collection_id`; the
        one before is kept for readers still fetching it unless `keep_previous` is False."""
        ...

    def delete(self, collection_id: str) -> None:
        """Removes every snapshot of the collection: embeddings must not outlive what they were taken from."""
        ...


@dataclass(frozen=True)
class VectorHit:
    """One answer of a vector store's query: the key, the cosine distance (1 - cosine), the metadata."""

    key: str
    distance: float
    metadata: dict[str, Any] = field(default_factory=dict)


class VectorStore(Protocol):
    """Vector indexes of float32 vectors by key, searched by cosine distance (Amazon S3 Vectors on AWS: a vector
    bucket holding one index per collection). Writes are batched and retried on throttling by the adapter."""

    # The most answers one query returns (S3 Vectors' topK limit); `query` pages past it.
    max_top_k: int

    def create_index(self, name: str, dimension: int, non_filterable: Sequence[str] = ()) -> None:
        """Creates the index (cosine distance) unless it exists."""
        ...

    def delete_index(self, name: str) -> None:
        """Deletes the index and its vectors; nothing when there is none."""
        ...

    def has_index(self, name: str) -> bool: ...

    def put(self, name: str, keys: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]]) -> None:
        """Adds or replaces these vectors."""
        ...

    def delete(self, name: str, keys: Sequence[str]) -> None:
        """Removes these keys; absent ones are ignored."""
        ...

    def get(self, name: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of those of these keys the index holds."""
        ...

    def keys(self, name: str) -> Iterable[str]:
        """Every key in the index."""
        ...

    def query(self, name: str, vector: np.ndarray, top_k: int, where: dict[str, Any] | None = None) -> list[VectorHit]:
        """The `top_k` nearest vectors by cosine distance (approximate), nearest first, among those whose
        metadata matches `where` (S3 Vectors' filter syntax: $eq, $ne, $in, $nin, $exists, $and, $or)."""
        ...


class MessagePublisher(Protocol):
    def publish(self, body: dict[str, Any]) -> None: ...


class VideoJobRepository(Protocol):
    """Video jobs by JobId, their ClientRequestTokens, and which jobs matched which stored face."""

    def create(self, job: VideoJob, token: str | None = None, fingerprint: str | None = None) -> tuple[VideoJob, bool]:
        """Records a new job and returns it, True; with a token, the job recorded for that token earlier
        instead (if its request had the same fingerprint: IdempotentParameterMismatchError otherwise), False.
        A job id recorded already returns the job recorded, False."""
        ...

    def get(self, job_id: str) -> VideoJob | None: ...

    def set_plan(self, job_id: str, metadata: dict[str, Any], segments: int) -> None:
        """The probed video's metadata and how many segments it was split into."""
        ...

    def segment_done(self, job_id: str, segment: int) -> VideoJob:
        """Adds the segment to those done (again is a no-op) and returns the job as it is now."""
        ...

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        message: str | None,
        expires_at: int,
        false_match_risk: float | None = None,
    ) -> bool:
        """Ends a job still IN_PROGRESS; False when it had ended already (another segment won)."""
        ...

    def add_matches(self, job_id: str, face_ids: Sequence[str], expires_at: int) -> None:
        """Notes that the job's results match these stored faces (for erasure)."""
        ...

    def jobs_matching(self, face_id: str) -> list[str]: ...

    def remove_matches(self, job_id: str, face_ids: Sequence[str]) -> None: ...


class VideoStore(Protocol):
    """The stored videos (the upload bucket) and the jobs' results (the results bucket)."""

    def size(self, video: VideoRef) -> int:
        """The video's size in bytes; ResourceNotFoundError when it cannot be read."""
        ...

    def metadata(self, video: VideoRef) -> dict[str, str]:
        """The video's S3 user metadata."""
        ...

    def fetch(self, video: VideoRef, max_bytes: int) -> Path:
        """A local copy of the video (kept for the instance's next segments of it)."""
        ...

    def put_segment(self, job_id: str, segment: int, results: JobResults) -> None: ...

    def get_segment(self, job_id: str, segment: int) -> JobResults: ...

    def delete_segments(self, job_id: str, segments: int) -> None: ...

    def put_results(self, job_id: str, results: JobResults) -> None: ...

    def get_results(self, job_id: str) -> JobResults | None: ...


class JobNotifier(Protocol):
    def notify(self, topic_arn: str, role_arn: str, message: dict[str, Any]) -> None:
        """Publishes the message to the topic as the role (Rekognition's NotificationChannel)."""
        ...


class StreamProcessorRepository(Protocol):
    """Stream processors by name, which one reads each video stream, and each run's state between frames."""

    def create(self, processor: StreamProcessor) -> None:
        """Records a new processor: ResourceAlreadyExistsError for a name taken, ResourceInUseError for an
        input stream another processor reads."""
        ...

    def get(self, name: str) -> StreamProcessor | None: ...

    def reading(self, stream_name: str) -> StreamProcessor | None:
        """The processor whose input is this video stream."""
        ...

    def list(self, after: str | None, limit: int) -> tuple[list[StreamProcessor], str | None]:
        """Processors by name after `after`, at most `limit`; the last name when there are more."""
        ...

    def put(self, processor: StreamProcessor, expected: Sequence[ProcessorStatus]) -> None:
        """Saves the processor if its recorded status is one of `expected`, else ResourceInUseError."""
        ...

    def delete(self, processor: StreamProcessor) -> None: ...

    def get_session(self, name: str) -> LiveSession | None: ...

    def put_session(self, name: str, session: LiveSession) -> None: ...

    def delete_session(self, name: str) -> None: ...


class RecordWriter(Protocol):
    def put_records(self, stream_arn: str, role_arn: str, records: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Puts (partition key, JSON record) on the Kinesis data stream as the role, in order."""
        ...


class FaceDetector(Protocol):
    version: str

    def detect(self, image: np.ndarray, max_faces: int = ..., min_confidence: float = ...) -> list[DetectedFace]: ...


class FaceEmbedder(Protocol):
    version: str

    def embed_faces(self, image: np.ndarray, faces: Sequence[DetectedFace]) -> np.ndarray: ...


def wanted(name: str, only: Sequence[str]) -> bool:
    """Whether a snapshot file is among `only` (file names, and folders ending in "/"); everything when empty."""
    return not only or any(name == entry or (entry.endswith("/") and name.startswith(entry)) for entry in only)
