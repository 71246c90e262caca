"""In-memory adapters for unit tests: the same behaviour as the AWS ones, no network."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from candor.errors import ImageTooLargeError, ResourceAlreadyExistsError, ResourceNotFoundError
from candor.faces import FaceRecord, PhotoRecord
from candor.ports import Collection, StoredImage


class MemoryImageStore:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], StoredImage] = {}

    def put(self, bucket: str, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        self.objects[(bucket, key)] = StoredImage(data, metadata or {})

    def get(self, bucket: str, key: str, version_id: str | None = None, max_bytes: int | None = None) -> StoredImage:
        stored = self.objects.get((bucket, key))
        if stored is None:
            raise ResourceNotFoundError(f"s3://{bucket}/{key} does not exist")
        if max_bytes is not None and len(stored.data) > max_bytes:
            raise ImageTooLargeError(f"object is {len(stored.data)} bytes; the limit is {max_bytes}")
        return stored


class MemoryPhotoRepository:
    def __init__(self) -> None:
        self.photos: dict[str, PhotoRecord] = {}

    def save(self, photo: PhotoRecord) -> None:
        self.photos[photo.photo_id] = photo

    def get(self, photo_id: str) -> PhotoRecord | None:
        return self.photos.get(photo_id)


class MemoryFaceRepository:
    def __init__(self) -> None:
        self.faces: dict[str, FaceRecord] = {}

    def save_all(self, faces: Sequence[FaceRecord]) -> None:
        self.faces.update({face.face_id: face for face in faces})

    def list_collection(self, collection_id: str) -> Iterable[FaceRecord]:
        return [face for face in self.faces.values() if face.collection_id == collection_id]


class MemoryCollectionRepository:
    def __init__(self) -> None:
        self.collections: dict[str, Collection] = {}

    def get(self, collection_id: str) -> Collection | None:
        return self.collections.get(collection_id)

    def create(self, collection: Collection) -> None:
        if collection.collection_id in self.collections:
            raise ResourceAlreadyExistsError(f"collection {collection.collection_id!r} already exists")
        self.collections[collection.collection_id] = collection

    def delete(self, collection_id: str) -> None:
        self.collections.pop(collection_id, None)

    def list_ids(self) -> list[str]:
        return sorted(self.collections)

    def mark_changed(self, collection_id: str) -> None:
        if collection_id in self.collections:
            self.collections[collection_id].index_version = uuid.uuid4().hex


class MemoryPublisher:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def publish(self, body: dict[str, Any]) -> None:
        self.messages.append(body)
