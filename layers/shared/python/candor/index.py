"""A vector index per collection: add, remove, search top-k above a cosine cut-off.

`ExactVectorIndex` keeps float32 unit vectors in one matrix and answers with a matrix product: exact, and
fast enough for collections of tens of thousands of faces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from candor.settings import EMBEDDING_SIZE


@dataclass(frozen=True)
class Neighbour:
    face_id: str
    cosine: float


class VectorIndex(Protocol):
    def add(self, face_ids: Sequence[str], vectors: np.ndarray) -> None: ...

    def remove(self, face_ids: Sequence[str]) -> None: ...

    def search(self, queries: np.ndarray, k: int, min_cosine: float) -> list[list[Neighbour]]: ...

    def __len__(self) -> int: ...


class ExactVectorIndex:
    def __init__(self, dimension: int = EMBEDDING_SIZE) -> None:
        self._dimension = dimension
        self._ids: list[str] = []
        self._row_of: dict[str, int] = {}
        self._vectors = np.empty((0, dimension), dtype=np.float32)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, face_ids: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self._dimension)
        if len(face_ids) != len(vectors):
            raise ValueError(f"{len(face_ids)} ids for {len(vectors)} vectors")
        # Adding a face id again replaces its vector: the pipeline may deliver a face twice.
        self.remove([face_id for face_id in face_ids if face_id in self._row_of])
        start = len(self._ids)
        self._ids.extend(face_ids)
        self._row_of.update({face_id: start + i for i, face_id in enumerate(face_ids)})
        self._vectors = np.vstack([self._vectors, vectors])

    def remove(self, face_ids: Sequence[str]) -> None:
        rows = {self._row_of[face_id] for face_id in face_ids if face_id in self._row_of}
        if not rows:
            return
        keep = [row for row in range(len(self._ids)) if row not in rows]
        self._ids = [self._ids[row] for row in keep]
        self._vectors = self._vectors[keep]
        self._row_of = {face_id: row for row, face_id in enumerate(self._ids)}

    def search(self, queries: np.ndarray, k: int, min_cosine: float) -> list[list[Neighbour]]:
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self._dimension)
        if not self._ids or k <= 0:
            return [[] for _ in range(len(queries))]
        scores = queries @ self._vectors.T
        k = min(k, len(self._ids))
        results = []
        for row in scores:
            top = np.argpartition(-row, k - 1)[:k]
            top = top[np.argsort(-row[top])]
            results.append([Neighbour(self._ids[i], float(row[i])) for i in top if row[i] >= min_cosine])
        return results
