"""A collection's vectors in an Amazon S3 Vectors index of its own: the engine for collections too large for
one function (candor/index/engines.py says which collections use it).

The index is keyed by face id; beside each vector it keeps the face's name and photo (non-filterable) and the
collection's face model (filterable: every query is limited to it, so two models' vectors are never compared,
whatever an index holds). The search function keeps only the face directory (ids, names, users;
candor/index/sync.py) and writes the index as it applies the collection's change log, as it does for the
in-function index; other search function instances write the same changes (puts and deletes by key, so
applying one twice changes nothing).

Scores are S3 Vectors' cosine distance d, turned into Candor's cosine, 1 - d, so thresholds, the similarity
scale and everything decided on them are the same whichever engine answers. A hit is kept only while the face
directory still holds the face (and the search checks it against the faces table, consistently, before
returning it): a face deleted from the table is never returned, whatever the vector index still shows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from candor.core.settings import EMBEDDING_SIZE
from candor.index.vectors import Neighbour
from candor.ports import Collection, VectorStore

ENGINE = "s3vectors"
# Metadata kept beside each vector: only "model" is filtered on; the rest is what a match reports.
MODEL_KEY = "model"
NON_FILTERABLE = ("name", "photo")
# Faces of one photo searched at once: each query is a round trip of about 100 ms on AWS.
_PARALLEL_QUERIES = 8


def index_name(collection: Collection) -> str:
    """The collection's vector index: a name S3 Vectors accepts (3-63 characters of a-z, 0-9, hyphen), new for
    a collection created again under the same id, so a deleted collection's vectors are never searched."""
    digest = hashlib.sha256(f"{collection.collection_id}\0{collection.created_at}".encode()).hexdigest()
    return f"candor-{digest[:40]}"


def face_metadata(external_image_id: str | None, photo_id: str) -> dict[str, Any]:
    """What a match reports of a face, kept beside its vector (the index adds the face model)."""
    return {"name": external_image_id or "", "photo": photo_id}


class S3VectorsIndex:
    """`VectorIndex` over one vector index of a `VectorStore` (S3 Vectors on AWS)."""

    engine = ENGINE
    shared = True  # every search function instance writes it

    def __init__(
        self,
        store: VectorStore,
        name: str,
        model_version: str,
        face_ids: Iterable[str] = (),
        dimension: int = EMBEDDING_SIZE,
    ) -> None:
        self.store = store
        self.name = name
        self.model_version = model_version
        self._dimension = dimension
        self._ids = set(face_ids)
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def open(cls, store: VectorStore, collection: Collection, dimension: int = EMBEDDING_SIZE) -> S3VectorsIndex:
        """The collection's index, created if it has none, with the keys it already holds."""
        name = index_name(collection)
        store.create_index(name, dimension, NON_FILTERABLE)
        return cls(store, name, collection.face_model_version, store.keys(name), dimension)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, face_id: object) -> bool:
        return face_id in self._ids

    def face_ids(self) -> list[str]:
        return list(self._ids)

    def add(
        self, face_ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None
    ) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self._dimension)
        if len(face_ids) != len(vectors):
            raise ValueError(f"{len(face_ids)} ids for {len(vectors)} vectors")
        if not face_ids:
            return
        given = list(metadata) if metadata is not None else [{}] * len(vectors)
        # The collection's face model on every vector: queries are limited to it.
        meta = [{**entry, MODEL_KEY: self.model_version} for entry in given]
        self.store.put(self.name, list(face_ids), vectors, meta)
        self._ids.update(face_ids)

    def remove(self, face_ids: Sequence[str]) -> None:
        # Deleted by key even when this instance never saw the face: another one may have put it.
        if face_ids:
            self.store.delete(self.name, list(face_ids))
        self._ids.difference_update(face_ids)

    def vectors(self, face_ids: Sequence[str]) -> np.ndarray:
        found = self.store.get(self.name, list(face_ids))
        missing = [face_id for face_id in face_ids if face_id not in found]
        if missing:
            raise KeyError(missing[0])
        if not face_ids:
            return np.empty((0, self._dimension), dtype=np.float32)
        return np.stack([found[face_id] for face_id in face_ids]).astype(np.float32)

    def search(self, queries: np.ndarray, k: int, min_cosine: float) -> list[list[Neighbour]]:
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self._dimension)
        if not self._ids or k <= 0:
            return [[] for _ in range(len(queries))]
        if len(queries) == 1:
            return [self._search_one(queries[0], k, min_cosine)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=_PARALLEL_QUERIES)
        return list(self._pool.map(lambda query: self._search_one(query, k, min_cosine), queries))

    def _search_one(self, query: np.ndarray, k: int, min_cosine: float) -> list[Neighbour]:
        # A few more than k: hits of faces this directory no longer holds are dropped below.
        wanted = min(k + 8, len(self._ids))
        hits = self.store.query(self.name, query, wanted, {MODEL_KEY: {"$eq": self.model_version}})
        found = [
            Neighbour(hit.key, 1.0 - hit.distance)
            for hit in hits
            if hit.key in self._ids and 1.0 - hit.distance >= min_cosine
        ]
        found.sort(key=lambda n: (-n.cosine, n.face_id))
        return found[:k]

    def memory_bytes(self) -> int:
        # Only the keys: the vectors are in S3 Vectors.
        return sum(49 + len(face_id) + 100 for face_id in self._ids)

    def persist(self, directory: Path) -> None:
        # Only where the vectors are; the face ids are in the snapshot's face directory.
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"engine": ENGINE, "index": self.name, "dimension": self._dimension, "count": len(self)}
        (directory / "index.json").write_text(json.dumps(meta))
