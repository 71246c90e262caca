"""In-memory adapters for unit tests: the same behaviour as the AWS ones, no network."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from candor.accountability.audit import AuditRecord
from candor.accountability.policy import CollectionPolicy
from candor.core.errors import ConflictError, ImageTooLargeError, ResourceAlreadyExistsError, ResourceNotFoundError
from candor.core.faces import FaceRecord, PhotoRecord
from candor.core.settings import CHANGE_LOG_ENTRY_FACES
from candor.ports import Collection, IndexChange, Page, StoredImage, User, wanted


class MemoryImageStore:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], StoredImage] = {}
        self.tags: dict[tuple[str, str], dict[str, str]] = {}

    def put(self, bucket: str, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        self.objects[(bucket, key)] = StoredImage(data, metadata or {})

    def get(self, bucket: str, key: str, version_id: str | None = None, max_bytes: int | None = None) -> StoredImage:
        stored = self.objects.get((bucket, key))
        if stored is None:
            raise ResourceNotFoundError(f"s3://{bucket}/{key} does not exist")
        if max_bytes is not None and len(stored.data) > max_bytes:
            raise ImageTooLargeError(f"object is {len(stored.data)} bytes; the limit is {max_bytes}")
        return stored

    def add_tag(self, bucket: str, key: str, name: str, value: str) -> None:
        if (bucket, key) in self.objects:
            self.tags.setdefault((bucket, key), {})[name] = value

    def delete(self, bucket: str, key: str) -> None:
        self.objects.pop((bucket, key), None)
        self.tags.pop((bucket, key), None)


class MemoryPhotoRepository:
    def __init__(self) -> None:
        self.photos: dict[str, PhotoRecord] = {}

    def save(self, photo: PhotoRecord) -> None:
        self.photos[photo.photo_id] = photo

    def get(self, photo_id: str) -> PhotoRecord | None:
        return self.photos.get(photo_id)

    def delete(self, photo_id: str) -> None:
        self.photos.pop(photo_id, None)


class MemoryFaceRepository:
    def __init__(self) -> None:
        self.faces: dict[str, FaceRecord] = {}

    def save_all(self, faces: Sequence[FaceRecord]) -> None:
        self.faces.update({face.face_id: face for face in faces})

    def list_collection(self, collection_id: str) -> Iterable[FaceRecord]:
        return [face for face in self.faces.values() if face.collection_id == collection_id]

    def list_shard(self, collection_id: str, shard: int) -> Iterable[FaceRecord]:
        faces = self.faces.values()
        return [face for face in faces if face.collection_id == collection_id and (face.shard or 0) == shard]

    def list_collection_page(self, collection_id: str, limit: int, after: str | None = None) -> Page[FaceRecord]:
        faces = sorted(self.list_collection(collection_id), key=lambda face: face.face_id)
        return _page([face for face in faces if after is None or face.face_id > after], limit, lambda f: f.face_id)

    def delete_all(self, face_ids: Sequence[str]) -> None:
        for face_id in face_ids:
            self.faces.pop(face_id, None)

    def existing(self, face_ids: Sequence[str]) -> set[str]:
        return {face_id for face_id in face_ids if face_id in self.faces}

    def get_many(self, face_ids: Sequence[str]) -> dict[str, FaceRecord]:
        return {face_id: self.faces[face_id] for face_id in face_ids if face_id in self.faces}

    def set_user(self, face_ids: Sequence[str], user_id: str | None) -> None:
        for face_id in face_ids:
            if face_id in self.faces:
                self.faces[face_id] = replace(self.faces[face_id], user_id=user_id)


class MemoryCollectionRepository:
    def __init__(self) -> None:
        self.collections: dict[str, Collection] = {}
        self.change_log: dict[str, dict[int, IndexChange]] = {}  # collection id -> seq -> change
        self._lock = threading.Lock()

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

    def mark_changed(self, collection_id: str, change: IndexChange) -> None:
        for part in change.parts(CHANGE_LOG_ENTRY_FACES):
            with self._lock:
                log = self.change_log.setdefault(collection_id, {})
                collection = self.collections.get(collection_id)
                seq = max([*log, collection.change_seq if collection else 0]) + 1
                log[seq] = replace(part, seq=seq)
                if collection is not None:
                    collection.change_seq = max(collection.change_seq, seq)

    def allocate(self, collection_id: str, count: int) -> int:
        with self._lock:
            collection = self.collections.get(collection_id)
            if collection is None:
                raise ResourceNotFoundError(f"collection {collection_id!r} does not exist")
            collection.faces_allocated += count
            return collection.faces_allocated - count

    def changes(self, collection_id: str, after: int, upto: int) -> list[IndexChange]:
        log = self.change_log.get(collection_id, {})
        return [log[seq] for seq in range(after + 1, upto + 1) if seq in log]

    def set_policy(self, collection_id: str, policy: CollectionPolicy) -> None:
        if collection_id not in self.collections:
            raise ResourceNotFoundError(f"collection {collection_id!r} does not exist")
        self.collections[collection_id].policy = policy

    def set_model_version(self, collection_id: str, version: str) -> None:
        if collection_id not in self.collections:
            raise ResourceNotFoundError(f"collection {collection_id!r} does not exist")
        self.collections[collection_id].face_model_version = version


class MemoryUserRepository:
    def __init__(self) -> None:
        self.users: dict[tuple[str, str], User] = {}

    def get(self, collection_id: str, user_id: str) -> User | None:
        return self.users.get((collection_id, user_id))

    def create(self, user: User) -> None:
        if (user.collection_id, user.user_id) in self.users:
            raise ConflictError(f"user {user.user_id!r} already exists in {user.collection_id!r}")
        self.users[(user.collection_id, user.user_id)] = user

    def delete(self, collection_id: str, user_id: str) -> None:
        self.users.pop((collection_id, user_id), None)

    def list_page(self, collection_id: str, limit: int, after: str | None = None) -> Page[User]:
        users = sorted((u for (c, _), u in self.users.items() if c == collection_id), key=lambda u: u.user_id)
        return _page([u for u in users if after is None or u.user_id > after], limit, lambda u: u.user_id)


def _page(items: list[Any], limit: int, key_of: Any) -> Page[Any]:
    if len(items) > limit:
        return Page(items[:limit], key_of(items[limit - 1]) if limit else None)
    return Page(items, None)


class MemoryIndexSnapshotStore:
    def __init__(self) -> None:
        self.snapshots: dict[str, dict[str, bytes]] = {}

    def fetch(self, collection_id: str, directory: Path, only: Sequence[str] = ()) -> bool:
        files = self.snapshots.get(collection_id)
        if files is None:
            return False
        for name, data in files.items():
            if not wanted(name, only):
                continue
            (Path(directory) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(directory) / name).write_bytes(data)
        return True

    def publish(self, collection_id: str, directory: Path, keep_previous: bool = True) -> None:
        directory = Path(directory)
        self.snapshots[collection_id] = {
            path.relative_to(directory).as_posix(): path.read_bytes() for path in directory.rglob("*") if path.is_file()
        }

    def delete(self, collection_id: str, with_children: bool = True) -> None:
        below = [name for name in self.snapshots if with_children and name.startswith(collection_id + "/")]
        for name in [collection_id, *below]:
            self.snapshots.pop(name, None)


class MemoryPublisher:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def publish(self, body: dict[str, Any]) -> None:
        self.messages.append(body)


class MemoryAuditStore:
    def __init__(self) -> None:
        self.records: dict[str, dict[int, AuditRecord]] = {}
        self._lock = threading.Lock()  # put_new is a conditional write, as DynamoDB's is

    def head(self, chain: str) -> AuditRecord | None:
        entries = self.records.get(chain)
        return entries[max(entries)] if entries else None

    def put_new(self, record: AuditRecord) -> bool:
        with self._lock:
            entries = self.records.setdefault(record.chain, {})
            if record.seq in entries:
                return False
            entries[record.seq] = record
            return True

    def entries(self, chain: str) -> Iterable[AuditRecord]:
        entries = self.records.get(chain, {})
        return [entries[seq] for seq in sorted(entries)]

    def chains(self) -> list[str]:
        return sorted(self.records)


class MemoryQuotaCounter:
    def __init__(self) -> None:
        self.used: dict[str, int] = {}

    def consume(self, key: str, limit: int, expires_at: int) -> bool:
        if self.used.get(key, 0) >= limit:
            return False
        self.used[key] = self.used.get(key, 0) + 1
        return True
