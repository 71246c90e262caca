"""Shards: a face's shard is fixed at enrolment, a collection grows by opening shards, and a search fanned
out over one shard function invocation per shard answers exactly as one index in one process does."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from synthetic_faces import enrolled_people, uid

from candor import collection_service
from candor.adapters.aws import LambdaShardInvoker, S3IndexSnapshotStore
from candor.adapters.memory import (
    MemoryCollectionRepository,
    MemoryFaceRepository,
    MemoryImageStore,
    MemoryIndexSnapshotStore,
    MemoryPhotoRepository,
    MemoryUserRepository,
)
from candor.core.errors import InvalidParameterError
from candor.core.faces import FaceRecord
from candor.core.settings import EMBEDDER_VERSION
from candor.erasure import erase_person
from candor.index.shard_search import ShardSearch
from candor.index.shards import RemoteShards, ShardFunctionEngine, shard_count
from candor.index.sync import IndexSync
from candor.index.vectors import ShardedVectorIndex
from candor.indexing import shards_for
from candor.ports import Collection, IndexChange
from candor.search import CollectionIndexes

SHARD_SIZE = 40


class ShardedFaces(MemoryFaceRepository):
    """The faces table, counting which shards were listed whole."""

    def __init__(self) -> None:
        super().__init__()
        self.shard_listings: list[int] = []
        self.collection_listings = 0

    def list_collection(self, collection_id: str) -> Iterable[FaceRecord]:
        self.collection_listings += 1
        return super().list_collection(collection_id)

    def list_shard(self, collection_id: str, shard: int) -> Iterable[FaceRecord]:
        self.shard_listings.append(shard)
        return super().list_shard(collection_id, shard)


class JsonInvoker:
    """The shard function as Lambda runs it, in this process: the request and the answer cross JSON, as
    they cross the Invoke API."""

    def __init__(self, shard_search: ShardSearch) -> None:
        self.shard_search = shard_search
        self.asked: list[int] = []

    def call_shard(self, request: dict[str, Any]) -> dict[str, Any]:
        self.asked.append(request["shard"])
        answer = self.shard_search.handle(json.loads(json.dumps(request)))
        return dict(json.loads(json.dumps(answer)))


class Tables:
    def __init__(self, tmp_path: Path) -> None:
        self.faces = ShardedFaces()
        self.collections = MemoryCollectionRepository()
        self.users = MemoryUserRepository()
        self.snapshots = MemoryIndexSnapshotStore()
        self.collections.create(
            Collection("staff", "2026-01-01T00:00:00+00:00", EMBEDDER_VERSION, shard_size=SHARD_SIZE)
        )
        self.tmp = tmp_path
        self.starts = 0

    def sync(self, engine: Any = None, snapshot_min_changes: int = 10_000) -> IndexSync:
        self.starts += 1
        return IndexSync(
            self.snapshots,
            engine=engine,
            work_dir=self.tmp / f"start-{self.starts}",
            snapshot_min_faces=0,
            snapshot_min_changes=snapshot_min_changes,
            background=False,
        )

    def shard_function(self, snapshot_min_changes: int = 10_000) -> JsonInvoker:
        return JsonInvoker(ShardSearch(self.faces, self.collections, self.sync(None, snapshot_min_changes)))

    def search_function(self, invoker: JsonInvoker | None, snapshot_min_changes: int = 10_000) -> CollectionIndexes:
        engine = ShardFunctionEngine(invoker, self.faces) if invoker is not None else None
        return CollectionIndexes(self.faces, self.collections, self.sync(engine, snapshot_min_changes))

    def enrol(self, records: Sequence[FaceRecord]) -> list[int]:
        """As the embed stage enrols: enrolment numbers, then the faces, then the change."""
        shards = shards_for(self.collections, "staff", len(records))
        self.faces.save_all([replace(face, shard=shard) for face, shard in zip(records, shards, strict=True)])
        added = tuple(face.face_id for face in records)
        self.collections.mark_changed("staff", IndexChange(added=added, shards=tuple(shards)))
        return shards

    def store(self, indexes: CollectionIndexes) -> collection_service.CollectionStore:
        return collection_service.CollectionStore(self.collections, self.faces, self.users, indexes)


def test_shards_fill_in_enrolment_order_and_a_face_never_moves(tmp_path: Path):
    tables = Tables(tmp_path)
    records, _ = enrolled_people(30, 3, seed=1)
    assert tables.enrol(records[:50]) == [0] * 40 + [1] * 10
    indexes = tables.search_function(None)
    _, index, _ = indexes.get("staff")
    assert isinstance(index, ShardedVectorIndex) and [len(shard) for shard in index.shards] == [40, 10]

    collection_service.delete_faces(tables.store(indexes), "staff", [face.face_id for face in records[:20]])
    # Freed places are never handed out again: shard 0 shrinks, and new faces go on filling shard 1, then 2.
    assert tables.enrol(records[50:]) == [1] * 30 + [2] * 10
    _, index, _ = indexes.get("staff")
    assert isinstance(index, ShardedVectorIndex) and [len(shard) for shard in index.shards] == [20, 40, 10]
    collection = tables.collections.get("staff")
    assert collection is not None and shard_count(collection) == 3


def test_a_search_over_one_shard_function_invocation_per_shard_answers_as_one_index(tmp_path: Path):
    tables = Tables(tmp_path)
    records, probes = enrolled_people(45, 3, seed=2)
    tables.enrol(records[:100])
    invoker = tables.shard_function()
    remote, local = tables.search_function(invoker), tables.search_function(None)

    def answers(indexes: CollectionIndexes) -> list[list[tuple[str, float]]]:
        _, index, _ = indexes.get("staff")
        return [[(hit.face_id, hit.cosine) for hit in hits] for hits in index.search(probes, 5, 0.3)]

    expected = answers(local)
    assert answers(remote) == expected
    assert sorted(set(invoker.asked)) == [0, 1, 2]
    _, index, entries = remote.get("staff")
    assert isinstance(index, RemoteShards), "the search function keeps no vectors once there are shards"
    assert len(index) == len(entries) == 100

    # The collection grows into a fourth shard and loses faces: both kinds of function follow the log.
    tables.enrol(records[100:])
    collection_service.delete_faces(tables.store(remote), "staff", [uid(2, 0), uid(35, 1)])
    invoker.asked.clear()
    assert answers(remote) == answers(local)
    assert sorted(set(invoker.asked)) == [0, 1, 2, 3]
    assert all(uid(2, 0) != face_id for hits in answers(remote) for face_id, _ in hits)

    # Searches that need a face's own vector read it from the faces table.
    store = tables.store(remote)
    by_face = collection_service.search_by_face_id(store, "staff", uid(7, 0), threshold=80.0, max_faces=5)
    assert sorted(match.face_id for match in by_face) == [uid(7, 1), uid(7, 2)]
    collection_service.create_user(store, "staff", "dana")
    collection_service.associate_faces(store, "staff", "dana", [uid(7, 0), uid(7, 1)])
    users = collection_service.search_users(store, "staff", face_id=uid(7, 2), threshold=80.0, max_users=5)
    assert [match.user_id for match in users] == ["dana"]
    tables.faces.delete_all([uid(9, 0)])  # as DeleteFaces does before it logs the change
    with pytest.raises(InvalidParameterError, match="is not in collection"):
        collection_service.search_by_face_id(store, "staff", uid(9, 0), threshold=80.0, max_faces=5)
    # Shards 0 to 2 started from their parts of the snapshot the in-process search function had published;
    # shard 3, opened after it, was listed from the ByShard index once, and followed the log from then on.
    assert tables.faces.shard_listings == [3]


def test_a_collection_stays_in_the_search_function_until_it_opens_a_second_shard(tmp_path: Path):
    tables = Tables(tmp_path)
    records, probes = enrolled_people(20, 3, seed=3)
    tables.enrol(records[:30])
    invoker = tables.shard_function()
    remote = tables.search_function(invoker)
    _, index, _ = remote.get("staff")
    assert not isinstance(index, RemoteShards) and invoker.asked == []
    tables.enrol(records[30:])
    _, index, entries = remote.get("staff")
    assert isinstance(index, RemoteShards) and len(index) == len(entries) == 60
    (hits,) = index.search(probes[15:16], 3, 0.4)
    assert {entries[hit.face_id].external_image_id for hit in hits} == {"person15"}
    assert sorted(set(invoker.asked)) == [0, 1]
    # Handed over without reading the table again: the search function kept its face directory, shard 0
    # started from its part of the search function's snapshot, and only shard 1 (new) was listed.
    assert tables.faces.collection_listings == 1 and tables.faces.shard_listings == [1]
    assert "staff/directory" in tables.snapshots.snapshots, "the face directory is published once handed over"


def test_shards_start_from_the_snapshot_the_search_function_kept_every_shard_in(tmp_path: Path):
    tables = Tables(tmp_path)
    records, probes = enrolled_people(40, 3, seed=7)
    tables.enrol(records[:39])
    in_process = tables.search_function(None)
    in_process.get("staff")  # publishes the collection's snapshot: one shard, vectors and all
    tables.enrol(records[39:])  # a second shard opens
    invoker = tables.shard_function()
    coordinator = tables.search_function(invoker, snapshot_min_changes=1)
    _, index, entries = coordinator.get("staff")
    assert isinstance(index, RemoteShards)
    # The face directory is published under its own name: the snapshot with the vectors stays for the shards.
    assert (
        "staff/directory" in tables.snapshots.snapshots
        and "shard-0000/index.json" in tables.snapshots.snapshots["staff"]
    )
    (hits,) = index.search(probes[20:21], 3, 0.4)
    assert {entries[hit.face_id].external_image_id for hit in hits} == {"person20"}
    # Shard 0 started from its part of the collection's snapshot; shards 1 and 2, opened after it, were listed.
    assert sorted(tables.faces.shard_listings) == [1, 2]
    cold = tables.search_function(tables.shard_function())
    assert len(cold.get("staff")[1]) == 120 and tables.faces.collection_listings == 1


def test_a_cold_shard_function_loads_its_shards_snapshot_and_the_log_after_it(tmp_path: Path):
    tables = Tables(tmp_path)
    records, probes = enrolled_people(30, 3, seed=4)
    tables.enrol(records[:80])
    first = tables.shard_function(snapshot_min_changes=1)
    coordinator = tables.search_function(first)
    _, index, _ = coordinator.get("staff")
    index.search(probes[:1], 3, 0.4)
    assert {"staff/shard-0000", "staff/shard-0001"} <= set(tables.snapshots.snapshots)

    tables.enrol(records[80:])  # after the snapshots: only in the log
    listed = list(tables.faces.shard_listings)
    cold = tables.shard_function()
    coordinator = tables.search_function(cold)
    _, index, entries = coordinator.get("staff")
    (hits,) = index.search(probes[28:29], 3, 0.4)
    assert {entries[hit.face_id].external_image_id for hit in hits} == {"person28"}
    assert tables.faces.shard_listings == [*listed, 2], "shards 0 and 1 came from their snapshots and the log"


def test_deleting_a_collection_deletes_its_shards_snapshots_too(tmp_path: Path):
    tables = Tables(tmp_path)
    records, probes = enrolled_people(30, 2, seed=5)
    tables.enrol(records)
    coordinator = tables.search_function(tables.shard_function(snapshot_min_changes=1))
    coordinator.get("staff")[1].search(probes[:1], 3, 0.4)
    assert any(name.startswith("staff/shard-") for name in tables.snapshots.snapshots)
    collection_service.delete_collection(tables.store(coordinator), "staff")
    assert not tables.snapshots.snapshots


def test_s3_keeps_shard_snapshots_apart_from_the_collections_and_deletes_them_with_it(tmp_path: Path, moto):  # type: ignore[no-untyped-def]
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "index.json").write_text("{}")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="index")
    store = S3IndexSnapshotStore("index", s3)
    store.publish("staff/shard-0001", snapshot)
    store.publish("staff/directory", snapshot)
    for _ in range(3):  # the collection's clean-up of its older snapshots leaves the shard's and directory's alone
        store.publish("staff", snapshot)
    assert store.fetch("staff/shard-0001", tmp_path / "shard")
    assert store.fetch("staff", tmp_path / "collection")
    store.delete("staff", with_children=False)  # its own snapshots only
    assert not store.fetch("staff", tmp_path / "own")
    assert store.fetch("staff/shard-0001", tmp_path / "shard-kept") and store.fetch("staff/directory", tmp_path / "d")
    store.publish("staff", snapshot)
    store.publish("staffroom", snapshot)
    store.delete("staff")
    assert not store.fetch("staff/shard-0001", tmp_path / "gone") and not store.fetch("staff", tmp_path / "g")
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket="index").get("Contents", [])]
    assert keys and all("staffroom" in key for key in keys), "another collection's snapshots stay"


def test_the_shard_function_is_invoked_synchronously_and_its_failure_fails_the_search():
    client = boto3.client("lambda", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    invoker = LambdaShardInvoker("candor-shard", client)
    request = {"collection_id": "staff", "shard": 3, "k": 1}
    answer = {"neighbours": [[["f", 0.9]]]}
    with Stubber(client) as stub:
        body = json.dumps(answer).encode()
        stub.add_response(
            "invoke",
            {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(body), len(body))},
            {"FunctionName": "candor-shard", "Payload": json.dumps(request).encode()},
        )
        assert invoker.call_shard(request) == answer
        failure = json.dumps({"errorType": "MemoryError", "errorMessage": "out of memory"}).encode()
        stub.add_response(
            "invoke",
            {
                "StatusCode": 200,
                "FunctionError": "Unhandled",
                "Payload": StreamingBody(io.BytesIO(failure), len(failure)),
            },
        )
        with pytest.raises(RuntimeError, match="shard 3 of 'staff' failed: MemoryError out of memory"):
            invoker.call_shard(request)


def test_an_erasure_replaces_each_shards_snapshot_with_one_without_the_person(tmp_path: Path):
    tables = Tables(tmp_path)
    records, probes = enrolled_people(30, 3, seed=6)  # 90 faces: shards of 40, 40 and 10
    tables.enrol(records)
    coordinator = tables.search_function(tables.shard_function(snapshot_min_changes=1))
    coordinator.get("staff")[1].search(probes[:1], 3, 0.4)
    before = {name: dict(files) for name, files in tables.snapshots.snapshots.items()}
    assert any(uid(12, 0).encode() in data for data in before["staff/shard-0000"].values())

    result = erase_person(
        tables.store(coordinator), MemoryPhotoRepository(), MemoryImageStore(), "staff", "person12", search=lambda _: []
    )
    assert result.faces_removed == 3
    assert set(tables.snapshots.snapshots) == set(before), "replaced, not dropped"
    for name, files in tables.snapshots.snapshots.items():
        for data in files.values():
            assert uid(12, 0).encode() not in data and b"person12" not in data, name

    # A cold start loads the replaced snapshots: nothing to rebuild, and nobody left to find.
    listed = list(tables.faces.shard_listings)
    cold = tables.search_function(tables.shard_function())
    _, index, entries = cold.get("staff")
    found = {entries[hit.face_id].external_image_id for hits in index.search(probes[11:13], 3, 0.4) for hit in hits}
    assert found == {"person11"}
    assert tables.faces.shard_listings == listed
