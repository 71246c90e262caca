"""Where a collection's index lives: in the search function, or, once a collection has more than one shard
and a shard function is configured (AWS), one shard per shard function invocation.

A face's shard is fixed when it is enrolled: the n-th face a collection ever enrolled lives in shard
n // shard_size (candor/indexing.py, shards_for). So every function agrees where a face is without asking,
a collection grows by opening a new shard and never by rebuilding one, and each shard can be loaded, kept up
to date from the change log and rebuilt (from the faces table's ByShard index) on its own.

With a shard function, the search function keeps only the collection's face directory (ids, names, users)
and a `RemoteShards` in place of the vectors: a search is one invocation per shard, in parallel, each
answering its top-k with exact cosines, merged in the one total order every engine uses, so the answer is
the one a single index gives. Each shard function instance keeps its shard warm the way the search
function keeps a collection (candor/index/sync.py), and publishes the shard's own snapshot.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from candor.core.errors import InvalidParameterError
from candor.core.settings import EMBEDDING_SIZE
from candor.index.vectors import HnswVectorIndex, Neighbour, VectorIndex, load_index, merge_top_k, new_index
from candor.ports import Collection, FaceRepository

REMOTE_ENGINE = "remote"
# Beside the persisted index in a snapshot: the face directory and the change number (candor/index/sync.py).
SNAPSHOT_FACES_FILE = "collection.json"

logger = logging.getLogger(__name__)


def shard_count(collection: Collection) -> int:
    """How many shards the collection's enrolment numbers have opened (at least one)."""
    return max(1, math.ceil(collection.faces_allocated / max(collection.shard_size, 1)))


def snapshot_name(collection_id: str, shard: int | None, index: VectorIndex | None = None) -> str:
    """The snapshot store's name for a collection's index, for one shard of it, or for the face directory of a
    collection whose shards are in shard functions: that one has a name of its own, so the last snapshot
    with every shard's vectors stays where shards that have none of their own yet start from."""
    if shard is not None:
        return f"{collection_id}/shard-{shard:04d}"
    return f"{collection_id}/directory" if isinstance(index, RemoteShards) else collection_id


class ShardInvoker(Protocol):
    """Runs one shard's request (the shard function on AWS): a search, or a purge of its snapshots."""

    def call_shard(self, request: dict[str, Any]) -> dict[str, Any]: ...


class IndexEngine(Protocol):
    """Which index a collection (or one shard of it) gets, and whether the one it has still suits it."""

    def new(self, collection: Collection, shard: int | None) -> VectorIndex: ...

    def snapshot_files(self, collection: Collection, shard: int | None) -> tuple[str, ...]:
        """The files of a snapshot `load` needs (empty: all of them)."""
        ...

    def load(self, directory: Path, collection: Collection, shard: int | None, face_ids: list[str]) -> VectorIndex:
        """The index persisted in `directory`, whose faces are `face_ids`."""
        ...

    def suits(self, index: VectorIndex, collection: Collection, shard: int | None) -> bool: ...

    def adopt(self, index: VectorIndex, collection: Collection, shard: int | None) -> VectorIndex | None:
        """An index that suits, made from `index` without reading the faces table; None when there is none."""
        ...


class InProcessEngine:
    """Every shard in this process, searched by a thread pool (locally, and on AWS without a shard function);
    one shard alone when `shard` is given (the shard function)."""

    def new(self, collection: Collection, shard: int | None) -> VectorIndex:
        return HnswVectorIndex() if shard is not None else new_index(collection.shard_size)

    def snapshot_files(self, collection: Collection, shard: int | None) -> tuple[str, ...]:
        return ()

    def load(self, directory: Path, collection: Collection, shard: int | None, face_ids: list[str]) -> VectorIndex:
        return load_index(directory)

    def suits(self, index: VectorIndex, collection: Collection, shard: int | None) -> bool:
        return not isinstance(index, RemoteShards)

    def adopt(self, index: VectorIndex, collection: Collection, shard: int | None) -> VectorIndex | None:
        return None


class ShardFunctionEngine(InProcessEngine):
    """A collection of one shard stays in the search function; past that, each shard is searched by an
    invocation of the shard function, and the search function keeps no vectors."""

    def __init__(self, invoker: ShardInvoker, faces: FaceRepository) -> None:
        self._invoker = invoker
        self._faces = faces

    def new(self, collection: Collection, shard: int | None) -> VectorIndex:
        if self._remote(collection, shard):
            return RemoteShards(collection, self._invoker, self._faces)
        return super().new(collection, shard)

    def snapshot_files(self, collection: Collection, shard: int | None) -> tuple[str, ...]:
        # Past one shard only the face directory is read, whichever kind of index the snapshot holds.
        return (SNAPSHOT_FACES_FILE,) if self._remote(collection, shard) else ()

    def load(self, directory: Path, collection: Collection, shard: int | None, face_ids: list[str]) -> VectorIndex:
        if self._remote(collection, shard):
            return RemoteShards(collection, self._invoker, self._faces, face_ids)
        return super().load(directory, collection, shard, face_ids)

    def suits(self, index: VectorIndex, collection: Collection, shard: int | None) -> bool:
        return isinstance(index, RemoteShards) == self._remote(collection, shard)

    def adopt(self, index: VectorIndex, collection: Collection, shard: int | None) -> VectorIndex | None:
        # A collection that opened its second shard: its shard functions take the vectors from here on.
        if self._remote(collection, shard) and not isinstance(index, RemoteShards):
            return RemoteShards(collection, self._invoker, self._faces, index.face_ids())
        return None

    @staticmethod
    def _remote(collection: Collection, shard: int | None) -> bool:
        return shard is None and shard_count(collection) > 1


class RemoteShards:
    """A collection's index whose vectors live in its shards' functions: this keeps the face ids, searches by
    invoking every shard in parallel, and reads a face's vector from the faces table when asked for it."""

    engine = REMOTE_ENGINE

    def __init__(
        self,
        collection: Collection,
        invoker: ShardInvoker,
        faces: FaceRepository,
        face_ids: Sequence[str] = (),
    ) -> None:
        self.collection = collection  # set again by each load: the change number the shards must reach
        self._invoker = invoker
        self._faces = faces
        self._ids = set(face_ids)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, face_id: object) -> bool:
        return face_id in self._ids

    def face_ids(self) -> list[str]:
        return list(self._ids)

    def add(self, face_ids: Sequence[str], vectors: np.ndarray, shards: Sequence[int] | None = None) -> None:
        self._ids.update(face_ids)  # the vectors are the shards' to keep

    def remove(self, face_ids: Sequence[str]) -> None:
        self._ids.difference_update(face_ids)

    def vectors(self, face_ids: Sequence[str]) -> np.ndarray:
        records = self._faces.get_many(list(face_ids))
        missing = [face_id for face_id in face_ids if face_id not in records]
        if missing:
            # Deleted since the directory was read: what the in-process index's existence check says too.
            raise InvalidParameterError(f"face {missing[0]!r} is not in collection {self.collection.collection_id!r}")
        return np.stack([np.asarray(records[face_id].embedding, dtype=np.float32) for face_id in face_ids])

    def search(self, queries: np.ndarray, k: int, min_cosine: float) -> list[list[Neighbour]]:
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, EMBEDDING_SIZE)
        if not self._ids or k <= 0:
            return [[] for _ in range(len(queries))]
        count = shard_count(self.collection)
        requests = [shard_request(self.collection, n, queries, k, min_cosine) for n in range(count)]
        if self._pool is None or self._pool_size < count:
            # One thread per shard: each waits on its invocation, the searching is done in the shards.
            self._pool_size = count
            self._pool = ThreadPoolExecutor(max_workers=count)
        answers = list(self._pool.map(self._ask, requests))
        per_shard = [shard_neighbours(answer, len(queries)) for answer in answers]
        return [merge_top_k([shard[q] for shard in per_shard], k) for q in range(len(queries))]

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._invoker.call_shard(request)

    def purge_shards(self) -> list[int]:
        """Asks every shard to replace its snapshots with one of itself as it is now (after an erasure: the old
        ones hold the erased vectors). Returns the shards that failed to."""
        count = shard_count(self.collection)
        empty = np.empty((0, EMBEDDING_SIZE), dtype=np.float32)
        requests = [{**shard_request(self.collection, n, empty, 1, 1.0), "purge": True} for n in range(count)]
        with ThreadPoolExecutor(max_workers=count) as pool:
            outcomes = list(pool.map(self._try, requests))
        return [n for n, done in enumerate(outcomes) if not done]

    def _try(self, request: dict[str, Any]) -> bool:
        try:
            self._ask(request)
        except Exception:
            logger.exception("shard %s of %s could not purge its snapshots", request["shard"], request["collection_id"])
            return False
        return True

    def memory_bytes(self) -> int:
        return sum(49 + len(face_id) + 100 for face_id in self._ids)

    def persist(self, directory: Path) -> None:
        # Only that the vectors are elsewhere: the face ids are in the snapshot's face directory.
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "index.json").write_text(json.dumps({"engine": REMOTE_ENGINE, "count": len(self)}))


def shard_request(collection: Collection, shard: int, queries: np.ndarray, k: int, min_cosine: float) -> dict[str, Any]:
    """What a shard function is asked: the collection as the caller read it (so the shard reaches the same
    change number without reading it again), the shard, and the queries as little-endian float32."""
    return {
        "collection_id": collection.collection_id,
        "created_at": collection.created_at,
        "change_seq": collection.change_seq,
        "shard_size": collection.shard_size,
        "faces_allocated": collection.faces_allocated,
        "shard": shard,
        "queries": base64.b64encode(np.asarray(queries, dtype="<f4").tobytes()).decode(),
        "k": k,
        "min_cosine": min_cosine,
    }


def shard_neighbours(answer: dict[str, Any], query_count: int) -> list[list[Neighbour]]:
    found = answer["neighbours"]
    if len(found) != query_count:
        raise ValueError(f"a shard answered {len(found)} queries of {query_count}")
    return [[Neighbour(str(face_id), float(cosine)) for face_id, cosine in hits] for hits in found]


def parse_shard_request(request: dict[str, Any]) -> tuple[Collection, int, np.ndarray, int, float]:
    collection = Collection(
        collection_id=str(request["collection_id"]),
        created_at=str(request["created_at"]),
        face_model_version="",
        change_seq=int(request["change_seq"]),
        shard_size=int(request["shard_size"]),
        faces_allocated=int(request["faces_allocated"]),
    )
    queries = np.frombuffer(base64.b64decode(request["queries"]), dtype="<f4").reshape(-1, EMBEDDING_SIZE)
    return collection, int(request["shard"]), queries, int(request["k"]), float(request["min_cosine"])


def shard_answer(neighbours: list[list[Neighbour]]) -> dict[str, Any]:
    # Cosines as Python floats: JSON keeps a float64 exactly, so shards merge as one index would rank them.
    return {"neighbours": [[[hit.face_id, hit.cosine] for hit in hits] for hits in neighbours]}
