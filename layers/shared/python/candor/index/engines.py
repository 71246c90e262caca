"""Which engine holds a collection's vectors, and the index each engine gives it.

The rule: a collection's `index_engine` setting says it. New collections start in the function
("in-function": an int8 HNSW graph over float32 vectors, candor/index/vectors.py; a warm search takes
milliseconds). A collection past IN_FUNCTION_MAX_FACES faces (250,000) belongs on Amazon S3 Vectors
("s3vectors": candor/index/s3vectors.py; no size limit that matters, about 100 ms a query); `candor collections
migrate` moves a collection either way while it keeps serving (candor/index/migration.py). One code path per
engine: nothing is fanned out.
"""

from __future__ import annotations

import json
from pathlib import Path

from candor.core.errors import InvalidParameterError
from candor.core.settings import EMBEDDING_SIZE
from candor.index.s3vectors import ENGINE as S3VECTORS
from candor.index.s3vectors import S3VectorsIndex, index_name
from candor.index.vectors import HnswVectorIndex, VectorIndex, load_index
from candor.ports import Collection, VectorStore

IN_FUNCTION = "in-function"
ENGINES = (IN_FUNCTION, S3VECTORS)
# What a snapshot of an S3 Vectors collection needs: its face directory and where its vectors are.
S3VECTORS_SNAPSHOT_FILES = ("collection.json", "index.json")


def validate_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise InvalidParameterError(f"index engine {engine!r} is not one of {', '.join(ENGINES)}")
    return engine


class IndexEngines:
    """The index of each collection's engine: new, loaded from a snapshot, or adopted from the other engine's
    after a migration. Without a vector store (none configured), an S3 Vectors collection cannot be searched."""

    def __init__(self, vector_store: VectorStore | None = None, dimension: int = EMBEDDING_SIZE) -> None:
        self.vector_store = vector_store
        self._dimension = dimension

    def _store(self, collection: Collection) -> VectorStore:
        if self.vector_store is None:
            raise InvalidParameterError(
                f"collection {collection.collection_id!r} is on S3 Vectors and this function has no vector bucket"
            )
        return self.vector_store

    def new(self, collection: Collection) -> VectorIndex:
        if collection.index_engine == S3VECTORS:
            return S3VectorsIndex.open(self._store(collection), collection, self._dimension)
        return HnswVectorIndex(self._dimension)

    def snapshot_files(self, collection: Collection) -> tuple[str, ...]:
        """The files of a snapshot `load` needs (empty: all of them)."""
        return S3VECTORS_SNAPSHOT_FILES if collection.index_engine == S3VECTORS else ()

    def load(self, directory: Path, collection: Collection, face_ids: list[str]) -> VectorIndex:
        """The index persisted in `directory`, whose faces are `face_ids`; raises for another engine's."""
        if collection.index_engine == S3VECTORS:
            _require_snapshot_engine(directory, S3VECTORS)
            name = index_name(collection)
            return S3VectorsIndex(
                self._store(collection), name, collection.face_model_version, face_ids, self._dimension
            )
        return load_index(directory)

    def suits(self, index: VectorIndex, collection: Collection) -> bool:
        return (index.engine == S3VECTORS) == (collection.index_engine == S3VECTORS)

    def adopt(self, index: VectorIndex, collection: Collection) -> VectorIndex | None:
        """After a migration to S3 Vectors: the warm index's faces are all there already (the migration put
        them), so the S3 Vectors index takes over without a rebuild. The other way, None: the in-function
        index is built from the faces table."""
        if collection.index_engine == S3VECTORS and index.engine != S3VECTORS:
            store = self._store(collection)
            name = index_name(collection)
            return S3VectorsIndex(store, name, collection.face_model_version, index.face_ids(), self._dimension)
        return None


def _require_snapshot_engine(directory: Path, engine: str) -> None:
    meta = json.loads((Path(directory) / "index.json").read_text())
    if meta.get("engine") != engine:
        raise ValueError(f"{directory}: a snapshot of a {meta.get('engine')!r} index, not {engine!r}")
