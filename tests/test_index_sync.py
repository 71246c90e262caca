"""A warm index follows its collection through the change log: only what changed is read, the whole
collection is read only when the log cannot say what changed, and the warm state holds no embeddings."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import boto3
import numpy as np
import pytest
from synthetic_faces import enrolled_people, uid

from candor import collection_service
from candor.adapters.aws import DynamoChangeLog, DynamoCollectionRepository, DynamoFaceRepository
from candor.adapters.memory import (
    MemoryCollectionRepository,
    MemoryFaceRepository,
    MemoryIndexSnapshotStore,
    MemoryUserRepository,
    MemoryVectorStore,
)
from candor.core.faces import FaceRecord
from candor.core.settings import EMBEDDER_VERSION
from candor.index.engines import IndexEngines
from candor.index.sync import FaceEntry, IndexSync
from candor.ports import Collection, IndexChange
from candor.search import CollectionIndexes


class CountingFaces(MemoryFaceRepository):
    """The faces table, counting how the warm index reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.listings = 0
        self.fetched: list[str] = []

    def list_collection(self, collection_id: str) -> Iterable[FaceRecord]:
        self.listings += 1
        return super().list_collection(collection_id)

    def get_many(self, face_ids: Sequence[str]) -> dict[str, FaceRecord]:
        self.fetched += face_ids
        return super().get_many(face_ids)


@pytest.fixture(params=["in-function", "s3vectors"])
def engine(request: pytest.FixtureRequest) -> str:
    """Every test of the warm index runs with the collection on each engine (S3 Vectors: the exact store)."""
    return str(request.param)


class Stack:
    """The tables and the index bucket, and search functions that can be started cold."""

    def __init__(self, tmp_path: Path, engine: str = "in-function") -> None:
        self.engine = engine
        self.vectors = MemoryVectorStore(max_top_k=5)
        self.faces = CountingFaces()
        self.collections = MemoryCollectionRepository()
        self.users = MemoryUserRepository()
        self.snapshots = MemoryIndexSnapshotStore()
        self.collections.create(
            Collection("staff", "2026-01-01T00:00:00+00:00", EMBEDDER_VERSION, index_engine=self.engine)
        )
        self._tmp = tmp_path
        self._starts = 0
        self.indexes = self.start()

    def start(self, snapshot_min_changes: int = 10_000) -> CollectionIndexes:
        self._starts += 1
        sync = IndexSync(
            self.snapshots,
            work_dir=self._tmp / f"start-{self._starts}",
            snapshot_min_faces=0,
            snapshot_min_changes=snapshot_min_changes,
            background=False,
            engines=IndexEngines(self.vectors),
        )
        return CollectionIndexes(self.faces, self.collections, sync)

    @property
    def store(self) -> collection_service.CollectionStore:
        return collection_service.CollectionStore(self.collections, self.faces, self.users, self.indexes)

    def enrol(self, records: list[FaceRecord]) -> None:
        self.faces.save_all(records)
        added = tuple(face.face_id for face in records)
        self.collections.mark_changed("staff", IndexChange(added=added))

    def who(self, probe: np.ndarray, indexes: CollectionIndexes | None = None) -> list[str]:
        _, index, entries = (indexes or self.indexes).get("staff")
        return [entries[hit.face_id].external_image_id or "" for hit in index.search(probe, 3, 0.4)[0]]


def test_a_warm_index_reads_only_what_changed_never_the_whole_collection_again(tmp_path: Path, engine: str):
    records, probes = enrolled_people(40, 3, seed=3)
    stack = Stack(tmp_path, engine)
    stack.enrol(records[:90])
    assert stack.who(probes[5]) == ["person5"] * 3
    assert stack.faces.listings == 1  # the cold start, with no snapshot: built from the table

    stack.faces.fetched.clear()
    stack.enrol(records[90:])
    assert stack.who(probes[35]) == ["person35"] * 3
    assert sorted(stack.faces.fetched) == sorted(face.face_id for face in records[90:]), "only the new faces"

    deletion = collection_service.delete_faces(stack.store, "staff", [uid(5, 0), uid(5, 1)])
    assert sorted(deletion.deleted) == [uid(5, 0), uid(5, 1)]
    assert stack.who(probes[5]) == ["person5"]
    assert stack.faces.listings == 1, "no change was read by listing the collection"
    _, index, entries = stack.indexes.get("staff")
    assert len(index) == len(entries) == 118 and uid(5, 0) not in index and uid(5, 0) not in entries


def test_the_warm_state_holds_names_and_users_not_embeddings(tmp_path: Path, engine: str):
    records, _ = enrolled_people(4, 2, seed=4)
    stack = Stack(tmp_path, engine)
    stack.enrol(records)
    _, _, entries = stack.indexes.get("staff")
    entry = entries[uid(1, 1)]
    assert entry == FaceEntry(uid(1, 1), "person1", f"photo-{uid(1, 1)}", None)
    assert all(not isinstance(value, np.ndarray) for value in entry)
    # One string object per name, however many faces carry it.
    assert entries[uid(1, 0)].external_image_id is entries[uid(1, 1)].external_image_id


def test_users_follow_the_log_and_searches_use_the_vectors_in_the_index(tmp_path: Path, engine: str):
    records, _ = enrolled_people(6, 3, seed=5)
    stack = Stack(tmp_path, engine)
    stack.enrol(records)
    store = stack.store
    collection_service.create_user(store, "staff", "alice")
    association = collection_service.associate_faces(store, "staff", "alice", [uid(2, 0), uid(2, 1)])
    assert association.associated == [uid(2, 0), uid(2, 1)]
    refused = collection_service.associate_faces(store, "staff", "alice", [uid(3, 0)])
    assert refused.refused[uid(3, 0)][2] == ["LOW_MATCH_CONFIDENCE"]  # another person: the user is one person
    found = collection_service.search_users(store, "staff", face_id=uid(2, 2), threshold=80.0, max_users=5)
    assert [match.user_id for match in found] == ["alice"]

    # Another search function, started cold from the bucket's snapshot, sees the same users.
    cold = stack.start()
    assert cold.get("staff")[2][uid(2, 0)].user_id == "alice"

    collection_service.disassociate_faces(store, "staff", "alice", [uid(2, 0), uid(2, 1)])
    assert collection_service.search_users(store, "staff", face_id=uid(2, 2), threshold=80.0, max_users=5) == []
    assert cold.get("staff")[2][uid(2, 0)].user_id is None
    assert stack.faces.listings == 1


def test_a_cold_start_loads_the_snapshot_and_the_log_after_it_without_listing_the_collection(
    tmp_path: Path, engine: str
):
    records, probes = enrolled_people(30, 3, seed=6)
    stack = Stack(tmp_path, engine)
    stack.indexes = stack.start(snapshot_min_changes=1)
    stack.enrol(records[:60])
    assert stack.who(probes[3]) == ["person3"] * 3
    assert stack.snapshots.snapshots["staff"], "the index was published to the bucket"

    stack.indexes = stack.start()  # no more snapshots from here on: the log carries the rest
    stack.enrol(records[60:])
    collection_service.delete_faces(stack.store, "staff", [uid(3, 0)])
    listings = stack.faces.listings
    cold = stack.start()
    assert stack.who(probes[25], cold) == ["person25"] * 3
    assert stack.who(probes[3], cold) == ["person3"] * 2
    assert stack.faces.listings == listings, "the snapshot and the log were enough"


def test_a_log_that_lost_entries_costs_a_rebuild_from_the_table_never_a_wrong_answer(tmp_path: Path, engine: str):
    records, probes = enrolled_people(20, 3, seed=7)
    stack = Stack(tmp_path, engine)
    stack.enrol(records[:30])
    idle = stack.start()
    assert stack.who(probes[4], idle) == ["person4"] * 3  # a function that then stays idle a long time
    stack.enrol(records[30:45])
    stack.enrol(records[45:])
    collection_service.delete_faces(stack.store, "staff", [uid(4, 1)])
    log = stack.collections.change_log["staff"]
    del log[2]  # expired by its TTL before the idle function came back
    listings = stack.faces.listings
    assert stack.who(probes[17], idle) == ["person17"] * 3
    assert stack.who(probes[4], idle) == ["person4"] * 2
    assert stack.faces.listings == listings + 1


def test_a_face_added_then_deleted_before_the_reload_is_never_added(tmp_path: Path, engine: str):
    records, _ = enrolled_people(5, 2, seed=8)
    stack = Stack(tmp_path, engine)
    stack.enrol(records[:4])
    stack.indexes.get("staff")
    stack.enrol(records[4:])
    collection_service.delete_faces(stack.store, "staff", [uid(3, 0)])  # the store reloads: apply it after
    _, index, entries = stack.indexes.get("staff")
    assert uid(3, 0) not in index and uid(3, 0) not in entries and uid(3, 1) in index


def test_a_collection_deleted_and_created_again_never_gets_the_old_ones_faces(tmp_path: Path, engine: str):
    records, probes = enrolled_people(5, 2, seed=9)
    stack = Stack(tmp_path, engine)
    stack.indexes = stack.start(snapshot_min_changes=1)
    stack.enrol(records)
    assert stack.who(probes[1]) == ["person1"] * 2
    other = stack.start()
    other.get("staff")  # a second warm function
    collection_service.delete_collection(stack.store, "staff")
    stack.collections.create(
        Collection("staff", "2026-02-01T00:00:00+00:00", EMBEDDER_VERSION, index_engine=stack.engine)
    )
    assert stack.who(probes[1], other) == []
    assert stack.who(probes[1], stack.start()) == []


@pytest.fixture
def dynamodb(moto):  # type: ignore[no-untyped-def]
    resource = boto3.resource("dynamodb")
    resource.create_table(
        TableName="collections",
        KeySchema=[{"AttributeName": "collection_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "collection_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    resource.create_table(
        TableName="changes",
        KeySchema=[
            {"AttributeName": "collection_id", "KeyType": "HASH"},
            {"AttributeName": "seq", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "collection_id", "AttributeType": "S"},
            {"AttributeName": "seq", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    resource.create_table(
        TableName="faces",
        KeySchema=[{"AttributeName": "face_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "face_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    yield resource


def test_the_change_log_in_dynamodb_numbers_every_change_once_even_when_writers_race(dynamodb):  # type: ignore[no-untyped-def]
    log = DynamoChangeLog("changes", dynamodb)
    collections = DynamoCollectionRepository("collections", log, dynamodb)
    collections.create(Collection("staff", "2026-01-01T00:00:00+00:00", EMBEDDER_VERSION))
    for photo in range(5):
        collections.mark_changed("staff", IndexChange(added=(uid(0, photo),)))
    # Another writer took number 6 and has not raised the collection's number yet.
    dynamodb.Table("changes").put_item(Item={"collection_id": "staff", "seq": 6, "added": [uid(1, 0)]})
    # This writer read the log before that write: its first try at 6 fails its condition, the next takes 7.
    real_query = log._table.query
    reads = []

    def stale_first_read(**params):  # type: ignore[no-untyped-def]
        reads.append(params)
        answer = real_query(**params)
        if len(reads) == 1:
            answer["Items"] = [item for item in answer["Items"] if int(item["seq"]) < 6]
        return answer

    log._table.query = stale_first_read
    collections.mark_changed("staff", IndexChange(added=(uid(2, 0),)))
    log._table.query = real_query
    collection = collections.get("staff")
    assert collection is not None and collection.change_seq == 7
    entries = collections.changes("staff", 0, 7)
    assert [change.seq for change in entries] == list(range(1, 8))
    assert [change.added for change in entries][5:] == [(uid(1, 0),), (uid(2, 0),)]
    assert [change.seq for change in collections.changes("staff", 4, 7)] == [5, 6, 7]
    # The collection's number is a floor: numbers never go back, even when old entries have expired.
    for seq in range(1, 8):
        dynamodb.Table("changes").delete_item(Key={"collection_id": "staff", "seq": seq})
    collections.mark_changed("staff", IndexChange(removed=(uid(0, 0),)))
    assert [change.seq for change in collections.changes("staff", 0, 8)] == [8]
    # An expired entry that TTL has not deleted yet may outlive newer ones: it never sets the next number.
    dynamodb.Table("changes").delete_item(Key={"collection_id": "staff", "seq": 8})
    dynamodb.Table("changes").put_item(Item={"collection_id": "staff", "seq": 2, "expires_at": 1})
    collections.mark_changed("staff", IndexChange(removed=(uid(0, 1),)))
    assert [change.seq for change in collections.changes("staff", 2, 9)] == [9]

    # A change larger than one item allows is split into entries that together say the same.
    many = tuple(uid(9, photo) for photo in range(2500))
    collections.mark_changed("staff", IndexChange(removed=many, users=((uid(0, 0), "alice"), (uid(0, 1), None))))
    tail = collections.changes("staff", 9, 30)
    assert [change.seq for change in tail] == [10, 11, 12, 13]
    assert tuple(face_id for change in tail for face_id in change.removed) == many
    assert tail[-1].users == ((uid(0, 0), "alice"), (uid(0, 1), None))


def test_faces_are_read_by_id_consistently_with_their_embeddings(dynamodb):  # type: ignore[no-untyped-def]
    faces = DynamoFaceRepository("faces", dynamodb)
    records, _ = enrolled_people(70, 2, seed=10)
    faces.save_all(records)
    wanted = [records[n].face_id for n in range(0, 140, 3)] + [uid(999, 0)]
    found = faces.get_many(wanted)
    assert sorted(found) == sorted(wanted[:-1])
    assert np.array_equal(found[records[3].face_id].embedding, records[3].embedding)
    assert found[records[3].face_id].external_image_id == "person1"


def test_a_snapshot_a_few_changes_behind_is_published_again_before_the_log_forgets_them(tmp_path: Path, engine: str):
    records, probes = enrolled_people(20, 3, seed=11)
    stack = Stack(tmp_path, engine)
    stack.indexes = stack.start(snapshot_min_changes=1)
    stack.enrol(records[:57])
    stack.indexes.get("staff")
    stack.enrol(records[57:])  # three changes: far below the count that publishes a snapshot
    assert stack.who(probes[19], stack.start()) == ["person19"] * 3
    assert json.loads(stack.snapshots.snapshots["staff"]["collection.json"])["change_seq"] == 1

    files = stack.snapshots.snapshots["staff"]
    state = json.loads(files["collection.json"])
    state["published_at"] -= 4 * 86_400  # published four days ago; the log keeps entries seven
    files["collection.json"] = json.dumps(state).encode()
    assert stack.who(probes[19], stack.start()) == ["person19"] * 3
    assert json.loads(stack.snapshots.snapshots["staff"]["collection.json"])["change_seq"] == 2
