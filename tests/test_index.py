"""The vector index: what a search returns, after adds, removes and a reload from a snapshot, on every engine."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto import mock_aws
from PIL import Image

from candor import collection_service
from candor.adapters.aws import DynamoFaceRepository, S3IndexSnapshotStore
from candor.adapters.memory import (
    MemoryCollectionRepository,
    MemoryFaceRepository,
    MemoryIndexSnapshotStore,
    MemoryUserRepository,
    MemoryVectorStore,
)
from candor.core.errors import InvalidParameterError
from candor.core.faces import BoundingBox, DetectedFace, FaceRecord
from candor.core.settings import EMBEDDER_VERSION, EMBEDDING_SIZE
from candor.index.s3vectors import S3VectorsIndex
from candor.index.sync import IndexSync
from candor.index.vectors import (
    ExactVectorIndex,
    HnswVectorIndex,
    Neighbour,
    VectorIndex,
    load_index,
)
from candor.ports import Collection, IndexChange
from candor.search import CollectionIndexes, search_image

DIMENSION = EMBEDDING_SIZE

ENGINES: dict[str, Callable[[], VectorIndex]] = {
    "exact": ExactVectorIndex,
    "hnsw-small": HnswVectorIndex,  # below its graph size: exact brute force
    "hnsw-graph": lambda: HnswVectorIndex(min_graph_faces=0),
    # The S3 Vectors engine over the exact in-memory store, paging past a topK of 7.
    "s3vectors": lambda: memory_s3vectors_index(),
}


def memory_s3vectors_index() -> S3VectorsIndex:
    store = MemoryVectorStore(max_top_k=7)
    store.create_index("staff", DIMENSION)
    return S3VectorsIndex(store, "staff", "test-model")


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def people(count: int, photos: int, seed: int = 1) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`photos` photos each of `count` people (ids person-photo) and one new photo of each person."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((count, DIMENSION)))
    noise = 0.6 / np.sqrt(DIMENSION)
    vectors = unit(np.repeat(centres, photos, axis=0) + noise * rng.standard_normal((count * photos, DIMENSION)))
    ids = [f"p{person:03d}-{photo}" for person in range(count) for photo in range(photos)]
    return ids, vectors, unit(centres + noise * rng.standard_normal((count, DIMENSION)))


def ids_of(neighbours: list[Neighbour]) -> list[str]:
    return [n.face_id for n in neighbours]


@pytest.fixture(params=sorted(ENGINES))
def new_index(request: pytest.FixtureRequest) -> Callable[[], VectorIndex]:
    return ENGINES[request.param]


def test_search_returns_the_persons_photos_nearest_first_with_exact_cosines(new_index: Callable[[], VectorIndex]):
    ids, vectors, probes = people(30, 4)
    index = new_index()
    index.add(ids, vectors)
    [hits] = index.search(probes[5], k=4, min_cosine=-1.0)
    assert sorted(ids_of(hits)) == [f"p005-{photo}" for photo in range(4)]
    cosines = [hit.cosine for hit in hits]
    assert cosines == sorted(cosines, reverse=True)
    expected = {face_id: float(vectors[ids.index(face_id)] @ probes[5]) for face_id in ids_of(hits)}
    assert all(hit.cosine == pytest.approx(expected[hit.face_id], abs=1e-6) for hit in hits)
    assert len(index) == 120


def test_no_neighbour_below_the_threshold_and_at_most_k(new_index: Callable[[], VectorIndex]):
    ids, vectors, probes = people(30, 4)
    index = new_index()
    index.add(ids, vectors)
    answers = index.search(probes, k=3, min_cosine=0.5)
    assert len(answers) == 30
    for person, hits in enumerate(answers):
        assert len(hits) == 3
        assert all(hit.cosine >= 0.5 and hit.face_id.startswith(f"p{person:03d}-") for hit in hits)
    # A stranger matches nobody above the threshold, though every face is some distance away.
    stranger = unit(np.random.default_rng(9).standard_normal(DIMENSION))
    assert index.search(stranger, k=5, min_cosine=0.5) == [[]]
    assert len(index.search(stranger, k=5, min_cosine=-1.0)[0]) == 5


def test_removed_faces_are_never_returned_and_a_re_added_face_has_its_new_vector(
    new_index: Callable[[], VectorIndex],
):
    ids, vectors, probes = people(20, 3)
    index = new_index()
    index.add(ids, vectors)
    index.remove(["p004-0", "p004-1", "unknown"])
    assert ids_of(index.search(probes[4], k=3, min_cosine=0.3)[0]) == ["p004-2"]
    assert "p004-0" not in index and len(index) == 58
    # The same face id added again (a re-upload) replaces its vector instead of adding a copy.
    index.add(["p004-2"], probes[7][None, :])
    assert index.search(probes[4], k=3, min_cosine=0.3) == [[]]
    [hits] = index.search(probes[7], k=1, min_cosine=0.3)
    assert hits == [Neighbour("p004-2", pytest.approx(1.0, abs=1e-6))]  # type: ignore[arg-type]
    assert len(index) == 58


def test_empty_index_and_k_zero_answer_nothing(new_index: Callable[[], VectorIndex]):
    index = new_index()
    probe = unit(np.ones(DIMENSION))
    assert index.search(probe, k=5, min_cosine=-1.0) == [[]]
    index.add(["a"], probe[None, :])
    assert index.search(np.stack([probe, probe]), k=0, min_cosine=-1.0) == [[], []]
    with pytest.raises(ValueError):
        index.add(["a", "b"], probe[None, :])


def test_persist_and_load_answer_the_same_and_keep_taking_changes(new_index: Callable[[], VectorIndex], tmp_path: Path):
    ids, vectors, probes = people(25, 4)
    index = new_index()
    if index.engine == "s3vectors":
        pytest.skip("its vectors are not in the snapshot (tests/test_vector_engines.py covers its snapshot)")
    index.add(ids, vectors)
    index.remove(["p003-1"])
    before = index.search(probes, k=5, min_cosine=0.2)
    index.persist(tmp_path / "snapshot")
    loaded = load_index(tmp_path / "snapshot")
    assert type(loaded) is type(index)
    assert loaded.search(probes, k=5, min_cosine=0.2) == before
    assert "p003-1" not in loaded and len(loaded) == 99
    # A loaded index (its vectors memory-mapped) still takes adds and removes, and persists again.
    loaded.add(["fresh"], probes[3][None, :])
    loaded.remove(["p003-0"])
    assert ids_of(loaded.search(probes[3], k=2, min_cosine=0.2)[0])[0] == "fresh"
    loaded.persist(tmp_path / "again")
    again = load_index(tmp_path / "again")
    assert again.search(probes, k=5, min_cosine=0.2) == loaded.search(probes, k=5, min_cosine=0.2)
    assert "p003-0" not in ids_of(again.search(probes[3], k=5, min_cosine=-1.0)[0])


def test_a_snapshot_written_before_the_metric_was_recorded_loads_as_the_cosine_graph_it_is(tmp_path: Path):
    ids, vectors, probes = people(25, 4)
    index = HnswVectorIndex(min_graph_faces=0, metric="cos")
    index.add(ids, vectors)
    index.persist(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "index.json").read_text())
    del meta["metric"]
    (tmp_path / "old" / "index.json").write_text(json.dumps(meta))
    loaded = load_index(tmp_path / "old")
    assert isinstance(loaded, HnswVectorIndex) and loaded.metric == "cos"
    assert loaded.search(probes, k=5, min_cosine=0.2) == index.search(probes, k=5, min_cosine=0.2)


# --- the collection's warm index, its snapshot and the faces table --------------------------------------


def face(face_id: str, vector: np.ndarray, collection_id: str = "staff") -> FaceRecord:
    return FaceRecord(
        face_id=face_id,
        photo_id=f"photo-{face_id}",
        bounding_box=BoundingBox(0.1, 0.1, 0.5, 0.5),
        confidence=0.99,
        embedding=vector,
        model_version="test",
        collection_id=collection_id,
        external_image_id=face_id.split("-")[0],
    )


class Stack:
    """The tables and the index bucket, with a search function that can be restarted."""

    def __init__(self, tmp_path: Path) -> None:
        self.faces = MemoryFaceRepository()
        self.collections = MemoryCollectionRepository()
        self.snapshots = MemoryIndexSnapshotStore()
        self.collections.create(Collection("staff", "2026-01-01T00:00:00Z", EMBEDDER_VERSION))
        self._tmp = tmp_path
        self._starts = 0
        self.indexes = self.start()

    def start(self) -> CollectionIndexes:
        """A cold search function: nothing warm, only the tables and the bucket."""
        self._starts += 1
        sync = IndexSync(
            self.snapshots,
            work_dir=self._tmp / f"start-{self._starts}",
            snapshot_min_faces=0,
            snapshot_min_changes=1,
            background=False,
        )
        return CollectionIndexes(self.faces, self.collections, sync)

    def enrol(self, records: list[FaceRecord]) -> None:
        self.faces.save_all(records)
        self.collections.mark_changed("staff", IndexChange(added=tuple(r.face_id for r in records)))

    def delete(self, face_ids: list[str]) -> None:
        self.faces.delete_all(face_ids)
        self.collections.mark_changed("staff", IndexChange(removed=tuple(face_ids)))

    def who(self, probe: np.ndarray, indexes: CollectionIndexes | None = None) -> list[str]:
        _, index, records = (indexes or self.indexes).get("staff")
        return [records[hit.face_id].external_image_id or "" for hit in index.search(probe, 3, 0.4)[0]]


def test_a_fresh_face_is_found_and_a_deleted_one_never_again_even_after_a_restart(tmp_path: Path):
    ids, vectors, probes = people(50, 3, seed=6)
    stack = Stack(tmp_path)
    stack.enrol([face(face_id, vector) for face_id, vector in zip(ids[:120], vectors[:120], strict=True)])
    assert stack.who(probes[10]) == ["p010"] * 3
    assert stack.snapshots.snapshots["staff"], "the index was published to the bucket"

    # Fresh faces: searchable on the next search, by the warm function, without a rebuild.
    warm_index = stack.indexes.get("staff")[1]
    stack.enrol([face(face_id, vector) for face_id, vector in zip(ids[120:], vectors[120:], strict=True)])
    assert stack.who(probes[45]) == ["p045"] * 3
    assert stack.indexes.get("staff")[1] is warm_index

    # Deleted faces: gone from the next search.
    stack.delete(["p010-0", "p010-1", "p045-2"])
    assert stack.who(probes[10]) == ["p010"]
    assert stack.who(probes[45]) == ["p045"] * 2

    # A restart loads the bucket's snapshot, then applies what the table says changed since.
    published = dict(stack.snapshots.snapshots["staff"])
    stack.delete(["p010-2"])
    stack.enrol([face("p010-new", probes[10])])
    stack.snapshots.snapshots["staff"] = published  # the snapshot predates that delete and that enrolment
    restarted = stack.start()
    assert stack.who(probes[10], restarted) == ["p010"]
    _, index, _ = restarted.get("staff")
    assert "p010-2" not in index and "p010-new" in index and len(index) == 147


def test_a_stale_snapshot_of_a_collection_emptied_meanwhile_finds_nobody(tmp_path: Path):
    ids, vectors, probes = people(10, 3, seed=8)
    stack = Stack(tmp_path)
    stack.enrol([face(face_id, vector) for face_id, vector in zip(ids, vectors, strict=True)])
    assert stack.who(probes[2]) == ["p002"] * 3
    stack.delete(list(ids))
    assert stack.who(probes[2], stack.start()) == []


def test_a_broken_snapshot_costs_a_rebuild_never_a_wrong_answer(tmp_path: Path):
    ids, vectors, probes = people(10, 3, seed=8)
    stack = Stack(tmp_path)
    stack.enrol([face(face_id, vector) for face_id, vector in zip(ids, vectors, strict=True)])
    stack.who(probes[0])
    files = stack.snapshots.snapshots["staff"]
    for name in files:
        files[name] = b"not an index"
    assert stack.who(probes[4], stack.start()) == ["p004"] * 3


def test_snapshots_in_s3_round_trip_and_only_the_last_two_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="index")
        store = S3IndexSnapshotStore("index", s3)
        assert not store.fetch("staff", tmp_path / "none")
        ids, vectors, probes = people(20, 3)
        index = HnswVectorIndex(min_graph_faces=0)
        for round_ in range(3):
            index.add([f"{face_id}-{round_}" for face_id in ids], vectors)
            index.persist(tmp_path / f"persisted-{round_}")
            store.publish("staff", tmp_path / f"persisted-{round_}")
        assert store.fetch("staff", tmp_path / "fetched")
        fetched = load_index(tmp_path / "fetched")
        assert len(fetched) == 180
        assert fetched.search(probes, 3, 0.2) == index.search(probes, 3, 0.2)
        listed = s3.list_objects_v2(Bucket="index", Prefix="snapshots/staff/")["Contents"]
        assert len({item["Key"].split("/")[2] for item in listed}) == 2  # the latest and the one before

        # A deleted collection leaves no embeddings behind in the bucket.
        store.delete("staff")
        assert s3.list_objects_v2(Bucket="index").get("KeyCount", 0) == 0
        assert not store.fetch("staff", tmp_path / "after-delete")


def test_deleting_a_collection_drops_its_warm_index_and_its_snapshots(tmp_path: Path):
    from candor import collection_service
    from candor.adapters.memory import MemoryUserRepository

    ids, vectors, _ = people(10, 3, seed=8)
    stack = Stack(tmp_path)
    stack.enrol([face(face_id, vector) for face_id, vector in zip(ids, vectors, strict=True)])
    stack.indexes.get("staff")
    assert stack.snapshots.snapshots.get("staff")
    store = collection_service.CollectionStore(stack.collections, stack.faces, MemoryUserRepository(), stack.indexes)

    collection_service.delete_collection(store, "staff")

    assert "staff" not in stack.snapshots.snapshots
    assert list(stack.faces.list_collection("staff")) == []


def test_a_process_that_builds_a_graph_first_can_still_load_a_model() -> None:
    # usearch loaded before onnxruntime crashes onnxruntime's import; the index loads onnxruntime first.
    import subprocess
    import sys

    script = (
        "import numpy as np\n"
        "from candor.index.vectors import HnswVectorIndex\n"
        "v = np.random.default_rng(0).normal(size=(40, 128)).astype(np.float32)\n"
        "v /= np.linalg.norm(v, axis=1, keepdims=True)\n"
        "index = HnswVectorIndex(dimension=128, min_graph_faces=8)\n"
        "index.add([str(i) for i in range(40)], v)\n"
        "assert index.search(v[:1], 1, 0.5)[0][0].face_id == '0'\n"
        "import onnxruntime\n"
        "print('loaded', onnxruntime.__version__)\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.startswith("loaded")


# --- a deletion the warm index has not caught up with ---------------------------------------------------------


class LaggingFaces(MemoryFaceRepository):
    """The faces table as AWS serves it: the ByCollection index, which the warm index loads from, still lists
    faces deleted from the table (its replication is eventually consistent); the table itself is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.listed: dict[str, FaceRecord] = {}

    def save_all(self, faces: Sequence[FaceRecord]) -> None:
        super().save_all(faces)
        self.listed.update({face.face_id: face for face in faces})

    def set_user(self, face_ids: Sequence[str], user_id: str | None) -> None:
        super().set_user(face_ids, user_id)
        self.listed.update({face_id: self.faces[face_id] for face_id in face_ids if face_id in self.faces})

    def list_collection(self, collection_id: str) -> list[FaceRecord]:
        return [face for face in self.listed.values() if face.collection_id == collection_id]


def uid(person: int, photo: int) -> str:
    return f"{person:08x}-0000-4000-8000-{photo:012x}"


class OneFace:
    """Detector and embedder of a search photo: one face, whose embedding is the given probe."""

    version = "test"

    def __init__(self, probe: np.ndarray) -> None:
        self.probe = probe

    def detect(self, image: np.ndarray, max_faces: int = 100, min_confidence: float = 0.0) -> list[DetectedFace]:
        return [DetectedFace(BoundingBox(20, 20, 60, 60), ((35, 40), (65, 40), (50, 55), (38, 68), (62, 68)), 0.99)]

    def embed_faces(self, image: np.ndarray, faces: Sequence[DetectedFace]) -> np.ndarray:
        return np.stack([self.probe for _ in faces])


def test_a_face_deleted_from_the_table_is_never_returned_while_the_warm_index_still_holds_it() -> None:
    _, vectors, probes = people(6, 3, seed=11)
    faces, collections = LaggingFaces(), MemoryCollectionRepository()
    collections.create(Collection("staff", "2026-01-01T00:00:00Z", EMBEDDER_VERSION))
    faces.save_all(
        [face(uid(n // 3, n % 3), vector) for n, vector in enumerate(vectors)]  # person n // 3, photo n % 3
    )
    store = collection_service.CollectionStore(
        collections, faces, MemoryUserRepository(), CollectionIndexes(faces, collections)
    )
    photo = io.BytesIO()
    Image.new("RGB", (100, 100), (128, 128, 128)).save(photo, format="PNG")
    detector = embedder = OneFace(probes[1])

    def by_image() -> list[str]:
        result = search_image(
            photo.getvalue(),
            "staff",
            detector=detector,
            embedder=embedder,
            indexes=store.indexes,
            face_match_threshold=80.0,
            max_matches=5,
            min_confidence=0.5,
        )
        return [match.face_id for match in result.faces[0].matches]

    def by_face(face_id: str) -> list[str]:
        matches = collection_service.search_by_face_id(store, "staff", face_id, threshold=80.0, max_faces=5)
        return [match.face_id for match in matches]

    assert sorted(by_image()) == [uid(1, 0), uid(1, 1), uid(1, 2)]
    assert sorted(by_face(uid(1, 0))) == [uid(1, 1), uid(1, 2)]

    # DeleteFaces deletes from the table, then logs the change: a search in between has the face in its index.
    faces.delete_all([uid(1, 1)])
    _, index, records = store.indexes.get("staff")
    assert uid(1, 1) in index and uid(1, 1) in records, "the warm index has not applied the deletion yet"

    assert sorted(by_image()) == [uid(1, 0), uid(1, 2)]
    assert sorted(by_face(uid(1, 0))) == [uid(1, 2)]
    with pytest.raises(InvalidParameterError):
        by_face(uid(1, 1))  # the deleted face itself cannot be searched with either

    # A user is scored by its faces that still exist: by the next best one, and not at all once none is left.
    collection_service.create_user(store, "staff", "alice")
    collection_service.associate_faces(store, "staff", "alice", [uid(2, 0), uid(2, 1)])
    scores = {
        match.face_id: match.similarity
        for match in collection_service.search_by_face_id(store, "staff", uid(2, 2), threshold=80.0, max_faces=5)
    }
    best, other = sorted([uid(2, 0), uid(2, 1)], key=lambda face_id: -scores[face_id])

    def users() -> list[tuple[str, float]]:
        found = collection_service.search_users(store, "staff", face_id=uid(2, 2), threshold=80.0, max_users=5)
        return [(match.user_id, match.similarity) for match in found]

    assert users() == [("alice", scores[best])]
    for gone, expected in ((best, [("alice", scores[other])]), (other, [])):
        faces.delete_all([gone])  # an erasure deletes a user's faces from the table, then logs the change
        assert gone in store.indexes.get("staff")[1]
        assert users() == expected


def test_the_faces_table_says_which_faces_exist_in_batches_of_a_hundred(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        dynamodb = boto3.resource("dynamodb")
        dynamodb.create_table(
            TableName="faces",
            KeySchema=[{"AttributeName": "face_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "face_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        table = DynamoFaceRepository("faces", dynamodb)
        vector = unit(np.ones(DIMENSION))
        table.save_all([face(uid(1, photo), vector) for photo in range(150)])
        table.delete_all([uid(1, 7), uid(1, 120)])
        asked = [uid(1, photo) for photo in range(150)] + [uid(2, 0), uid(1, 3)]
        assert table.existing(asked) == {uid(1, photo) for photo in range(150)} - {uid(1, 7), uid(1, 120)}
        assert table.existing([]) == set()
