"""The shard function's service: one shard of a collection kept warm, answering searches of that shard."""

from __future__ import annotations

import threading
from typing import Any

from candor.index.shards import parse_shard_request, shard_answer, snapshot_name
from candor.index.sync import IndexSync, WarmCollection
from candor.ports import ChangeLog, FaceRepository


class ShardSearch:
    """The shard function's work: keep this instance's shards warm (snapshot, change log, or a rebuild from
    the ByShard index, as the search function keeps a collection) and answer one shard's search."""

    def __init__(self, faces: FaceRepository, log: ChangeLog, sync: IndexSync) -> None:
        self._faces = faces
        self._log = log
        self._sync = sync
        self._warm: dict[tuple[str, int], WarmCollection] = {}
        self._lock = threading.Lock()

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """A search of one shard; or, with "purge", its snapshots replaced by one of the shard as it is now."""
        collection, shard, queries, k, min_cosine = parse_shard_request(request)
        key = (collection.collection_id, shard)
        with self._lock:
            warm = self._warm.get(key)
            # A shard ahead of the caller answers as it is: the caller checks every hit against the table.
            if warm is None or warm.created_at != collection.created_at or warm.change_seq < collection.change_seq:
                warm = self._sync.load(collection, warm, self._faces, self._log, self._lock, shard=shard)
                self._warm[key] = warm
            if request.get("purge"):
                self._sync.republish(snapshot_name(collection.collection_id, shard), warm)
                return shard_answer([])
        return shard_answer(warm.index.search(queries, k, min_cosine))
