"""Every face operation through boto3's own Rekognition client against the local runtime, with real photos:
collections, IndexFaces, ListFaces, DeleteFaces, SearchFaces, SearchFacesByImage, CompareFaces, DetectFaces
and users, asserting the identities found and Rekognition's error codes for bad requests."""

from __future__ import annotations

import http.client
import io
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError
from lambda_helpers import connect_cli
from PIL import Image, ImageFilter

from candor.core.settings import EMBEDDER_VERSION
from candor_local.cli.migrate import migrate_in_stack
from candor_local.emulator.function_url import MAX_REQUEST_BYTES, invoke_function_url
from candor_local.emulator.runtime import LocalEnvironment
from candor_local.packaging.models import NO_FACE_SAMPLES, sample_photo_bytes

pytestmark = pytest.mark.integration

PORTRAITS = {
    "obama": ("obama/obama.jpg", "obama/obama2.jpg"),
    "biden": ("biden/biden.jpg",),
    "kit_harington": ("kit_harington/john1.jpeg",),
    "rose_leslie": ("rose_leslie/img1.jpg",),
    "alex_lacamoire": ("alex_lacamoire/img1.jpg",),
}
MISSING_FACE_ID = "00000000-0000-4000-8000-000000000000"
# Every enrolment states the enrolled person's consent reference (IndexFaces: the X-Candor-Consent header).
CONSENT = "consent-form-api-tests"


@pytest.fixture(scope="module")
def env(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    with LocalEnvironment.start(
        stack_name="candor-api", model_dir=model_dir, log_dir=tmp_path_factory.mktemp("logs")
    ) as environment:
        yield environment


def _stating_consent(client: Any, consent: str) -> Any:
    def add_consent(request: Any, **_: Any) -> None:
        request.headers["X-Candor-Consent"] = consent

    client.meta.events.register("before-sign.rekognition", add_consent)
    return client


@pytest.fixture(scope="module")
def rekognition(env: LocalEnvironment) -> Any:
    return _stating_consent(env.session.client("rekognition", endpoint_url=env.api_url), CONSENT)


@pytest.fixture(scope="module", params=["in-function", "s3vectors"])
def people(request: pytest.FixtureRequest, env: LocalEnvironment, rekognition: Any, faces_dir: Path) -> dict[str, Any]:
    """A collection filled both ways: portraits through IndexFaces, and biden2.jpg uploaded to the bucket; once
    with its vectors in the search function, once on S3 Vectors (every test that uses it runs on both)."""
    collection = f"people-{uuid.uuid4().hex[:8]}"
    rekognition.create_collection(CollectionId=collection)
    if request.param != "in-function":
        migrate_in_stack(
            collection,
            request.param,
            session=env.session,
            endpoint_url=env.endpoint_url,
            resources=env.resources,
            stack_name="candor-api",
            progress=lambda line: None,
        )
    face_ids: dict[str, list[str]] = {}
    for person, photos in PORTRAITS.items():
        for photo in photos:
            response = rekognition.index_faces(
                CollectionId=collection,
                Image={"Bytes": (faces_dir / "enroll" / photo).read_bytes()},
                ExternalImageId=person,
                MaxFaces=1,
            )
            face_ids.setdefault(person, []).extend(r["Face"]["FaceId"] for r in response["FaceRecords"])
    env.client("s3").put_object(
        Bucket=env.resources["UploadBucket"],
        Key=f"enroll/{collection}/biden/biden2.jpg",
        Body=(faces_dir / "enroll/biden/biden2.jpg").read_bytes(),
        Metadata={"candor-consent": CONSENT},
    )
    env.wait_idle(timeout=120)
    return {"collection": collection, "face_ids": face_ids}


@contextmanager
def _refused(code: str) -> Iterator[None]:
    """A request refused with `code`; for ValidationException, which Rekognition's model does not list among its
    errors, boto3 raises a plain ClientError."""
    with pytest.raises(ClientError) as refused:
        yield
    assert refused.value.response["Error"]["Code"] == code, refused.value.response["Error"]


def _photo(faces_dir: Path, name: str) -> dict[str, bytes]:
    return {"Bytes": (faces_dir / name).read_bytes()}


def _scratch(rekognition: Any) -> str:
    collection = f"scratch-{uuid.uuid4().hex[:8]}"
    rekognition.create_collection(CollectionId=collection)
    return collection


def _noise_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), uuid.uuid4().bytes * (side * side * 3 // 16 + 1)).save(buffer, "PNG")
    return buffer.getvalue()


def test_collections_are_created_described_listed_and_deleted_with_their_faces(
    env: LocalEnvironment, rekognition: Any, faces_dir: Path
) -> None:
    # Deleting a collection is policy administration: the admin Function URL, with the admin's key.
    admin = env.admin_session.client("rekognition", endpoint_url=env.admin_url)
    collection = _scratch(rekognition)
    rekognition.index_faces(CollectionId=collection, Image=_photo(faces_dir, "enroll/obama/obama.jpg"))
    described = rekognition.describe_collection(CollectionId=collection)
    assert described["FaceCount"] == 1 and described["CollectionARN"].endswith(f"collection/{collection}")
    assert described["UserCount"] == 0
    assert collection in rekognition.list_collections()["CollectionIds"]
    paged = rekognition.get_paginator("list_collections").paginate(PaginationConfig={"PageSize": 1})
    assert [page["CollectionIds"] for page in paged] == [[c] for c in rekognition.list_collections()["CollectionIds"]]

    assert admin.delete_collection(CollectionId=collection)["StatusCode"] == 200
    assert collection not in rekognition.list_collections()["CollectionIds"]
    with pytest.raises(rekognition.exceptions.ResourceNotFoundException):
        rekognition.describe_collection(CollectionId=collection)
    with pytest.raises(admin.exceptions.ResourceNotFoundException):
        admin.delete_collection(CollectionId=collection)
    # A collection created again under the same name starts empty: its faces went with it.
    rekognition.create_collection(CollectionId=collection)
    assert rekognition.list_faces(CollectionId=collection)["Faces"] == []
    admin.delete_collection(CollectionId=collection)
    with _refused("ValidationException"):  # the model's pattern for a CollectionId
        rekognition.create_collection(CollectionId="not a valid id!")


def test_index_faces_returns_the_face_and_its_details(
    env: LocalEnvironment, rekognition: Any, people: dict, faces_dir: Path
) -> None:
    collection = _scratch(rekognition)
    response = rekognition.index_faces(
        CollectionId=collection,
        Image=_photo(faces_dir, "enroll/rose_leslie/img2.jpg"),
        ExternalImageId="rose",
    )
    (record,) = response["FaceRecords"]
    assert response["UnindexedFaces"] == [] and response["FaceModelVersion"] == EMBEDDER_VERSION
    assert record["Face"]["ExternalImageId"] == "rose" and record["Face"]["Confidence"] > 80
    detail = record["FaceDetail"]
    assert {landmark["Type"] for landmark in detail["Landmarks"]} == {
        "eyeLeft",
        "eyeRight",
        "nose",
        "mouthLeft",
        "mouthRight",
    }
    assert all(abs(detail["Pose"][angle]) < 25 for angle in ("Roll", "Yaw", "Pitch"))
    assert detail["Quality"]["Sharpness"] > 50 and 20 < detail["Quality"]["Brightness"] < 90
    assert all(len(ids) == len(PORTRAITS[person]) for person, ids in people["face_ids"].items())
    # Without the person's consent reference nobody is indexed.
    unstated = env.session.client("rekognition", endpoint_url=env.api_url)
    with pytest.raises(unstated.exceptions.AccessDeniedException, match="X-Candor-Consent"):
        unstated.index_faces(
            CollectionId=collection, Image=_photo(faces_dir, "enroll/rose_leslie/img1.jpg"), ExternalImageId="rose"
        )
    assert [face["FaceId"] for face in rekognition.list_faces(CollectionId=collection)["Faces"]] == [
        record["Face"]["FaceId"]
    ]


def test_index_faces_says_why_faces_were_left_out(rekognition: Any, faces_dir: Path) -> None:
    collection = _scratch(rekognition)
    group = rekognition.index_faces(
        CollectionId=collection, Image=_photo(faces_dir, "probe/obama_and_biden.jpg"), MaxFaces=1
    )
    assert len(group["FaceRecords"]) == 1 and len(group["UnindexedFaces"]) >= 1
    assert all(face["Reasons"] == ["EXCEEDS_MAX_FACES"] for face in group["UnindexedFaces"])
    # The one indexed is the largest face.
    indexed_box = group["FaceRecords"][0]["FaceDetail"]["BoundingBox"]
    assert all(face["FaceDetail"]["BoundingBox"]["Width"] <= indexed_box["Width"] for face in group["UnindexedFaces"])
    crowd = rekognition.index_faces(
        CollectionId=collection, Image=_photo(faces_dir, "detect/2007_007763.jpg"), QualityFilter="HIGH"
    )
    assert crowd["UnindexedFaces"] and all("SMALL_BOUNDING_BOX" in f["Reasons"] for f in crowd["UnindexedFaces"])
    unfiltered = rekognition.index_faces(
        CollectionId=collection, Image=_photo(faces_dir, "detect/2007_007763.jpg"), QualityFilter="NONE"
    )
    assert unfiltered["UnindexedFaces"] == []
    assert len(unfiltered["FaceRecords"]) == len(crowd["FaceRecords"]) + len(crowd["UnindexedFaces"])
    with _refused("ValidationException"):  # not one of the model's QualityFilter values
        rekognition.index_faces(
            CollectionId=collection, Image=_photo(faces_dir, "probe/obama1.jpg"), QualityFilter="BEST"
        )
    with _refused("ValidationException"):  # the model's pattern for an ExternalImageId
        rekognition.index_faces(
            CollectionId=collection, Image=_photo(faces_dir, "probe/obama1.jpg"), ExternalImageId="no spaces"
        )
    with pytest.raises(rekognition.exceptions.ResourceNotFoundException):
        rekognition.index_faces(CollectionId="no-such-collection", Image=_photo(faces_dir, "probe/obama1.jpg"))


def test_faces_from_uploads_and_from_index_faces_share_the_collection(rekognition: Any, people: dict) -> None:
    faces = rekognition.list_faces(CollectionId=people["collection"])["Faces"]
    by_person: dict[str, int] = {}
    for face in faces:
        by_person[face["ExternalImageId"]] = by_person.get(face["ExternalImageId"], 0) + 1
    # biden: one portrait through IndexFaces, one through the upload bucket.
    assert by_person == {"obama": 2, "biden": 2, "kit_harington": 1, "rose_leslie": 1, "alex_lacamoire": 1}
    assert all(0 < face["BoundingBox"]["Width"] <= 1 for face in faces)


def test_list_faces_pages_through_every_face_once(rekognition: Any, people: dict) -> None:
    seen: list[str] = []
    pages = 0
    request: dict[str, Any] = {"CollectionId": people["collection"], "MaxResults": 3}
    while True:
        page = rekognition.list_faces(**request)
        assert len(page["Faces"]) <= 3
        seen += [face["FaceId"] for face in page["Faces"]]
        pages += 1
        if "NextToken" not in page:
            break
        request["NextToken"] = page["NextToken"]
    assert pages == 3 and len(seen) == len(set(seen)) == 7
    # boto3's paginator follows the same tokens.
    paginated = rekognition.get_paginator("list_faces").paginate(CollectionId=people["collection"], MaxResults=2)
    assert sorted(face["FaceId"] for page in paginated for face in page["Faces"]) == sorted(seen)
    with pytest.raises(rekognition.exceptions.InvalidPaginationTokenException):
        rekognition.list_faces(CollectionId=people["collection"], NextToken="not-a-token")
    with pytest.raises(rekognition.exceptions.ResourceNotFoundException):
        rekognition.list_faces(CollectionId="no-such-collection")


def test_search_faces_by_face_id_finds_the_same_person(rekognition: Any, people: dict) -> None:
    first, second = people["face_ids"]["obama"]
    response = rekognition.search_faces(CollectionId=people["collection"], FaceId=first, MaxFaces=5)
    assert response["SearchedFaceId"] == first
    assert [match["Face"]["FaceId"] for match in response["FaceMatches"]] == [second]
    assert response["FaceMatches"][0]["Face"]["ExternalImageId"] == "obama"
    with pytest.raises(rekognition.exceptions.InvalidParameterException):
        rekognition.search_faces(CollectionId=people["collection"], FaceId=MISSING_FACE_ID)
    with _refused("ValidationException"):  # the model's pattern for a FaceId
        rekognition.search_faces(CollectionId=people["collection"], FaceId="not-a-face-id")
    with pytest.raises(rekognition.exceptions.ResourceNotFoundException):
        rekognition.search_faces(CollectionId="no-such-collection", FaceId=first)


@pytest.mark.parametrize(
    ("probe", "identity"),
    [
        ("probe/obama1.jpg", "obama"),
        ("probe/johnsnow_test1.jpg", "kit_harington"),
        ("probe/lin-manuel-miranda.png", None),
    ],
)
def test_search_faces_by_image_names_the_person(
    rekognition: Any, people: dict, faces_dir: Path, probe: str, identity: str | None
) -> None:
    response = rekognition.search_faces_by_image(
        CollectionId=people["collection"], Image=_photo(faces_dir, probe), MaxFaces=5
    )
    found = {match["Face"]["ExternalImageId"] for match in response["FaceMatches"]}
    assert found == ({identity} if identity else set())


def test_search_faces_by_image_searches_only_a_face_that_passes_the_quality_filter(
    rekognition: Any, people: dict, faces_dir: Path
) -> None:
    photo = Image.open(faces_dir / "probe/obama1.jpg").convert("RGB")
    blurred = io.BytesIO()
    photo.filter(ImageFilter.GaussianBlur(photo.width / 80)).save(blurred, format="JPEG")
    request = {"CollectionId": people["collection"], "Image": {"Bytes": blurred.getvalue()}}
    # Without a filter (Rekognition's default, NONE) the blurred face is searched; with AUTO it is too blurred.
    unfiltered = rekognition.search_faces_by_image(**request)
    assert unfiltered["SearchedFaceConfidence"] > 80
    with pytest.raises(rekognition.exceptions.InvalidParameterException, match="passes the quality filter AUTO"):
        rekognition.search_faces_by_image(**request, QualityFilter="AUTO")
    sharp = rekognition.search_faces_by_image(
        CollectionId=people["collection"], Image=_photo(faces_dir, "probe/obama1.jpg"), QualityFilter="AUTO"
    )
    assert {match["Face"]["ExternalImageId"] for match in sharp["FaceMatches"]} == {"obama"}


def test_compare_faces_matches_the_source_among_the_targets(rekognition: Any, faces_dir: Path) -> None:
    response = rekognition.compare_faces(
        SourceImage=_photo(faces_dir, "enroll/biden/biden.jpg"), TargetImage=_photo(faces_dir, "probe/two_people.jpg")
    )
    (match,) = response["FaceMatches"]
    assert match["Similarity"] >= 80 and len(response["UnmatchedFaces"]) == 1
    # Biden stands on the right of two_people.jpg.
    assert match["Face"]["BoundingBox"]["Left"] > response["UnmatchedFaces"][0]["BoundingBox"]["Left"]
    assert response["SourceImageFace"]["Confidence"] > 80
    stranger = rekognition.compare_faces(
        SourceImage=_photo(faces_dir, "probe/lin-manuel-miranda.png"),
        TargetImage=_photo(faces_dir, "probe/two_people.jpg"),
    )
    assert stranger["FaceMatches"] == [] and len(stranger["UnmatchedFaces"]) == 2
    # 80 is the lowest threshold a comparison may use: asked for explicitly it gives the default's answer.
    at_floor = rekognition.compare_faces(
        SourceImage=_photo(faces_dir, "enroll/biden/biden.jpg"),
        TargetImage=_photo(faces_dir, "probe/two_people.jpg"),
        SimilarityThreshold=80,
    )
    assert [m["Face"]["BoundingBox"] for m in at_floor["FaceMatches"]] == [match["Face"]["BoundingBox"]]
    for below in (0, 79.9):
        with pytest.raises(rekognition.exceptions.InvalidParameterException, match="below 80"):
            rekognition.compare_faces(
                SourceImage=_photo(faces_dir, "enroll/biden/biden.jpg"),
                TargetImage=_photo(faces_dir, "probe/two_people.jpg"),
                SimilarityThreshold=below,
            )
    with pytest.raises(rekognition.exceptions.InvalidParameterException):
        rekognition.compare_faces(
            SourceImage={"Bytes": _noise_png(200)}, TargetImage=_photo(faces_dir, "probe/obama1.jpg")
        )


def test_detect_faces_reports_boxes_landmarks_pose_and_quality(
    env: LocalEnvironment, rekognition: Any, faces_dir: Path
) -> None:
    details = rekognition.detect_faces(Image=_photo(faces_dir, "probe/two_people.jpg"), Attributes=["ALL"])[
        "FaceDetails"
    ]
    assert len(details) == 2
    for detail in details:
        assert detail["Confidence"] > 80 and len(detail["Landmarks"]) == 5
        assert set(detail["Pose"]) == {"Roll", "Yaw", "Pitch"} and set(detail["Quality"]) == {"Brightness", "Sharpness"}
    # The same photo from the bucket (S3Object) gives the same faces.
    s3 = env.client("s3")
    s3.put_object(
        Bucket=env.resources["UploadBucket"],
        Key="api/two_people.jpg",
        Body=(faces_dir / "probe/two_people.jpg").read_bytes(),
    )
    from_s3 = rekognition.detect_faces(
        Image={"S3Object": {"Bucket": env.resources["UploadBucket"], "Name": "api/two_people.jpg"}}
    )
    assert [d["BoundingBox"] for d in from_s3["FaceDetails"]] == [d["BoundingBox"] for d in details]


def test_detect_faces_finds_no_face_on_animals_and_objects_and_the_one_person_where_there_is_one(
    rekognition: Any, no_face_samples_dir: Path
) -> None:
    seen = {}
    for photo in NO_FACE_SAMPLES:
        image = {"Bytes": sample_photo_bytes(photo, no_face_samples_dir)}
        seen[f"{photo.name} ({photo.shows})"] = len(rekognition.detect_faces(Image=image)["FaceDetails"])
    assert seen == {f"{photo.name} ({photo.shows})": photo.faces for photo in NO_FACE_SAMPLES}
    assert {"chelsea.png (a cat)", "quokka.jpg (a quokka)", "raccoon.dat (a raccoon)"} <= set(seen)


def test_bad_images_are_refused_with_rekognitions_errors(env: LocalEnvironment, rekognition: Any, people: dict) -> None:
    with pytest.raises(rekognition.exceptions.InvalidImageFormatException):
        rekognition.detect_faces(Image={"Bytes": b"not an image at all"})
    # 5 MB of Bytes is over 6 MB of base64: the Function URL refuses the body before the function runs, as on
    # AWS (ImageTooLargeException for Bytes over 5 MB is the handler's: tests/test_conformance.py).
    with _refused("RequestEntityTooLargeException"):
        rekognition.detect_faces(Image={"Bytes": b"\xff\xd8\xff" + bytes(5 * 1024 * 1024)})
    with pytest.raises(rekognition.exceptions.InvalidS3ObjectException):
        rekognition.detect_faces(Image={"S3Object": {"Bucket": env.resources["UploadBucket"], "Name": "no/such.jpg"}})
    with pytest.raises(rekognition.exceptions.InvalidParameterException):
        rekognition.index_faces(CollectionId=people["collection"], Image={"Bytes": _noise_png(40)})  # too small
    with pytest.raises(rekognition.exceptions.InvalidParameterException):
        rekognition.search_faces_by_image(CollectionId=people["collection"], Image={"Bytes": _noise_png(200)})


def test_delete_faces_deletes_known_faces_and_reports_the_rest(rekognition: Any, faces_dir: Path) -> None:
    collection = _scratch(rekognition)
    indexed = rekognition.index_faces(CollectionId=collection, Image=_photo(faces_dir, "enroll/obama/obama.jpg"))
    face_id = indexed["FaceRecords"][0]["Face"]["FaceId"]
    response = rekognition.delete_faces(CollectionId=collection, FaceIds=[face_id, MISSING_FACE_ID])
    assert response["DeletedFaces"] == [face_id]
    assert response["UnsuccessfulFaceDeletions"] == [{"FaceId": MISSING_FACE_ID, "Reasons": ["FACE_NOT_FOUND"]}]
    assert rekognition.list_faces(CollectionId=collection)["Faces"] == []
    assert rekognition.describe_collection(CollectionId=collection)["FaceCount"] == 0
    with _refused("ValidationException"):
        rekognition.delete_faces(CollectionId=collection, FaceIds=["bad-id"])


def test_users_group_a_persons_faces_and_are_searched_as_one(rekognition: Any, people: dict, faces_dir: Path) -> None:
    collection = people["collection"]
    obama_1, obama_2 = people["face_ids"]["obama"]
    (biden,) = people["face_ids"]["biden"]
    rekognition.create_user(CollectionId=collection, UserId="barack")
    rekognition.create_user(CollectionId=collection, UserId="joe")
    rekognition.create_user(CollectionId=collection, UserId="barack-again")
    with pytest.raises(rekognition.exceptions.ConflictException):
        rekognition.create_user(CollectionId=collection, UserId="barack")
    assert rekognition.describe_collection(CollectionId=collection)["UserCount"] == 3

    associated = rekognition.associate_faces(CollectionId=collection, UserId="barack", FaceIds=[obama_1])
    assert associated["AssociatedFaces"] == [{"FaceId": obama_1}] and associated["UserStatus"] == "ACTIVE"
    refused = rekognition.associate_faces(CollectionId=collection, UserId="barack", FaceIds=[biden, MISSING_FACE_ID])
    reasons = {f["FaceId"]: f["Reasons"] for f in refused["UnsuccessfulFaceAssociations"]}
    assert reasons == {biden: ["LOW_MATCH_CONFIDENCE"], MISSING_FACE_ID: ["FACE_NOT_FOUND"]}
    taken = rekognition.associate_faces(CollectionId=collection, UserId="joe", FaceIds=[obama_1])
    assert taken["UnsuccessfulFaceAssociations"][0]["Reasons"] == ["ASSOCIATED_TO_A_DIFFERENT_USER"]
    rekognition.associate_faces(CollectionId=collection, UserId="joe", FaceIds=[biden])
    rekognition.associate_faces(CollectionId=collection, UserId="barack-again", FaceIds=[obama_2])

    users = rekognition.list_users(CollectionId=collection)["Users"]
    assert users == [
        {"UserId": "barack", "UserStatus": "ACTIVE"},
        {"UserId": "barack-again", "UserStatus": "ACTIVE"},
        {"UserId": "joe", "UserStatus": "ACTIVE"},
    ]
    first_page = rekognition.list_users(CollectionId=collection, MaxResults=2)
    assert len(first_page["Users"]) == 2
    rest = rekognition.list_users(CollectionId=collection, MaxResults=2, NextToken=first_page["NextToken"])
    assert [u["UserId"] for u in rest["Users"]] == ["joe"] and "NextToken" not in rest
    faces_of_barack = rekognition.list_faces(CollectionId=collection, UserId="barack")["Faces"]
    assert [face["FaceId"] for face in faces_of_barack] == [obama_1]

    by_image = rekognition.search_users_by_image(CollectionId=collection, Image=_photo(faces_dir, "probe/obama1.jpg"))
    assert {m["User"]["UserId"] for m in by_image["UserMatches"]} == {"barack", "barack-again"}
    assert by_image["SearchedFace"]["FaceDetail"]["Confidence"] > 80
    group = rekognition.search_users_by_image(CollectionId=collection, Image=_photo(faces_dir, "probe/two_people.jpg"))
    assert [f["Reasons"] for f in group["UnsearchedFaces"]] == [["FACE_NOT_LARGEST"]]
    by_user = rekognition.search_users(CollectionId=collection, UserId="barack")
    assert [m["User"]["UserId"] for m in by_user["UserMatches"]] == ["barack-again"]
    by_face = rekognition.search_users(CollectionId=collection, FaceId=biden)
    assert [m["User"]["UserId"] for m in by_face["UserMatches"]] == ["joe"]

    blocked = rekognition.delete_faces(CollectionId=collection, FaceIds=[biden])
    assert blocked["UnsuccessfulFaceDeletions"] == [
        {"FaceId": biden, "UserId": "joe", "Reasons": ["ASSOCIATED_TO_AN_EXISTING_USER"]}
    ]
    released = rekognition.disassociate_faces(CollectionId=collection, UserId="joe", FaceIds=[biden, obama_1])
    assert released["DisassociatedFaces"] == [{"FaceId": biden}] and released["UserStatus"] == "CREATED"
    assert released["UnsuccessfulFaceDisassociations"][0]["Reasons"] == ["ASSOCIATED_TO_A_DIFFERENT_USER"]

    # Deleting a user erases them: their faces go, every other face of the collection stays as it was.
    for user, own_faces in (("barack", [obama_1]), ("barack-again", [obama_2]), ("joe", [])):
        before = _faces_by_id(rekognition, collection)
        assert [face_id for face_id, face in before.items() if face.get("UserId") == user] == own_faces
        rekognition.delete_user(CollectionId=collection, UserId=user)
        assert _faces_by_id(rekognition, collection) == {
            face_id: face for face_id, face in before.items() if face_id not in own_faces
        }
    assert rekognition.list_users(CollectionId=collection)["Users"] == []
    assert all("UserId" not in face for face in rekognition.list_faces(CollectionId=collection)["Faces"])
    # Both of Obama's faces were erased with their users: a photo of him finds nobody now.
    after = rekognition.search_faces_by_image(
        CollectionId=collection, Image=_photo(faces_dir, "probe/obama1.jpg"), MaxFaces=5
    )
    assert after["FaceMatches"] == []
    with pytest.raises(rekognition.exceptions.ResourceNotFoundException):
        rekognition.delete_user(CollectionId=collection, UserId="barack")
    with pytest.raises(rekognition.exceptions.ResourceNotFoundException):
        rekognition.associate_faces(CollectionId=collection, UserId="nobody", FaceIds=[biden])
    with _refused("ValidationException"):
        rekognition.create_user(CollectionId=collection, UserId="no spaces allowed")
    with pytest.raises(rekognition.exceptions.ResourceNotFoundException):
        rekognition.create_user(CollectionId="no-such-collection", UserId="someone")


def _faces_by_id(rekognition: Any, collection: str) -> dict[str, dict[str, Any]]:
    pages = rekognition.get_paginator("list_faces").paginate(CollectionId=collection)
    return {face["FaceId"]: face for page in pages for face in page["Faces"]}


# --- the same operations from the command line ------------------------------------------------------------


@pytest.fixture
def cli(env: LocalEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`candor` connected to this environment through the state file `candor up` writes."""
    from candor_local.cli import main as candor_cli

    connect_cli(env, tmp_path / "up.json", monkeypatch)
    return candor_cli.main


def test_the_cli_indexes_a_folder_and_finds_people(cli: Any, faces_dir: Path, capsys: pytest.CaptureFixture) -> None:
    collection = f"cli-{uuid.uuid4().hex[:8]}"
    assert cli(["collections", "create", collection]) == 0
    assert capsys.readouterr().out == f"created arn:aws:rekognition:us-east-1:000000000000:collection/{collection}\n"
    index = ["faces", "index", str(faces_dir / "enroll"), "--collection", collection, "--json"]
    assert cli([*index, "--consent", CONSENT]) == 0
    indexed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(indexed) == 9 and {r["FaceRecords"][0]["Face"]["ExternalImageId"] for r in indexed} == set(PORTRAITS)

    assert cli(["faces", "search", "--image", str(faces_dir / "probe/obama1.jpg"), "--collection", collection]) == 0
    assert capsys.readouterr().out.split()[0] == "obama"
    assert cli(["compare", str(faces_dir / "enroll/biden/biden.jpg"), str(faces_dir / "probe/two_people.jpg")]) == 0
    assert [line.endswith("does not match") for line in capsys.readouterr().out.splitlines()] == [False, True]
    assert cli(["users", "search", "--user", "nobody", "--collection", collection]) == 1
    assert "ResourceNotFoundException" in capsys.readouterr().err
    assert cli(["collections", "delete", collection]) == 0


def test_show_draws_boxes_landmarks_and_names(
    cli: Any, rekognition: Any, people: dict, faces_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "shown.png"
    photo = faces_dir / "probe/two_people.jpg"
    assert cli(["show", str(photo), "--collection", people["collection"], "--out", str(out)]) == 0
    with Image.open(photo) as original, Image.open(out) as shown:
        assert shown.format == "PNG" and shown.size == original.size
        changed = np.any(np.asarray(shown.convert("RGB")) != np.asarray(original.convert("RGB")), axis=2)
    # Pixels change on every face's box and nowhere far from a face.
    for face in rekognition.detect_faces(Image=_photo(faces_dir, "probe/two_people.jpg"))["FaceDetails"]:
        box = face["BoundingBox"]
        left, top = int(box["Left"] * changed.shape[1]), int(box["Top"] * changed.shape[0])
        assert changed[top : top + 3, left : left + 40].any()
    assert not changed[-20:, :].any()


def _raw(env: LocalEnvironment, target: str, body: str | bytes) -> tuple[int, dict[str, Any]]:
    """A signed request with a body no SDK would send: (status, the JSON error body)."""
    status, _, payload = invoke_function_url(
        env.api_url,
        "POST",
        body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target},
        session=env.session,
        region=env.region,
    )
    return status, json.loads(payload)


HOSTILE_BODIES = [
    ("DetectFaces", "[" * 100_000 + "]" * 100_000, "SerializationException"),
    ("DetectFaces", '{"Image": {"S3Object": {"Bucket": ["a", "b"], "Name": "k.jpg"}}}', "SerializationException"),
    ("DetectFaces", '{"Image": {"S3Object": {"Bucket": "bucket", "Name": 12}}}', "SerializationException"),
    ("DetectFaces", '{"Image": {"S3Object": {"Bucket": "bucket", "Name": "k", "Version": 3}}}',
     "SerializationException"),
    ("DetectFaces", '{"Image": {"S3Object": {"Bucket": "../../etc", "Name": "passwd"}}}', "ValidationException"),
    ("CreateCollection", '{"CollectionId": null}', "ValidationException"),
    ("CreateCollection", '{"CollectionId": 42}', "SerializationException"),
    ("CreateCollection", '{"CollectionId": true}', "SerializationException"),
    ("IndexFaces", '{"CollectionId": "c", "Image": {"Bytes": "aGk="}, "DetectionAttributes": "ALL"}',
     "SerializationException"),
]  # fmt: skip


@pytest.mark.parametrize(("operation", "body", "exception"), HOSTILE_BODIES)
def test_hostile_bodies_get_rekognitions_400s(env: LocalEnvironment, operation: str, body: str, exception: str) -> None:
    status, error = _raw(env, f"RekognitionService.{operation}", body)
    assert (status, error["__type"]) == (400, exception), error


def test_no_collection_is_created_from_a_value_that_is_not_a_string(env: LocalEnvironment, rekognition: Any) -> None:
    for value in ("null", "42", "true"):
        _raw(env, "RekognitionService.CreateCollection", f'{{"CollectionId": {value}}}')
    assert not {"None", "42", "True", "true", "null"} & set(rekognition.list_collections()["CollectionIds"])


def _http(env: LocalEnvironment, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A request written by hand, headers exactly as given (no SDK would send these)."""
    url = env.api_url.removeprefix("http://").rstrip("/")
    host, _, port = url.partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.putrequest("POST", "/", skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        if body:
            connection.send(body)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read())
    finally:
        connection.close()


def test_an_authorization_credential_aws_never_issues_is_forbidden(env: LocalEnvironment) -> None:
    credential = "A" * 8000
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={credential}/20261122/us-east-1/lambda/aws4_request, "
        "SignedHeaders=host;x-amz-target, Signature=" + "0" * 64
    )
    body = b'{"CollectionId": "anything"}'
    status, _, error = _http(
        env,
        {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "RekognitionService.SearchFaces",
            "Authorization": authorization,
            "Content-Length": str(len(body)),
        },
        body,
    )
    assert status == 403 and "access key id" in error["Message"]


def test_function_url_limits_answer_with_a_json_error(env: LocalEnvironment) -> None:
    target = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "RekognitionService.ListCollections"}
    status, _, error = _http(env, {**target, "Content-Length": "twelve"}, b"{}")
    assert status == 400 and "Content-Length" in error["Message"]

    oversized = b'{"Padding": "' + b"x" * MAX_REQUEST_BYTES + b'"}'
    status, headers, error = _http(env, {**target, "Content-Length": str(len(oversized))}, oversized)
    assert status == 413 and headers["x-amzn-errortype"] == "RequestEntityTooLargeException"
    assert str(MAX_REQUEST_BYTES) in error["Message"]
