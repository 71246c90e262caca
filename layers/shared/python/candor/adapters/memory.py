"""In-memory adapters for unit tests: the same behaviour as the AWS ones, no network."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from candor.accountability.audit import AuditRecord
from candor.accountability.policy import CollectionPolicy
from candor.core.errors import ConflictError, ImageTooLargeError, ResourceAlreadyExistsError, ResourceNotFoundError
from candor.core.faces import FaceRecord, PhotoRecord
from candor.core.settings import CHANGE_LOG_ENTRY_FACES
from candor.core.vector_filter import matches
from candor.ports import Collection, IndexChange, Page, StoredImage, User, VectorHit, wanted


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

    def changes(self, collection_id: str, after: int, upto: int) -> list[IndexChange]:
        log = self.change_log.get(collection_id, {})
        return [log[seq] for seq in range(after + 1, upto + 1) if seq in log]

    def set_policy(self, collection_id: str, policy: CollectionPolicy) -> None:
        if collection_id not in self.collections:
            raise ResourceNotFoundError(f"collection {collection_id!r} does not exist")
        self.collections[collection_id].policy = policy

    def set_index_engine(self, collection_id: str, engine: str, change_seq: int) -> bool:
        with self._lock:
            collection = self.collections.get(collection_id)
            if collection is None:
                raise ResourceNotFoundError(f"collection {collection_id!r} does not exist")
            if collection.change_seq != change_seq:
                return False
            collection.index_engine = engine
            return True

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

    def delete(self, collection_id: str) -> None:
        self.snapshots.pop(collection_id, None)


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

    def consume(self, key: str, limit: int, expires_at: int, amount: int = 1) -> bool:
        if self.used.get(key, 0) + amount > limit:
            return False
        self.used[key] = self.used.get(key, 0) + amount
        return True

    def release(self, key: str, amount: int) -> None:
        self.used[key] = self.used.get(key, 0) - amount


class MemoryVectorStore:
    """S3 Vectors in memory, exact: every query is a float64 cosine against every vector that passes the
    filter. `max_top_k` as S3 Vectors' (tests page past it with a smaller one); `calls` counts the requests the
    AWS adapter would make (PutVectors of at most 500, GetVectors of at most 100)."""

    def __init__(self, max_top_k: int = 100) -> None:
        self.max_top_k = max_top_k
        self.indexes: dict[str, dict[str, tuple[np.ndarray, dict[str, Any]]]] = {}
        self.dimensions: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def _count(self, call: str, n: int = 1) -> None:
        self.calls[call] = self.calls.get(call, 0) + n

    def _index(self, name: str) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        if name not in self.indexes:
            raise ResourceNotFoundError(f"vector index {name!r} does not exist")
        return self.indexes[name]

    def create_index(self, name: str, dimension: int, non_filterable: Sequence[str] = ()) -> None:
        with self._lock:
            self.indexes.setdefault(name, {})
            self.dimensions[name] = dimension

    def delete_index(self, name: str) -> None:
        with self._lock:
            self.indexes.pop(name, None)

    def has_index(self, name: str) -> bool:
        return name in self.indexes

    def put(self, name: str, keys: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]]) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(keys), -1)
        with self._lock:
            index = self._index(name)
            if len(keys) and vectors.shape[1] != self.dimensions[name]:
                raise ValueError(f"vectors of {vectors.shape[1]} dimensions for an index of {self.dimensions[name]}")
            self._count("PutVectors", -(-len(keys) // 500))
            for key, vector, meta in zip(keys, vectors, metadata, strict=True):
                index[key] = (vector.copy(), dict(meta))

    def delete(self, name: str, keys: Sequence[str]) -> None:
        with self._lock:
            index = self._index(name)
            self._count("DeleteVectors", -(-len(keys) // 500))
            for key in keys:
                index.pop(key, None)

    def get(self, name: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        index = self._index(name)
        self._count("GetVectors", -(-len(keys) // 100))
        return {key: index[key][0] for key in keys if key in index}

    def keys(self, name: str) -> Iterable[str]:
        return list(self._index(name))

    def query(self, name: str, vector: np.ndarray, top_k: int, where: dict[str, Any] | None = None) -> list[VectorHit]:
        with self._lock:
            rows = [(key, v, meta) for key, (v, meta) in self._index(name).items() if matches(meta, where)]
        self._count("QueryVectors", max(1, -(-top_k // self.max_top_k)))
        if not rows or top_k <= 0:
            return []
        matrix = np.stack([v for _, v, _ in rows]).astype(np.float64)
        query = np.asarray(vector, dtype=np.float64)
        norms = np.linalg.norm(matrix, axis=1) * float(np.linalg.norm(query))
        cosines = (matrix @ query) / np.where(norms > 0, norms, 1.0)
        order = sorted(range(len(rows)), key=lambda n: (-cosines[n], rows[n][0]))[:top_k]
        return [VectorHit(rows[n][0], float(1.0 - cosines[n]), dict(rows[n][2])) for n in order]
