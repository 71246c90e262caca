"""The small interfaces the service functions depend on. Each has an AWS adapter (candor.adapters.aws)
and an in-memory one (candor.adapters.memory) for unit tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from candor.faces import DetectedFace, FaceRecord, PhotoRecord
from candor.policy import CollectionPolicy

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
    # Changes whenever a face is added or removed, so a warm search function knows to reload.
    index_version: str = ""
    face_count: int = 0
    # What the collection may be searched for, and how (candor/policy.py); the safe default otherwise.
    policy: CollectionPolicy = field(default_factory=CollectionPolicy)


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
    def get(
        self, bucket: str, key: str, version_id: str | None = None, max_bytes: int | None = None
    ) -> StoredImage:
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

    def mark_changed(self, collection_id: str) -> None: ...

    def set_policy(self, collection_id: str, policy: CollectionPolicy) -> None:
        """Raises ResourceNotFoundError for a missing collection."""
        ...


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

    def fetch(self, collection_id: str, directory: Path) -> bool:
        """Writes the latest snapshot's files into `directory`; False when the collection has none."""
        ...

    def publish(self, collection_id: str, directory: Path) -> None:
        """Stores the index persisted in `directory` as the collection's latest snapshot."""
        ...

    def delete(self, collection_id: str) -> None:
        """Removes every snapshot of the collection: its embeddings must not outlive it."""
        ...


class MessagePublisher(Protocol):
    def publish(self, body: dict[str, Any]) -> None: ...


class FaceDetector(Protocol):
    version: str

    def detect(
        self, image: np.ndarray, max_faces: int = ..., min_confidence: float = ...
    ) -> list[DetectedFace]: ...


class FaceEmbedder(Protocol):
    version: str

    def embed_faces(self, image: np.ndarray, faces: Sequence[DetectedFace]) -> np.ndarray: ...
