"""A vector index per collection: add, remove, search top-k above a cosine cut-off, persist, load.

The in-function engines behind one interface (`VectorIndex`; the S3 Vectors engine, for collections too large
for one function, is candor/index/s3vectors.py), chosen on measurements (docs/benchmarks.md, "Search index"):

- `ExactVectorIndex`: float32 rows and one matrix product. Exact; the baseline, and the reference the others
  are measured against.
- `HnswVectorIndex`: what collections use. Exact brute force while a collection is small; past
  `HNSW_MIN_FACES` faces an HNSW graph (usearch) over int8 copies of the vectors proposes candidates, which
  are rescored with the float32 vectors, so every reported cosine (and so every threshold decision) is exact.
  Resident memory per face: the graph (int8 vector, 512 B, and links: ~790 B) + the face id and its maps
  (~470 B); the float32 vectors (2 KB per face) are read from a memory-mapped file once the index has been
  persisted and loaded.

Order is total: by cosine descending, then face id, so every engine answers the same.
"""

from __future__ import annotations

import heapq
import importlib.util
import json
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from candor.core.settings import (
    EMBEDDING_SIZE,
    HNSW_CONNECTIVITY,
    HNSW_EXPANSION_ADD,
    HNSW_EXPANSION_SEARCH,
    HNSW_METRIC,
    HNSW_MIN_FACES,
    HNSW_RESCORE_CANDIDATES,
)

_META = "index.json"
_VECTORS = "vectors.npy"
_IDS = "ids.json"
_GRAPH = "graph.usearch"


@dataclass(frozen=True)
class Neighbour:
    face_id: str
    cosine: float


class VectorIndex(Protocol):
    """A collection's vectors, searchable (the vector-index port: in-function engines here, S3 Vectors in
    candor/index/s3vectors.py). `engine` names it; `shared` is True for an index other functions write too."""

    engine: str
    shared: bool

    def add(
        self, face_ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None
    ) -> None:
        """Adds (or replaces) faces; `metadata`: what an index that keeps it stores beside each vector."""
        ...

    def remove(self, face_ids: Sequence[str]) -> None: ...

    def search(self, queries: np.ndarray, k: int, min_cosine: float) -> list[list[Neighbour]]: ...

    def persist(self, directory: Path) -> None: ...

    def face_ids(self) -> list[str]: ...

    def vectors(self, face_ids: Sequence[str]) -> np.ndarray:
        """The stored float32 vectors of these faces (each must be in the index)."""
        ...

    def memory_bytes(self) -> int: ...

    def __contains__(self, face_id: object) -> bool: ...

    def __len__(self) -> int: ...


def load_index(directory: Path) -> VectorIndex:
    """Whatever engine `persist` wrote into `directory`."""
    meta = json.loads((Path(directory) / _META).read_text())
    loaders: dict[str, Callable[[Path], VectorIndex]] = {
        "exact": ExactVectorIndex.load,
        "hnsw": HnswVectorIndex.load,
    }
    if meta.get("engine") not in loaders:
        raise ValueError(f"{directory}: no in-function index ({meta.get('engine')!r})")
    return loaders[meta["engine"]](Path(directory))


def exact_cosines(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    # In float64, one row at a time (no BLAS blocking): the same face scores the same bits in every engine.
    return (np.asarray(rows, dtype=np.float64) * np.asarray(query, dtype=np.float64)).sum(axis=1)


def _ranked(face_ids: Sequence[str], cosines: np.ndarray, k: int, min_cosine: float) -> list[Neighbour]:
    found = [Neighbour(face_id, float(c)) for face_id, c in zip(face_ids, cosines, strict=True) if c >= min_cosine]
    return heapq.nsmallest(k, found, key=lambda n: (-n.cosine, n.face_id))


class _Rows:
    """Float32 rows by key, append-only: a read-only base (memory-mapped after `load`) plus a growing tail."""

    def __init__(self, dimension: int, base: np.ndarray | None = None) -> None:
        self.dimension = dimension
        self.base = base if base is not None else np.empty((0, dimension), dtype=np.float32)
        self._tail = np.empty((0, dimension), dtype=np.float32)
        self._tail_len = 0

    def __len__(self) -> int:
        return len(self.base) + self._tail_len

    def append(self, rows: np.ndarray) -> None:
        needed = self._tail_len + len(rows)
        if needed > len(self._tail):
            # Doubling keeps appends amortised O(1) without holding a list of small arrays.
            grown = np.empty((max(needed, 2 * len(self._tail), 64), self.dimension), dtype=np.float32)
            grown[: self._tail_len] = self._tail[: self._tail_len]
            self._tail = grown
        self._tail[self._tail_len : needed] = rows
        self._tail_len = needed

    def take(self, keys: np.ndarray) -> np.ndarray:
        if not self._tail_len:
            return np.asarray(self.base[keys])
        if not len(self.base):
            return self._tail[keys]
        out = np.empty((len(keys), self.dimension), dtype=np.float32)
        in_base = keys < len(self.base)
        out[in_base] = self.base[keys[in_base]]
        out[~in_base] = self._tail[keys[~in_base] - len(self.base)]
        return out

    def chunks(self, size: int = 65536) -> Any:
        """(first key, float32 rows) in order, a bounded number of rows at a time."""
        for start in range(0, len(self.base), size):
            yield start, np.asarray(self.base[start : start + size])
        for start in range(0, self._tail_len, size):
            yield len(self.base) + start, self._tail[start : min(start + size, self._tail_len)]

    def resident_bytes(self) -> int:
        base = 0 if isinstance(self.base, np.memmap) else self.base.nbytes
        return base + self._tail_len * self.dimension * 4

    def save(self, path: Path) -> None:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(self), self.dimension))
        for start, rows in self.chunks():
            out[start : start + len(rows)] = rows
        out.flush()
        del out


class _KeyedIndex:
    """Face ids to stable integer keys (row numbers); a removed face's key is never reused."""

    engine = ""
    shared = False

    def __init__(self, dimension: int, rows: _Rows | None = None, ids: list[str] | None = None) -> None:
        self._dimension = dimension
        self._rows = rows or _Rows(dimension)
        self._ids: list[str] = ids or []  # key -> face id, "" once removed
        self._key_of = {face_id: key for key, face_id in enumerate(self._ids) if face_id}
        self._alive = np.array([bool(face_id) for face_id in self._ids], dtype=bool)

    def __len__(self) -> int:
        return len(self._key_of)

    def __contains__(self, face_id: object) -> bool:
        return face_id in self._key_of

    def face_ids(self) -> list[str]:
        return list(self._key_of)

    def vectors(self, face_ids: Sequence[str]) -> np.ndarray:
        return self._rows.take(np.array([self._key_of[face_id] for face_id in face_ids], dtype=np.int64))

    def add(
        self, face_ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None
    ) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self._dimension)
        if len(face_ids) != len(vectors):
            raise ValueError(f"{len(face_ids)} ids for {len(vectors)} vectors")
        if len(set(face_ids)) != len(face_ids):
            raise ValueError("a face id appears twice in one add")
        if not face_ids:
            return
        # Adding a face id again replaces its vector: the pipeline may deliver a face twice.
        self.remove([face_id for face_id in face_ids if face_id in self._key_of])
        first = len(self._ids)
        keys = np.arange(first, first + len(face_ids), dtype=np.uint64)
        self._rows.append(vectors)
        self._ids.extend(face_ids)
        self._key_of.update(zip(face_ids, range(first, first + len(face_ids)), strict=True))
        self._alive = np.concatenate([self._alive, np.ones(len(face_ids), dtype=bool)])
        self._added(keys, vectors)

    def remove(self, face_ids: Sequence[str]) -> None:
        keys = [self._key_of.pop(face_id) for face_id in face_ids if face_id in self._key_of]
        if not keys:
            return
        for key in keys:
            self._ids[key] = ""
        self._alive[keys] = False
        self._removed(np.asarray(keys, dtype=np.uint64))

    def _added(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        pass

    def _removed(self, keys: np.ndarray) -> None:
        pass

    def _exact(self, queries: np.ndarray, k: int, min_cosine: float) -> list[list[Neighbour]]:
        """Brute force over every live row: candidates by a float32 matrix product, then exact rescoring."""
        # A margin of extra candidates: float32 and float64 scores may swap neighbours that almost tie.
        count = min(k + 8, len(self._key_of))
        best: list[list[tuple[float, int]]] = [[] for _ in queries]
        for start, rows in self._rows.chunks():
            scores = queries @ rows.T
            scores[:, ~self._alive[start : start + len(rows)]] = -np.inf
            take = min(count, scores.shape[1])
            top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
            for q, keys in enumerate(top):
                best[q].extend((float(scores[q, key]), start + int(key)) for key in keys)
        results = []
        for query, candidates in zip(queries, best, strict=True):
            keys = np.array([key for _, key in heapq.nlargest(count, candidates)], dtype=np.int64)
            keys = keys[self._alive[keys]]
            results.append(self._rescored(query, keys, k, min_cosine))
        return results

    def _rescored(self, query: np.ndarray, keys: np.ndarray, k: int, min_cosine: float) -> list[Neighbour]:
        if not len(keys):
            return []
        cosines = exact_cosines(self._rows.take(keys), query)
        return _ranked([self._ids[key] for key in keys], cosines, k, min_cosine)

    def _save_common(self, directory: Path, meta: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._rows.save(directory / _VECTORS)
        (directory / _IDS).write_text(json.dumps(self._ids))
        # Written last: a directory without it is an unfinished snapshot and never loaded.
        (directory / _META).write_text(json.dumps({"dimension": self._dimension, "count": len(self), **meta}))

    @staticmethod
    def _load_common(directory: Path) -> tuple[dict[str, Any], _Rows, list[str]]:
        meta = json.loads((directory / _META).read_text())
        vectors = np.load(directory / _VECTORS, mmap_mode="r")
        ids = json.loads((directory / _IDS).read_text())
        if len(ids) != len(vectors):
            raise ValueError(f"{directory}: {len(ids)} ids for {len(vectors)} vectors")
        return meta, _Rows(int(meta["dimension"]), vectors), ids


class ExactVectorIndex(_KeyedIndex):
    """Float32 brute force: exact, ~2 KB per face, latency linear in the collection's size."""

    engine = "exact"

    def __init__(self, dimension: int = EMBEDDING_SIZE, rows: _Rows | None = None, ids: list[str] | None = None):
        super().__init__(dimension, rows, ids)

    def search(self, queries: np.ndarray, k: int, min_cosine: float) -> list[list[Neighbour]]:
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self._dimension)
        if not self._key_of or k <= 0:
            return [[] for _ in range(len(queries))]
        return self._exact(queries, k, min_cosine)

    def memory_bytes(self) -> int:
        return self._rows.resident_bytes() + _ids_bytes(self._ids)

    def persist(self, directory: Path) -> None:
        self._save_common(Path(directory), {"engine": self.engine})

    @classmethod
    def load(cls, directory: Path) -> ExactVectorIndex:
        _, rows, ids = cls._load_common(Path(directory))
        return cls(rows.dimension, rows, ids)


class HnswVectorIndex(_KeyedIndex):
    """Exact while small; past `min_graph_faces` an int8 HNSW graph proposes candidates, float32 rescores them."""

    engine = "hnsw"

    def __init__(
        self,
        dimension: int = EMBEDDING_SIZE,
        *,
        min_graph_faces: int = HNSW_MIN_FACES,
        connectivity: int = HNSW_CONNECTIVITY,
        expansion_add: int = HNSW_EXPANSION_ADD,
        expansion_search: int = HNSW_EXPANSION_SEARCH,
        rescore_candidates: int = HNSW_RESCORE_CANDIDATES,
        metric: str = HNSW_METRIC,
        threads: int = 0,
        rows: _Rows | None = None,
        ids: list[str] | None = None,
        graph: Any = None,
    ) -> None:
        super().__init__(dimension, rows, ids)
        self.min_graph_faces = min_graph_faces
        self.rescore_candidates = rescore_candidates
        self.metric = metric
        self._params = {
            "connectivity": connectivity,
            "expansion_add": expansion_add,
            "expansion_search": expansion_search,
        }
        self._threads = threads or os.cpu_count() or 1
        self._graph = graph
        self._lock = threading.Lock()  # usearch allows concurrent searches, not a search during an add
        if self._graph is None and len(self) > self.min_graph_faces:
            self._build_graph()

    def _new_graph(self) -> Any:
        _load_onnxruntime_first()
        from usearch.index import Index  # imported late: the exact engines and the tests of them need no usearch

        return Index(
            ndim=self._dimension,
            metric=self.metric,
            dtype="i8",
            connectivity=self._params["connectivity"],
            expansion_add=self._params["expansion_add"],
            expansion_search=self._params["expansion_search"],
        )

    def _build_graph(self) -> None:
        graph = self._new_graph()
        for start, rows in self._rows.chunks():
            alive = self._alive[start : start + len(rows)]
            keys = np.arange(start, start + len(rows), dtype=np.uint64)[alive]
            if len(keys):
                graph.add(keys, np.ascontiguousarray(rows[alive]), threads=self._threads)
        self._graph = graph

    def _added(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        with self._lock:
            if self._graph is not None:
                self._graph.add(keys, vectors, threads=self._threads)
            elif len(self) > self.min_graph_faces:
                self._build_graph()

    def _removed(self, keys: np.ndarray) -> None:
        # The graph keeps a removed key as a tombstone for routing; `_alive` guards the results too.
        with self._lock:
            if self._graph is not None:
                self._graph.remove(keys)

    def search(self, queries: np.ndarray, k: int, min_cosine: float) -> list[list[Neighbour]]:
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self._dimension)
        if not self._key_of or k <= 0:
            return [[] for _ in range(len(queries))]
        if self._graph is None:
            return self._exact(queries, k, min_cosine)
        count = min(max(k, self.rescore_candidates), len(self._key_of))
        with self._lock:
            # One thread per query at most: a single query gains nothing from a second thread but its start.
            found = self._graph.search(queries, count, threads=min(self._threads, len(queries)))
        # usearch answers one query with `Matches` (no counts), several with `BatchMatches`.
        keys_by_query = np.atleast_2d(found.keys)
        counts = np.atleast_1d(getattr(found, "counts", len(found.keys)))
        results = []
        for query, keys, n in zip(queries, keys_by_query, counts, strict=True):
            keys = keys[:n].astype(np.int64)
            results.append(self._rescored(query, keys[self._alive[keys]], k, min_cosine))
        return results

    def set_expansion_search(self, expansion: int) -> None:
        """How many nodes a search keeps on its frontier: recall against latency, no rebuild."""
        self._params["expansion_search"] = expansion
        if self._graph is not None:
            self._graph.expansion_search = expansion

    def memory_bytes(self) -> int:
        graph = int(self._graph.memory_usage) if self._graph is not None else 0
        return graph + self._rows.resident_bytes() + _ids_bytes(self._ids) + self._alive.nbytes

    def persist(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self._graph is not None:
            self._graph.save(str(directory / _GRAPH))
        meta = {"engine": self.engine, "graph": self._graph is not None, "min_graph_faces": self.min_graph_faces}
        meta |= {"rescore_candidates": self.rescore_candidates, "metric": self.metric}
        self._save_common(directory, {**meta, **self._params})

    @classmethod
    def load(cls, directory: Path) -> HnswVectorIndex:
        directory = Path(directory)
        meta, rows, ids = cls._load_common(directory)
        index = cls(
            rows.dimension,
            min_graph_faces=int(meta["min_graph_faces"]),
            connectivity=int(meta["connectivity"]),
            expansion_add=int(meta["expansion_add"]),
            expansion_search=int(meta["expansion_search"]),
            rescore_candidates=int(meta["rescore_candidates"]),
            metric=str(meta.get("metric", "cos")),  # snapshots written before the metric was recorded
            rows=rows,
            ids=ids,
            graph=False if meta["graph"] else None,  # placeholder: no rebuild, the graph is read below
        )
        if meta["graph"]:
            graph = index._new_graph()
            graph.load(str(directory / _GRAPH))
            index._graph = graph
        return index


def remove_directory(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def _ids_bytes(ids: list[str]) -> int:
    # A str of n ASCII characters costs 49 + n bytes in CPython; a dict slot and a list slot about 100 more.
    return sum(49 + len(face_id) + 100 for face_id in ids)


def _load_onnxruntime_first() -> None:
    """usearch 2.26 loaded before onnxruntime 1.31 makes onnxruntime's own import crash the process
    (a segmentation fault, whatever the index did); loaded the other way round both work. The functions
    load their models before any graph, but a process that builds a graph first (a benchmark, a tool)
    must not die later when it loads a model."""
    if importlib.util.find_spec("onnxruntime") is not None:
        importlib.import_module("onnxruntime")
