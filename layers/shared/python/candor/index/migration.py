"""Moving a collection between engines (candor/index/engines.py) without losing a face or a search.

Searches keep going to the engine the collection is on until the very end; the new one is brought up to date
beside it, and the switch is one conditional write that succeeds only if nothing changed since the new engine
last caught up:

1. The target is filled from the faces table: to S3 Vectors, the faces its index lacks are put (500 a call,
   backed off on throttling), and keys the table no longer holds are deleted, so a migration that was cut
   short resumes where it stopped; into the function, an HNSW index is built.
2. The change log since the listing is applied to it (faces added, deleted, erased meanwhile), until
   3. the collection's engine is set to the target on condition its change number is still the one applied.
   A change that slipped in between fails the condition: back to 2.
4. A snapshot of the new engine's index is published, so cold search functions start from it; warm ones see
   the engine change on their next request and take the new index (to S3 Vectors without a rebuild: its
   vectors are already there).
5. Leaving S3 Vectors, its index is deleted: the vectors must not outlive their use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from candor.core.errors import ResourceNotFoundError
from candor.core.settings import EMBEDDING_SIZE
from candor.index.engines import validate_engine
from candor.index.s3vectors import ENGINE as S3VECTORS
from candor.index.s3vectors import S3VectorsIndex, index_name
from candor.index.sync import IndexSync, apply_changes, rebuild
from candor.index.vectors import HnswVectorIndex, VectorIndex
from candor.ports import CollectionRepository, FaceRepository, IndexSnapshotStore, VectorStore

logger = logging.getLogger(__name__)
MAX_ROUNDS = 50


@dataclass
class Migration:
    collection_id: str
    source: str
    target: str
    faces: int = 0  # in the target when it took over
    written: int = 0  # faces put into (or removed from) the target by this run
    rounds: int = 0  # catch-ups of the change log before the switch held
    moved: bool = False


def migrate_collection(
    collection_id: str,
    target: str,
    *,
    collections: CollectionRepository,
    faces: FaceRepository,
    vector_store: VectorStore | None,
    snapshots: IndexSnapshotStore | None = None,
    dimension: int = EMBEDDING_SIZE,
    progress: Callable[[str], None] = logger.info,
) -> Migration:
    """Moves the collection to `target` ("in-function" or "s3vectors"); nothing when it is there already."""
    target = validate_engine(target)
    collection = collections.get(collection_id)
    if collection is None:
        raise ResourceNotFoundError(f"collection {collection_id!r} does not exist")
    collection = replace(collection)  # a copy: the repository's may be changed in place
    result = Migration(collection_id, collection.index_engine, target)
    if collection.index_engine == target:
        return result
    if S3VECTORS in (target, collection.index_engine) and vector_store is None:
        raise ValueError("moving a collection to or from S3 Vectors needs the stack's vector bucket")
    index: VectorIndex
    if target == S3VECTORS:
        assert vector_store is not None
        index = S3VectorsIndex.open(vector_store, replace(collection, index_engine=target), dimension)
    else:
        index = HnswVectorIndex(dimension)
    before = len(index)
    progress(f"{collection_id}: filling the {target} index from the faces table")
    warm, written = rebuild(collection, index, faces, collections)
    result.written = written
    while True:
        result.rounds += 1
        current = collections.get(collection_id)
        if current is None or current.created_at != collection.created_at:
            raise ResourceNotFoundError(f"collection {collection_id!r} was deleted during the migration")
        if current.change_seq > warm.change_seq:
            missed = collections.changes(collection_id, warm.change_seq, current.change_seq)
            if [c.seq for c in missed] != list(range(warm.change_seq + 1, current.change_seq + 1)):
                warm, written = rebuild(current, warm.index, faces, collections)
            else:
                written = apply_changes(warm, missed, faces, collection_id)
                warm.change_seq = current.change_seq
            result.written += written
        if collections.set_index_engine(collection_id, target, warm.change_seq):
            break
        if result.rounds >= MAX_ROUNDS:
            raise RuntimeError(f"{collection_id} kept changing: the migration gave up after {MAX_ROUNDS} rounds")
    result.moved, result.faces = True, len(warm.index)
    progress(f"{collection_id}: on {target} ({result.faces} faces; {result.written} written, {before} there before)")
    if snapshots is not None:
        IndexSync(snapshots).republish(collection_id, warm)
    if result.source == S3VECTORS and vector_store is not None:
        vector_store.delete_index(index_name(collection))
    return result
