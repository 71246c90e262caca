"""The vector-index port's contract, the same tests on every engine: the in-function HNSW index, S3 Vectors
over the exact in-memory store, and S3 Vectors through the AWS adapter on moto server with the emulator's
QueryVectors; each against exact numpy search. Then what only S3 Vectors has: paging past its topK, batches
within its limits, backoff on throttling, deletes (DeleteFaces, erasure) gone before the call returns, and
moving a collection between engines while it is being changed and searched."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import moto
import numpy as np
import pytest
from botocore.exceptions import ClientError
from synthetic_faces import enrolled_people

from candor import collection_service
from candor.adapters.aws import S3VectorStore
from candor.adapters.memory import (
    MemoryCollectionRepository,
    MemoryFaceRepository,
    MemoryIndexSnapshotStore,
    MemoryUserRepository,
    MemoryVectorStore,
)
from candor.core.settings import EMBEDDER_VERSION, EMBEDDING_SIZE
from candor.index.engines import IN_FUNCTION, IndexEngines
from candor.index.migration import migrate_collection
from candor.index.s3vectors import S3VectorsIndex, index_name
from candor.index.sync import IndexSync
from candor.index.vectors import HnswVectorIndex, VectorIndex
from candor.ports import Collection, IndexChange, VectorStore
from candor.search import CollectionIndexes
from candor_local.emulator import moto_s3vectors
from candor_local.emulator.moto_server import MotoEmulator

S3VECTORS = "s3vectors"


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def exact(ids: list[str], vectors: np.ndarray, query: np.ndarray, k: int, min_cosine: float) -> list[str]:
    cosines = vectors.astype(np.float64) @ query.astype(np.float64)
    ranked = sorted((c, face_id) for face_id, c in zip(ids, cosines, strict=True) if c >= min_cosine)
    return [face_id for _, face_id in sorted(ranked, key=lambda pair: (-pair[0], pair[1]))[:k]]


@pytest.fixture(scope="module")
def moto_store() -> Iterator[S3VectorStore]:
    with MotoEmulator() as emulator:
        client = boto3.client(
            "s3vectors",
            endpoint_url=emulator.endpoint_url,
            region_name=emulator.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_vector_bucket(vectorBucketName="candor-test-vectors")
        arn = client.get_vector_bucket(vectorBucketName="candor-test-vectors")["vectorBucket"]["vectorBucketArn"]
        yield S3VectorStore(arn, client)


@pytest.fixture(params=[IN_FUNCTION, "s3vectors-memory", "s3vectors-moto"])
def new_index(request: pytest.FixtureRequest) -> Callable[[str], VectorIndex]:
    """An empty index of each engine (a fresh vector index per call)."""
    if request.param == IN_FUNCTION:
        return lambda name: HnswVectorIndex(min_graph_faces=0)
    store: VectorStore = (
        MemoryVectorStore() if request.param == "s3vectors-memory" else request.getfixturevalue("moto_store")
    )

    def make(name: str) -> VectorIndex:
        store.delete_index(name)
        store.create_index(name, EMBEDDING_SIZE)
        return S3VectorsIndex(store, name, EMBEDDER_VERSION)

    return make


def test_every_engine_answers_what_exact_search_answers_with_candors_cosines(new_index: Callable[[str], VectorIndex]):
    records, probes = enrolled_people(30, 4, seed=21)
    ids = [r.face_id for r in records]
    vectors = np.stack([r.embedding for r in records]).astype(np.float32)
    index = new_index("contract-exact")
    index.add(ids, vectors)
    for k, min_cosine in ((1, 0.0), (5, 0.3), (12, -1.0)):
        found = index.search(probes, k, min_cosine)
        for probe, hits in zip(probes, found, strict=True):
            assert [hit.face_id for hit in hits] == exact(ids, vectors, probe, k, min_cosine)
            # S3 Vectors' cosine distance d is reported as Candor's cosine 1 - d: the same to float32 precision.
            for hit in hits:
                assert hit.cosine == pytest.approx(float(vectors[ids.index(hit.face_id)] @ probe), abs=1e-5)


def test_on_every_engine_a_removed_face_is_never_returned_and_vectors_read_back(
    new_index: Callable[[str], VectorIndex],
):
    records, probes = enrolled_people(10, 3, seed=22)
    ids = [r.face_id for r in records]
    vectors = np.stack([r.embedding for r in records]).astype(np.float32)
    index = new_index("contract-remove")
    index.add(ids, vectors)
    gone = [r.face_id for r in records if r.external_image_id == "person3"]
    index.remove(gone)
    assert not set(gone) & {hit.face_id for hits in index.search(probes, 30, -1.0) for hit in hits}
    assert len(index) == len(ids) - len(gone) and gone[0] not in index
    kept = [face_id for face_id in ids if face_id not in gone][:5]
    np.testing.assert_array_equal(index.vectors(kept), vectors[[ids.index(f) for f in kept]])
    assert index.search(probes[:1], 0, 0.0) == [[]]


def test_a_search_for_more_than_s3_vectors_topk_pages_through_it(moto_store: S3VectorStore) -> None:
    rng = np.random.default_rng(5)
    ids = [f"f{n:04d}" for n in range(260)]
    vectors = unit(rng.standard_normal((260, EMBEDDING_SIZE)))
    moto_store.delete_index("contract-paging")
    moto_store.create_index("contract-paging", EMBEDDING_SIZE)
    index = S3VectorsIndex(moto_store, "contract-paging", EMBEDDER_VERSION)
    index.add(ids, vectors)  # 260 vectors: one PutVectors of 500 at most
    (hits,) = index.search(vectors[7:8], 250, -1.0)  # topK is at most 100: three pages
    assert [hit.face_id for hit in hits] == exact(ids, vectors, vectors[7], 250, -1.0)
    assert hits[0].face_id == "f0007"


def test_writes_go_in_batches_within_the_limits_and_throttling_is_backed_off(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []
    throttled = {"left": 2}

    class Client:
        def put_vectors(self, indexArn: str, vectors: list[Any]) -> None:
            if throttled["left"]:
                throttled["left"] -= 1
                raise ClientError({"Error": {"Code": "TooManyRequestsException"}}, "PutVectors")
            calls.append(("put", len(vectors)))

        def delete_vectors(self, indexArn: str, keys: list[str]) -> None:
            calls.append(("delete", len(keys)))

        def get_vectors(self, indexArn: str, keys: list[str], returnData: bool) -> dict[str, Any]:
            calls.append(("get", len(keys)))
            return {"vectors": []}

    clock = {"now": 0.0}
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["now"] += seconds

    monkeypatch.setattr("candor.adapters.aws.time.sleep", sleep)
    monkeypatch.setattr("candor.adapters.aws.time.monotonic", lambda: clock["now"])
    store = S3VectorStore("arn:aws:s3vectors:us-east-1:123456789012:bucket/b", Client())
    vectors = np.zeros((1_203, EMBEDDING_SIZE), dtype=np.float32)
    store.put("i", [f"k{n}" for n in range(1_203)], vectors, [{}] * 1_203)
    store.delete("i", [f"k{n}" for n in range(1_001)])
    store.get("i", [f"k{n}" for n in range(250)])
    assert calls == [
        *[("put", 500), ("put", 500), ("put", 203)],
        *[("delete", 500), ("delete", 500), ("delete", 1)],
        *[("get", 100), ("get", 100), ("get", 50)],
    ]
    assert throttled["left"] == 0  # the two throttled calls were retried, nothing lost
    # Paced to 2,500 vectors a second: 2,204 vectors written (and two backoffs) take at least 0.88 s.
    assert clock["now"] >= (1_203 + 1_001 - 1) / 2_500 - 1e-9


def test_query_vectors_is_candors_until_moto_ships_its_own() -> None:
    """Fails the day moto answers QueryVectors itself, or is upgraded: then drop moto_s3vectors.py (or check it
    against the new moto) and this test."""
    assert not moto_s3vectors.MOTO_HAS_QUERY_VECTORS, "moto implements QueryVectors now: remove moto_s3vectors.py"
    assert moto.__version__ == moto_s3vectors.PINNED_MOTO_VERSION, "moto moved on: check moto_s3vectors.py against it"


# ------------------------------------------------------------------------------ collections on each engine


class Stack:
    """The tables, the index bucket and a vector bucket (exact, in memory), with warm search functions."""

    def __init__(self, tmp_path: Path, engine: str) -> None:
        self.faces = MemoryFaceRepository()
        self.collections = MemoryCollectionRepository()
        self.users = MemoryUserRepository()
        self.snapshots = MemoryIndexSnapshotStore()
        self.vectors = MemoryVectorStore(max_top_k=10)
        self.collection = Collection("staff", "2026-03-01T00:00:00+00:00", EMBEDDER_VERSION, index_engine=engine)
        self.collections.create(self.collection)
        self._tmp = tmp_path
        self._starts = 0
        self.indexes = self.start()

    def start(self) -> CollectionIndexes:
        self._starts += 1
        sync = IndexSync(
            self.snapshots,
            engines=IndexEngines(self.vectors),
            work_dir=self._tmp / f"start-{self._starts}",
            snapshot_min_faces=0,
            snapshot_min_changes=1,
            background=False,
        )
        return CollectionIndexes(self.faces, self.collections, sync)

    @property
    def store(self) -> collection_service.CollectionStore:
        return collection_service.CollectionStore(self.collections, self.faces, self.users, self.indexes)

    def enrol(self, records: list[Any]) -> None:
        self.faces.save_all(records)
        self.collections.mark_changed("staff", IndexChange(added=tuple(r.face_id for r in records)))

    def who(self, probe: np.ndarray, indexes: CollectionIndexes | None = None) -> list[str]:
        _, index, entries = (indexes or self.indexes).get("staff")
        found = index.search(probe, 3, 0.4)[0]
        alive = entries.existing(hit.face_id for hit in found)
        return [entries[hit.face_id].external_image_id or "" for hit in found if hit.face_id in alive]

    def stored_keys(self) -> set[str]:
        name = index_name(self.collection)
        return set(self.vectors.keys(name)) if self.vectors.has_index(name) else set()


@pytest.mark.parametrize("engine", [IN_FUNCTION, S3VECTORS])
def test_deleted_faces_are_never_returned_after_the_call_and_leave_s3_vectors(tmp_path: Path, engine: str) -> None:
    stack = Stack(tmp_path, engine)
    records, probes = enrolled_people(6, 3, seed=31)
    stack.enrol(records)
    other = stack.start()  # a second warm search function
    assert stack.who(probes[2]) == ["person2"] * 3 and stack.who(probes[2], other) == ["person2"] * 3
    person2 = [r.face_id for r in records if r.external_image_id == "person2"]
    collection_service.delete_faces(stack.store, "staff", person2[:2])
    if engine == S3VECTORS:
        assert not set(person2[:2]) & stack.stored_keys()  # deleted from S3 Vectors before the call returned
        assert len(stack.stored_keys()) == len(records) - 2
    else:
        assert stack.stored_keys() == set()  # an in-function collection has no vector index
    # Neither the warm function that deleted nor the other one (which has not applied the change) returns them.
    assert stack.who(probes[2]) == ["person2"] and stack.who(probes[2], other) == ["person2"]
    assert stack.who(probes[2], stack.start()) == ["person2"]  # nor a cold one


def test_faces_that_enrol_nobody_never_reach_s3_vectors(tmp_path: Path) -> None:
    """Retention: what enrols nobody is kept only until its TTL, in the table; it is never in a vector index."""
    stack = Stack(tmp_path, S3VECTORS)
    records, probes = enrolled_people(3, 2, seed=32)
    from dataclasses import replace

    unenrolled = [replace(r, face_id=f"x{r.face_id}", collection_id=None, expires_at=1) for r in records]
    stack.faces.save_all(unenrolled)
    stack.enrol(records[:2])
    stack.who(probes[0])
    assert stack.stored_keys() == {r.face_id for r in records[:2]}


def test_an_in_function_collection_past_the_limit_is_told_to_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("candor.search.IN_FUNCTION_MAX_FACES", 5)
    for engine, warned in ((IN_FUNCTION, True), (S3VECTORS, False)):
        caplog.clear()
        stack = Stack(tmp_path / engine, engine)
        stack.enrol(enrolled_people(3, 2, seed=34)[0])
        stack.indexes.get("staff")
        assert ("candor migrate staff --engine s3vectors" in caplog.text) is warned


@pytest.mark.parametrize("target", [S3VECTORS, IN_FUNCTION])
def test_a_migration_loses_nothing_and_the_collection_is_searched_throughout(tmp_path: Path, target: str) -> None:
    source = IN_FUNCTION if target == S3VECTORS else S3VECTORS
    stack = Stack(tmp_path, source)
    records, probes = enrolled_people(8, 3, seed=33)
    stack.enrol(records[:18])
    warm = stack.start()
    assert stack.who(probes[1], warm) == ["person1"] * 3

    class Busy(MemoryCollectionRepository):
        """Changes land while the migration runs: a face enrolled and one deleted between its catch-ups."""

    changes = iter(
        [
            lambda: stack.enrol(records[18:]),
            lambda: collection_service.delete_faces(stack.store, "staff", [records[0].face_id]),
        ]
    )
    original = stack.collections.set_index_engine

    def set_engine_after_a_change(collection_id: str, engine: str, change_seq: int) -> bool:
        change = next(changes, None)
        if change is not None:
            change()
            assert stack.who(probes[7], warm) in (["person7"] * 3, [])  # searches keep being answered
        return original(collection_id, engine, change_seq)

    stack.collections.set_index_engine = set_engine_after_a_change  # type: ignore[method-assign]
    result = migrate_collection(
        "staff",
        target,
        collections=stack.collections,
        faces=stack.faces,
        vector_store=stack.vectors,
        snapshots=stack.snapshots,
    )
    assert result.moved and result.rounds == 3 and result.faces == len(records) - 1
    assert stack.collections.get("staff").index_engine == target  # type: ignore[union-attr]
    # The warm function moves to the new engine on its next request, a cold one starts from the new snapshot.
    for indexes in (warm, stack.start()):
        assert stack.who(probes[7], indexes) == ["person7"] * 3
        assert stack.who(probes[0], indexes) == ["person0"] * 2  # the face deleted meanwhile stays deleted
        _, index, _ = indexes.get("staff")
        assert index.engine == (S3VECTORS if target == S3VECTORS else "hnsw")
    if target == S3VECTORS:
        assert stack.stored_keys() == {r.face_id for r in records[1:]}
    else:
        assert stack.stored_keys() == set()  # leaving S3 Vectors deletes its index
    assert (
        migrate_collection(
            "staff", target, collections=stack.collections, faces=stack.faces, vector_store=stack.vectors
        ).moved
        is False
    )


@pytest.mark.aws
@pytest.mark.skipif(os.environ.get("CANDOR_AWS_TESTS") != "1", reason="opt-in: CANDOR_AWS_TESTS=1 and credentials")
def test_on_real_s3_vectors_recall_latency_and_delete_visibility() -> None:
    """Against AWS (a throwaway vector bucket, deleted after): recall@10 against exact search, p50/p99 per query,
    and whether a deleted vector is ever returned by the next query."""
    import time
    import uuid

    if boto3.session.Session().get_credentials() is None:
        pytest.skip("no AWS credentials")
    client = boto3.client("s3vectors")
    bucket = f"candor-test-{uuid.uuid4().hex[:12]}"
    client.create_vector_bucket(vectorBucketName=bucket)
    try:
        arn = client.get_vector_bucket(vectorBucketName=bucket)["vectorBucket"]["vectorBucketArn"]
        store = S3VectorStore(arn, client)
        store.create_index("recall", EMBEDDING_SIZE)
        records, probes = enrolled_people(500, 4, seed=41)
        ids = [r.face_id for r in records]
        vectors = np.stack([r.embedding for r in records]).astype(np.float32)
        index = S3VectorsIndex(store, "recall", EMBEDDER_VERSION)
        index.add(ids, vectors)
        latencies, recalled = [], 0
        for probe in probes[:100]:
            started = time.perf_counter()
            (hits,) = index.search(probe[None, :], 10, -1.0)
            latencies.append(time.perf_counter() - started)
            recalled += len({h.face_id for h in hits} & set(exact(ids, vectors, probe, 10, -1.0)))
        print(
            f"recall@10 {recalled / 1000:.4f}, p50 {np.percentile(latencies, 50) * 1e3:.0f} ms, "
            f"p99 {np.percentile(latencies, 99) * 1e3:.0f} ms"
        )
        assert recalled / 1000 >= 0.9
        index.remove(ids[:4])
        (hits,) = S3VectorsIndex(store, "recall", EMBEDDER_VERSION, ids).search(probes[:1], 10, -1.0)
        print("a deleted vector returned right after its delete:", bool({h.face_id for h in hits} & set(ids[:4])))
    finally:
        with contextlib.suppress(ClientError):
            client.delete_index(vectorBucketName=bucket, indexName="recall")
        client.delete_vector_bucket(vectorBucketName=bucket)
