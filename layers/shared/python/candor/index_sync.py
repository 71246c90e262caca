"""A collection's warm vector index kept in step with its faces, and its snapshot kept in the index bucket.

The faces table is the truth; the index is derived from it. A cold search function loads the collection's
latest snapshot (the persisted index: vectors, ids and the HNSW graph, so nothing is rebuilt) and then
applies the difference with the table: faces added since the snapshot are added, faces deleted since are
removed, before the first search. A warm one applies the same difference whenever the collection's
`index_version` changes. So a fresh face is searchable as soon as it is in the table, and a deleted face is
never returned once its deletion returned, across restarts too: a stale snapshot only costs a larger diff.
The table is read through its ByCollection index, which on AWS may lag a deletion for a moment; a search
therefore checks its hits against the table itself before returning them (candor/search.py, CollectionFaces).

Snapshots are published by the search function itself once enough has changed since the last one, in the
background, so no request waits for the upload.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

import numpy as np

from candor.faces import FaceRecord
from candor.index import VectorIndex, load_index, new_index
from candor.ports import IndexSnapshotStore
from candor.settings import INDEX_SHARD_SIZE, SNAPSHOT_MIN_CHANGES, SNAPSHOT_MIN_FACES

logger = logging.getLogger(__name__)


def apply_faces(index: VectorIndex, records: Mapping[str, FaceRecord]) -> int:
    """Makes `index` hold exactly the faces of `records` (with their current embeddings); returns how many
    faces it added, replaced or removed."""
    gone = [face_id for face_id in index.face_ids() if face_id not in records]
    index.remove(gone)
    kept = [face_id for face_id in records if face_id in index]
    changed = []
    for start in range(0, len(kept), 65536):  # bounded memory: a block of stored vectors at a time
        block = kept[start : start + 65536]
        stored = index.vectors(block)
        changed += [
            face_id
            for face_id, vector in zip(block, stored, strict=True)
            if not np.array_equal(vector, np.asarray(records[face_id].embedding, dtype=np.float32))
        ]
    added = [face_id for face_id in records if face_id not in index] + changed
    if added:
        index.add(added, np.stack([np.asarray(records[face_id].embedding, dtype=np.float32) for face_id in added]))
    return len(gone) + len(added)


class IndexSync:
    """Loads a collection's index (snapshot, then the table's difference) and publishes new snapshots."""

    def __init__(
        self,
        snapshots: IndexSnapshotStore | None = None,
        *,
        shard_size: int = INDEX_SHARD_SIZE,
        work_dir: Path | None = None,
        snapshot_min_faces: int = SNAPSHOT_MIN_FACES,
        snapshot_min_changes: int = SNAPSHOT_MIN_CHANGES,
        background: bool = True,
    ) -> None:
        self._snapshots = snapshots
        self._shard_size = shard_size
        self._given_work_dir = work_dir
        self._snapshot_min_faces = snapshot_min_faces
        self._snapshot_min_changes = snapshot_min_changes
        self._background = background
        self._unpublished: dict[str, int] = {}  # changes since the snapshot this process loaded or wrote
        self._publishing: set[str] = set()
        self._fetches = 0

    def forget(self, collection_id: str) -> None:
        """A deleted collection: its snapshots go too."""
        self._unpublished.pop(collection_id, None)
        if self._snapshots is not None:
            self._snapshots.delete(collection_id)

    @cached_property
    def _work_dir(self) -> Path:
        # Made only when a snapshot is fetched or published: /tmp on Lambda.
        if self._given_work_dir is None:
            return Path(tempfile.mkdtemp(prefix="candor-index-"))
        self._given_work_dir.mkdir(parents=True, exist_ok=True)
        return self._given_work_dir

    def load(
        self, collection_id: str, records: Mapping[str, FaceRecord], current: VectorIndex | None, lock: threading.Lock
    ) -> VectorIndex:
        """`current` (or the snapshot, or a new index) made to hold exactly `records`. Called under `lock`."""
        index = current
        if index is None:
            index = self._from_snapshot(collection_id)
            if index is None:
                index = new_index(self._shard_size)
                self._unpublished[collection_id] = len(records)
        changes = apply_faces(index, records)
        self._unpublished[collection_id] = self._unpublished.get(collection_id, 0) + changes
        if self._should_publish(collection_id, index):
            self._publishing.add(collection_id)
            if self._background:
                # On Lambda the thread is frozen between invocations and resumes with the next one; if the
                # environment is reclaimed first, no manifest was written and the old snapshot stays current.
                threading.Thread(target=self._publish, args=(collection_id, index, lock), daemon=True).start()
            else:
                self._publish(collection_id, index, None)
        return index

    def _from_snapshot(self, collection_id: str) -> VectorIndex | None:
        if self._snapshots is None:
            return None
        self._fetches += 1
        directory = self._work_dir / collection_id / f"fetched-{self._fetches}"
        try:
            if not self._snapshots.fetch(collection_id, directory):
                return None
            index = load_index(directory)
        except Exception:
            # A broken or half-fetched snapshot costs a rebuild from the table, never a wrong answer.
            logger.exception("snapshot of %s could not be loaded; rebuilding from the table", collection_id)
            shutil.rmtree(directory, ignore_errors=True)
            return None
        self._unpublished[collection_id] = 0
        return index

    def _should_publish(self, collection_id: str, index: VectorIndex) -> bool:
        return (
            self._snapshots is not None
            and collection_id not in self._publishing
            and len(index) >= self._snapshot_min_faces
            and self._unpublished.get(collection_id, 0) >= max(1, min(self._snapshot_min_changes, len(index)))
        )

    def _publish(self, collection_id: str, index: VectorIndex, lock: threading.Lock | None) -> None:
        assert self._snapshots is not None
        directory = Path(tempfile.mkdtemp(prefix="publish-", dir=self._work_dir))
        try:
            # Persisting reads the index; loads (the only writers) wait meanwhile, searches do not.
            if lock is not None:
                with lock:
                    index.persist(directory / "index")
                    changes = self._unpublished.get(collection_id, 0)
            else:
                index.persist(directory / "index")
                changes = self._unpublished.get(collection_id, 0)
            self._snapshots.publish(collection_id, directory / "index")
            self._unpublished[collection_id] = self._unpublished.get(collection_id, 0) - changes
        except Exception:
            logger.exception("snapshot of %s not published; the next load tries again", collection_id)
        finally:
            self._publishing.discard(collection_id)
            shutil.rmtree(directory, ignore_errors=True)
