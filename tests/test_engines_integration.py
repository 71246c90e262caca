"""The face API and erasure with a collection on each engine, through the local runtime (moto server with the
emulator's QueryVectors): the same photos enrolled into one collection in the function and one on S3 Vectors
give the same answers, deletes and erasures leave S3 Vectors before they return, and a deleted collection
takes its vector index with it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from candor.adapters.aws import S3VectorStore
from candor.index.s3vectors import index_name
from candor_local.cli.client import CandorClient, client_for
from candor_local.cli.migrate import migrate_in_stack
from candor_local.emulator.runtime import LocalEnvironment

pytestmark = [pytest.mark.integration, pytest.mark.s3vectors]
STACK = "candor-engines"
CONSENT = "consent-form-engines"
ENGINES = ["in-function", "s3vectors"]


@pytest.fixture(scope="module")
def env(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    with LocalEnvironment.start(stack_name=STACK, model_dir=model_dir, log_dir=tmp_path_factory.mktemp("logs")) as e:
        yield e


@pytest.fixture(scope="module")
def rekognition(env: LocalEnvironment) -> Any:
    client = env.session.client("rekognition", endpoint_url=env.api_url)

    def consent(request: Any, **_: Any) -> None:
        request.headers["X-Candor-Consent"] = CONSENT

    client.meta.events.register("before-sign.rekognition", consent)
    return client


@pytest.fixture(scope="module")
def candor(env: LocalEnvironment) -> CandorClient:
    return client_for(env)


def vector_store(env: LocalEnvironment) -> S3VectorStore:
    client = env.session.client("s3vectors", endpoint_url=env.endpoint_url)
    arn = env.resources.get("VectorBucket", "")
    return S3VectorStore(arn, client)


def stored_keys(env: LocalEnvironment, collection_id: str) -> set[str]:
    """The keys of the collection's S3 Vectors index (empty when it has none)."""
    table = env.session.resource("dynamodb", endpoint_url=env.endpoint_url).Table(env.resources["CollectionsTable"])
    item = table.get_item(Key={"collection_id": collection_id}, ConsistentRead=True).get("Item")
    if item is None:
        return set()
    from candor.adapters.records import collection_from_dict

    store, name = vector_store(env), index_name(collection_from_dict(item))
    return set(store.keys(name)) if store.has_index(name) else set()


@pytest.fixture(scope="module")
def collections(env: LocalEnvironment, rekognition: Any, candor: CandorClient, faces_dir: Path) -> dict[str, Any]:
    """The same people enrolled into a collection on each engine: uploads through the pipeline, and IndexFaces."""
    made: dict[str, Any] = {}
    for engine in ENGINES:
        collection = f"{engine}-{uuid.uuid4().hex[:6]}"
        rekognition.create_collection(CollectionId=collection)
        if engine != "in-function":
            moved = migrate_in_stack(
                collection,
                engine,
                session=env.session,
                endpoint_url=env.endpoint_url,
                resources=env.resources,
                stack_name=STACK,
                progress=lambda line: None,
            )
            assert moved.moved
        keys = [
            candor.upload_enrolment(collection, "obama", faces_dir / "enroll/obama/obama.jpg", CONSENT),
            candor.upload_enrolment(collection, "obama", faces_dir / "enroll/obama/obama2.jpg", CONSENT),
            candor.upload_enrolment(collection, "biden", faces_dir / "enroll/biden/biden.jpg", CONSENT),
        ]
        assert {r["status"] for r in candor.wait_for_photos(keys, timeout_s=180).values()} == {"COMPLETE"}
        rekognition.index_faces(
            CollectionId=collection,
            Image={"Bytes": (faces_dir / "enroll/rose_leslie/img1.jpg").read_bytes()},
            ExternalImageId="rose_leslie",
            MaxFaces=1,
        )
        made[engine] = collection
    return made


def _search(rekognition: Any, collection: str, faces_dir: Path, photo: str) -> list[tuple[str, float]]:
    found = rekognition.search_faces_by_image(
        CollectionId=collection, Image={"Bytes": (faces_dir / photo).read_bytes()}, FaceMatchThreshold=80
    )
    return [(m["Face"].get("ExternalImageId", ""), m["Similarity"]) for m in found["FaceMatches"]]


def test_both_engines_answer_the_same_people_with_the_same_similarities(
    env: LocalEnvironment, rekognition: Any, collections: dict[str, Any], faces_dir: Path
) -> None:
    answers = {
        engine: _search(rekognition, name, faces_dir, "probe/obama1.jpg") for engine, name in collections.items()
    }
    assert [who for who, _ in answers["in-function"]] == [who for who, _ in answers["s3vectors"]]
    assert answers["s3vectors"] and answers["s3vectors"][0][0] == "obama"
    for (_, inside), (_, outside) in zip(answers["in-function"], answers["s3vectors"], strict=True):
        assert outside == pytest.approx(inside, abs=0.01)  # one similarity scale: S3 Vectors' 1 - d is the cosine
    # Every enrolled face of the S3 Vectors collection is in its vector index, and nothing else is.
    listed = rekognition.list_faces(CollectionId=collections["s3vectors"])["Faces"]
    assert stored_keys(env, collections["s3vectors"]) == {face["FaceId"] for face in listed}
    assert stored_keys(env, collections["in-function"]) == set()


@pytest.mark.parametrize("engine", ENGINES)
def test_search_by_face_id_and_delete_faces(
    env: LocalEnvironment, rekognition: Any, collections: dict[str, Any], faces_dir: Path, engine: str
) -> None:
    collection = collections[engine]
    faces = rekognition.list_faces(CollectionId=collection)["Faces"]
    obama = sorted(face["FaceId"] for face in faces if face.get("ExternalImageId") == "obama")
    matches = rekognition.search_faces(CollectionId=collection, FaceId=obama[0], FaceMatchThreshold=80)["FaceMatches"]
    assert [m["Face"]["FaceId"] for m in matches][:1] == [obama[1]]
    rose = [face["FaceId"] for face in faces if face.get("ExternalImageId") == "rose_leslie"]
    assert rekognition.delete_faces(CollectionId=collection, FaceIds=rose)["DeletedFaces"] == rose
    # Gone from the answers, and from S3 Vectors, as soon as the call returned.
    assert "rose_leslie" not in [
        who for who, _ in _search(rekognition, collection, faces_dir, "enroll/rose_leslie/img1.jpg")
    ]
    assert not set(rose) & stored_keys(env, collection)


@pytest.mark.parametrize("engine", ENGINES)
def test_erasure_leaves_nothing_of_the_person_on_either_engine(
    env: LocalEnvironment, rekognition: Any, candor: CandorClient, collections: dict[str, Any], engine: str
) -> None:
    collection = collections[engine]
    before = {f["FaceId"] for f in rekognition.list_faces(CollectionId=collection)["Faces"]}
    erased = candor.call("CandorService.ErasePerson", {"CollectionId": collection, "PersonId": "obama"})
    assert erased["FacesRemoved"] == 2 and erased["Proof"]["Erased"] is True
    left = {f["FaceId"]: f.get("ExternalImageId") for f in rekognition.list_faces(CollectionId=collection)["Faces"]}
    assert set(left.values()) == {"biden"} and len(before) - len(left) == 2
    if engine == "s3vectors":
        assert stored_keys(env, collection) == set(left)  # the erased vectors are out of S3 Vectors


def test_a_collection_moves_back_into_the_function_and_a_deleted_one_takes_its_vector_index(
    env: LocalEnvironment, rekognition: Any, collections: dict[str, Any], faces_dir: Path
) -> None:
    collection = collections["s3vectors"]
    moved = migrate_in_stack(
        collection,
        "in-function",
        session=env.session,
        endpoint_url=env.endpoint_url,
        resources=env.resources,
        stack_name=STACK,
        progress=lambda line: None,
    )
    assert moved.moved and moved.faces == 1
    assert stored_keys(env, collection) == set()  # its S3 Vectors index went with the move
    assert [who for who, _ in _search(rekognition, collection, faces_dir, "enroll/biden/biden.jpg")][:1] == ["biden"]
    other = f"gone-{uuid.uuid4().hex[:6]}"
    rekognition.create_collection(CollectionId=other)
    migrate_in_stack(
        other,
        "s3vectors",
        session=env.session,
        endpoint_url=env.endpoint_url,
        resources=env.resources,
        stack_name=STACK,
        progress=lambda line: None,
    )
    rekognition.index_faces(
        CollectionId=other,
        Image={"Bytes": (faces_dir / "enroll/biden/biden.jpg").read_bytes()},
        ExternalImageId="biden",
        MaxFaces=1,
    )
    store = vector_store(env)
    names_before = {i["indexName"] for i in store._client.list_indexes(vectorBucketArn=store._bucket_arn)["indexes"]}
    # DeleteCollection is policy administration: the admin Function URL serves it.
    admin = env.admin_session.client("rekognition", endpoint_url=env.admin_url)
    admin.delete_collection(CollectionId=other)
    names_after = {i["indexName"] for i in store._client.list_indexes(vectorBucketArn=store._bucket_arn)["indexes"]}
    assert len(names_before - names_after) == 1
