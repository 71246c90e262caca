"""A collection's warm vector index kept in step with its faces, and its snapshot kept in the index bucket.

The faces table is the truth; the index is derived from it. Every change to what a collection's searches can
return (faces added or removed, faces given to a user or taken from one) is appended to the collection's
change log and numbered; the collection records the latest number (`change_seq`). A warm search function
that has applied changes up to N reads entries N+1 onwards and applies only those: the records of added
faces are read from the table (one consistent BatchGetItem), removed faces leave the index. So a fresh face
is searchable as soon as its change is logged, a deleted face is never returned once its deletion returned,
and a reload costs the size of the change, not of the collection.

A cold function loads the collection's latest snapshot (the persisted index, the faces' ids, names and
users, and the change number it reflects), then applies the log from that number. When the log no longer
holds every entry it needs (they expire after CHANGE_LOG_DAYS), or there is no snapshot, it rebuilds from
the table's ByCollection index. That index is eventually consistent on AWS, so a rebuild replays the latest
REBUILD_REPLAY_CHANGES entries after listing, and a search checks its hits against the table itself before
returning them (CollectionFaces.existing).

The warm state holds no embeddings besides the index's own vectors: per face, an id, a name, a photo id and
a user id (about 300 bytes), so a 1M-face collection fits beside its index. A collection on S3 Vectors
(candor/index/engines.py) keeps the same directory here and its vectors there: applying a change writes them
to its vector index, and a rebuild compares the vector index's keys with the table's faces, so it re-puts
only what is missing and deletes what the table no longer holds.

Snapshots are published by the search function itself once enough has changed since the last one, in the
background, so no request waits for the upload.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np

from candor.core.faces import FaceRecord
from candor.core.settings import CHANGE_LOG_DAYS, SNAPSHOT_MIN_CHANGES, SNAPSHOT_MIN_FACES
from candor.index.engines import IndexEngines
from candor.index.s3vectors import face_metadata
from candor.index.vectors import VectorIndex
from candor.ports import ChangeLog, Collection, FaceRepository, IndexChange, IndexSnapshotStore

logger = logging.getLogger(__name__)

# Entries replayed after a rebuild from the ByCollection index, which may not list the newest faces yet.
REBUILD_REPLAY_CHANGES = 1_000
SNAPSHOT_MAX_AGE_S = CHANGE_LOG_DAYS * 86_400 / 2
_BLOCK = 65_536  # faces per block when a rebuild compares or adds vectors: bounded memory
# Beside the persisted index in a snapshot: the face directory and the change number.
SNAPSHOT_FACES_FILE = "collection.json"


class FaceEntry(NamedTuple):
    """What a warm collection keeps of a face besides its vector: what a match reports, and whose it is."""

    face_id: str
    external_image_id: str | None
    photo_id: str
    user_id: str | None

    @classmethod
    def of(cls, face: FaceRecord) -> FaceEntry:
        # Names and user ids repeat across a person's faces: one string object each.
        return cls(face.face_id, _interned(face.external_image_id), face.photo_id, _interned(face.user_id))


class CollectionFaces(dict[str, FaceEntry]):
    """A collection's faces by id as the warm index last applied them. On AWS the table's ByCollection index
    is eventually consistent, so a search checks the few faces it is about to return against the table
    itself (`existing`); whatever else a caller needs of a face it reads from the table (`records`)."""

    def __init__(self, table: FaceRepository, entries: Iterable[tuple[str, FaceEntry]] = ()) -> None:
        super().__init__(entries)
        self._table = table

    def existing(self, face_ids: Iterable[str]) -> set[str]:
        """Which of these faces are still in the table: one consistent read of only these ids."""
        wanted = list(dict.fromkeys(face_ids))
        return self._table.existing(wanted) if wanted else set()

    def records(self, face_ids: Sequence[str]) -> list[FaceRecord]:
        """The full records of those of these faces still in the table, read consistently, in the same order."""
        found = self._table.get_many(list(face_ids)) if face_ids else {}
        return [found[face_id] for face_id in face_ids if face_id in found]

    def of_user(self, user_id: str) -> list[str]:
        return [face_id for face_id, entry in self.items() if entry.user_id == user_id]


@dataclass
class WarmCollection:
    """A collection's index and faces as of change number `change_seq`."""

    created_at: str  # the collection's: one deleted and created again under the same id is another collection
    change_seq: int
    index: VectorIndex
    faces: CollectionFaces


class IndexSync:
    """Brings a collection's warm index up to date (snapshot, then the change log, or a rebuild from the
    table) and publishes new snapshots."""

    def __init__(
        self,
        snapshots: IndexSnapshotStore | None = None,
        *,
        engines: IndexEngines | None = None,
        work_dir: Path | None = None,
        snapshot_min_faces: int = SNAPSHOT_MIN_FACES,
        snapshot_min_changes: int = SNAPSHOT_MIN_CHANGES,
        background: bool = True,
    ) -> None:
        self._snapshots = snapshots
        self._engines = engines or IndexEngines()
        self._given_work_dir = work_dir
        self._snapshot_min_faces = snapshot_min_faces
        self._snapshot_min_changes = snapshot_min_changes
        self._background = background
        self._unpublished: dict[str, int] = {}  # changes since the snapshot this process loaded or wrote
        self._published_at: dict[str, float] = {}  # when that snapshot was published (Unix time)
        self._publishing: set[str] = set()
        self._fetches = 0

    @property
    def engines(self) -> IndexEngines:
        return self._engines

    def forget(self, collection_id: str) -> None:
        """A deleted collection, or one a person was erased from: its snapshots go."""
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
        self,
        collection: Collection,
        current: WarmCollection | None,
        faces: FaceRepository,
        log: ChangeLog,
        lock: threading.Lock,
    ) -> WarmCollection:
        """`current` (or the snapshot, or a rebuild) brought to the collection's change_seq. Called under `lock`."""
        warm = self._adopted(current, collection) if current is not None else None
        if warm is None:
            warm = self._from_snapshot(collection, faces)
        changes = 0
        if warm is not None and warm.change_seq < collection.change_seq:
            missed = log.changes(collection.collection_id, warm.change_seq, collection.change_seq)
            if [change.seq for change in missed] == list(range(warm.change_seq + 1, collection.change_seq + 1)):
                changes = apply_changes(warm, missed, faces, collection.collection_id)
                warm.change_seq = collection.change_seq
            else:
                logger.info(
                    "change log of %s lacks entries %d..%d: rebuilding from the faces table",
                    collection.collection_id,
                    warm.change_seq + 1,
                    collection.change_seq,
                )
                warm, changes = rebuild(collection, warm.index, faces, log)
        if warm is None:
            index = self._engines.new(collection)
            warm, changes = rebuild(collection, index, faces, log)
        name = collection.collection_id
        self._unpublished[name] = self._unpublished.get(name, 0) + changes
        if self._should_publish(name, warm.index):
            self._publishing.add(name)
            if self._background:
                # On Lambda the thread is frozen between invocations and resumes with the next one; if the
                # environment is reclaimed first, no manifest was written and the old snapshot stays current.
                threading.Thread(target=self._publish, args=(name, warm, lock), daemon=True).start()
            else:
                self._publish(name, warm, None)
        return warm

    def _suits(self, warm: WarmCollection, collection: Collection) -> bool:
        return warm.created_at == collection.created_at and self._engines.suits(warm.index, collection)

    def _adopted(self, warm: WarmCollection, collection: Collection) -> WarmCollection | None:
        """`warm`, or its index made to suit (a collection migrated to another engine); None for another
        collection under the same id, or an index that cannot be made to suit."""
        if warm.created_at != collection.created_at:
            return None
        if self._engines.suits(warm.index, collection):
            return warm
        index = self._engines.adopt(warm.index, collection)
        if index is None:
            return None
        self._unpublished[collection.collection_id] = len(index)  # its snapshot is of the other engine's index
        return WarmCollection(warm.created_at, warm.change_seq, index, warm.faces)

    def _from_snapshot(self, collection: Collection, faces: FaceRepository) -> WarmCollection | None:
        if self._snapshots is None:
            return None
        name = collection.collection_id
        assert self._snapshots is not None
        self._fetches += 1
        directory = self._work_dir / f"fetched-{self._fetches}"
        try:
            if not self._snapshots.fetch(name, directory, self._engines.snapshot_files(collection)):
                return None
            state = json.loads((directory / SNAPSHOT_FACES_FILE).read_text())
            if state["created_at"] != collection.created_at:
                raise ValueError("the snapshot is of an earlier collection under the same id")
            rows = state["faces"]
            index = self._engines.load(directory, collection, [row[0] for row in rows])
            entries = CollectionFaces(faces, ((row[0], FaceEntry(*row)) for row in rows))
            warm = WarmCollection(collection.created_at, int(state["change_seq"]), index, entries)
            if not self._suits(warm, collection):
                raise ValueError("the snapshot's index is of another engine than the collection's")
        except Exception:
            # A broken, foreign, other-engine or half-fetched snapshot costs a rebuild, never a wrong answer.
            logger.exception("snapshot %s could not be loaded; rebuilding from the table", name)
            shutil.rmtree(directory, ignore_errors=True)
            return None
        self._unpublished[name] = 0
        self._published_at[name] = float(state.get("published_at", 0))
        return warm

    def republish(self, name: str, warm: WarmCollection) -> None:
        """Replaces every snapshot under `name` with one of `warm` as it is now, the previous one included
        (after an erasure they hold the erased vectors); if that fails, deletes them. Called under the lock."""
        if self._snapshots is None:
            return
        directory = Path(tempfile.mkdtemp(prefix="publish-", dir=self._work_dir))
        try:
            _persist(warm, directory / "index")
            self._snapshots.publish(name, directory / "index", keep_previous=False)
            self._unpublished[name] = 0
            self._published_at[name] = time.time()
        except Exception:
            logger.exception("snapshot of %s not republished; deleting its snapshots instead", name)
            self._snapshots.delete(name)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def _should_publish(self, name: str, index: VectorIndex) -> bool:
        unpublished = self._unpublished.get(name, 0)
        # A snapshot behind by a few changes is published again once it is half as old as the log's entries
        # live: a slowly changing collection never needs an expired entry to catch up (a rebuild at scale).
        stale = unpublished > 0 and time.time() - self._published_at.get(name, time.time()) > SNAPSHOT_MAX_AGE_S
        return (
            self._snapshots is not None
            and name not in self._publishing
            and len(index) >= self._snapshot_min_faces
            and (unpublished >= max(1, min(self._snapshot_min_changes, len(index))) or stale)
        )

    def _publish(self, name: str, warm: WarmCollection, lock: threading.Lock | None) -> None:
        assert self._snapshots is not None
        directory = Path(tempfile.mkdtemp(prefix="publish-", dir=self._work_dir))
        try:
            # Persisting reads the warm state; loads (its only writers) wait meanwhile, searches do not.
            if lock is not None:
                with lock:
                    _persist(warm, directory / "index")
                    changes = self._unpublished.get(name, 0)
            else:
                _persist(warm, directory / "index")
                changes = self._unpublished.get(name, 0)
            self._snapshots.publish(name, directory / "index")
            self._unpublished[name] = self._unpublished.get(name, 0) - changes
            self._published_at[name] = time.time()
        except Exception:
            logger.exception("snapshot of %s not published; the next load tries again", name)
        finally:
            self._publishing.discard(name)
            shutil.rmtree(directory, ignore_errors=True)


def apply_changes(
    warm: WarmCollection,
    log: Sequence[IndexChange],
    faces: FaceRepository,
    collection_id: str,
) -> int:
    """Applies the log's entries to `warm`: the net effect per face (its last entry wins), with the added
    faces' records read from the table now, so a face deleted since it was added is not added. Returns how
    many faces were added, removed or given another user."""
    final: dict[str, bool] = {}  # face id -> present after the log
    users: dict[str, str | None] = {}
    for change in log:
        final.update(dict.fromkeys(change.added, True))
        final.update(dict.fromkeys(change.removed, False))
        users.update(change.users)
    added = [face_id for face_id, present in final.items() if present]
    records = faces.get_many(added) if added else {}
    fresh = [
        records[face_id] for face_id in added if face_id in records and records[face_id].collection_id == collection_id
    ]
    fetched = {face.face_id for face in fresh}
    # Removed, or added but gone from the table (or the collection) since: either way not searchable.
    gone = [face_id for face_id in final if face_id not in fetched]
    warm.index.remove(gone)
    for face_id in gone:
        warm.faces.pop(face_id, None)
    for start in range(0, len(fresh), _BLOCK):
        block = fresh[start : start + _BLOCK]
        _add(warm.index, block, faces)
        warm.faces.update((face.face_id, FaceEntry.of(face)) for face in block if face.face_id in warm.index)
    regrouped = 0
    for face_id, user_id in users.items():
        entry = warm.faces.get(face_id)
        # An added face's record already carries its user as of now, later than any entry.
        if entry is not None and face_id not in fetched and entry.user_id != user_id:
            warm.faces[face_id] = entry._replace(user_id=_interned(user_id))
            regrouped += 1
    return len(gone) + len(fresh) + regrouped


def _persist(warm: WarmCollection, directory: Path) -> None:
    warm.index.persist(directory)
    state = {
        "created_at": warm.created_at,
        "change_seq": warm.change_seq,
        "published_at": time.time(),
        "faces": list(warm.faces.values()),
    }
    (directory / SNAPSHOT_FACES_FILE).write_text(json.dumps(state))


def rebuild(
    collection: Collection,
    index: VectorIndex,
    faces: FaceRepository,
    log: ChangeLog,
) -> tuple[WarmCollection, int]:
    """`index` made to hold exactly the collection's faces as the table lists them, plus the latest entries of
    the log replayed. Returns the warm state and how many faces it changed."""
    collection_id = collection.collection_id
    seq = collection.change_seq  # read before listing: the listing reflects at least these changes
    entries = CollectionFaces(faces)
    changes = 0
    block: list[FaceRecord] = []
    for face in faces.list_collection(collection_id):
        entries[face.face_id] = FaceEntry.of(face)
        block.append(face)
        if len(block) >= _BLOCK:
            changes += _refresh(index, block, faces)
            block = []
    changes += _refresh(index, block, faces)
    gone = [face_id for face_id in index.face_ids() if face_id not in entries]
    index.remove(gone)
    warm = WarmCollection(collection.created_at, seq, index, entries)
    replay_from = max(0, seq - REBUILD_REPLAY_CHANGES)
    recent = log.changes(collection_id, replay_from, seq)
    if recent:
        apply_changes(warm, recent, faces, collection_id)
    return warm, changes + len(gone)


def _refresh(index: VectorIndex, block: Sequence[FaceRecord], faces: FaceRepository) -> int:
    """Adds the block's faces the index lacks, or holds with another vector; returns how many."""
    if not block:
        return 0
    # A shared index (S3 Vectors) is trusted for the faces it holds: reading every vector back would cost a
    # GetVectors per 100 faces, and a face's vector changes only by a re-index, which logs it as added again.
    known = [] if index.shared else [face for face in block if face.face_id in index]
    stored = index.vectors([face.face_id for face in known]) if known else np.empty((0, 0), dtype=np.float32)
    changed = {
        face.face_id for face, vector in zip(known, stored, strict=True) if not np.array_equal(vector, _vector(face))
    }
    added = [face for face in block if face.face_id not in index or face.face_id in changed]
    _add(index, added, faces)
    return len(added)


def _add(index: VectorIndex, block: Sequence[FaceRecord], faces: FaceRepository) -> None:
    """Puts the faces' vectors (and what a match reports) into the index. A shared index is written by other
    functions too: one that applied the face's deletion between our read of the record and our put would
    see its delete undone, so the faces are checked against the table after the put and the gone ones deleted."""
    if not block:
        return
    ids = [face.face_id for face in block]
    metadata = [face_metadata(face.external_image_id, face.photo_id) for face in block]
    index.add(ids, np.stack([_vector(face) for face in block]), metadata)
    if index.shared:
        present = faces.existing(ids)
        gone = [face_id for face_id in ids if face_id not in present]
        if gone:
            index.remove(gone)


def _vector(face: FaceRecord) -> np.ndarray:
    return np.asarray(face.embedding, dtype=np.float32)


def _interned(value: str | None) -> str | None:
    return sys.intern(value) if value is not None else None
