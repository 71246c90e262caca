"""The accountability rules as a plain boto3 Rekognition client meets them, through the local runtime: the
consent header, purposes and case references, the identification floor, quotas, erasure with its proof,
and an audit log that verifies intact and names every one of those events."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError

from candor.accountability.audit import verify_all
from candor.adapters.aws import DynamoAuditStore
from candor_local.cli.client import client_for
from candor_local.emulator.local_credentials import SEARCH_ROLE
from candor_local.emulator.runtime import LocalEnvironment
from candor_local.emulator.worker_config import LocalCredential

pytestmark = pytest.mark.integration
# Local search keys, each a caller of its own (the Function URLs verify every signature).
CALLERS = {"AKIDEXAMPLEALICE": "alice-secret", "AKIDEXAMPLEBOB": "bob-secret"}
# What only the admin Function URL serves, with the admin's key.
ADMINISTRATION = {
    "CandorService.CreateCollection",
    "CandorService.PutCollectionPolicy",
    "CandorService.CancelCollectionPolicyChange",
}


@pytest.fixture(scope="module")
def env(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    with LocalEnvironment.start(
        stack_name="candor-rules",
        model_dir=model_dir,
        log_dir=tmp_path_factory.mktemp("logs"),
        credentials=[LocalCredential(key, secret, SEARCH_ROLE) for key, secret in CALLERS.items()],
    ) as environment:
        yield environment


def _rekognition(env: LocalEnvironment, access_key: str = "AKIDEXAMPLEALICE", **headers: str) -> Any:
    """boto3's own client, with the X-Candor-* headers added by an event hook as the README shows."""
    client = boto3.session.Session(
        aws_access_key_id=access_key,
        aws_secret_access_key=CALLERS[access_key],
        region_name=env.region,
    ).client("rekognition", endpoint_url=env.api_url)

    def add_headers(request: Any, **_: Any) -> None:
        for name, value in headers.items():
            request.headers[f"X-Candor-{name}"] = value

    client.meta.events.register("before-sign.rekognition", add_headers)
    return client


def _candor(env: LocalEnvironment, **statement: str) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
    client = client_for(env)
    client.state(**statement)
    return lambda target, request: (client.admin_call if target in ADMINISTRATION else client.call)(target, request)


def _image(faces_dir: Path, name: str) -> dict[str, bytes]:
    return {"Bytes": (faces_dir / name).read_bytes()}


def _code(error: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    details = error.value.response["Error"]
    return details["Code"], details["Message"]


def _audit(env: LocalEnvironment, chain: str) -> list[dict[str, Any]]:
    store = DynamoAuditStore(
        env.resources["AuditTable"], env.session.resource("dynamodb", endpoint_url=env.endpoint_url)
    )
    return [record.fields for record in store.entries(chain)]


def test_index_faces_needs_the_consent_header(env: LocalEnvironment, faces_dir: Path) -> None:
    collection = f"consent-{uuid.uuid4().hex[:8]}"
    plain = _rekognition(env)
    plain.create_collection(CollectionId=collection)

    with pytest.raises(ClientError) as refused:
        plain.index_faces(
            CollectionId=collection, Image=_image(faces_dir, "enroll/obama/obama.jpg"), ExternalImageId="obama"
        )
    code, message = _code(refused)
    assert code == "AccessDeniedException" and "X-Candor-Consent" in message
    assert plain.list_faces(CollectionId=collection)["Faces"] == []

    consenting = _rekognition(env, Consent="signed-form-2026-0042")
    indexed = consenting.index_faces(
        CollectionId=collection, Image=_image(faces_dir, "enroll/obama/obama.jpg"), ExternalImageId="obama"
    )
    assert len(indexed["FaceRecords"]) == 1
    events = [
        (entry["event"], entry.get("reason"), entry.get("consent_reference")) for entry in _audit(env, collection)
    ]
    assert events == [
        ("collection", None, None),
        ("refusal", "ConsentRequired", None),
        ("enrolment", None, "signed-form-2026-0042"),
    ]


def test_purpose_binding_floors_and_quotas(env: LocalEnvironment, faces_dir: Path) -> None:
    collection = f"missing-{uuid.uuid4().hex[:8]}"
    call = _candor(env, consent="form-1")
    created = call(
        "CandorService.CreateCollection",
        {
            "CollectionId": collection,
            "Policy": {"Purposes": ["missing-persons"], "Identification": True, "SearchesPerCallerPerMinute": 3},
        },
    )
    assert created["CollectionArn"].endswith(f"collection/{collection}")
    _rekognition(env, Consent="form-1").index_faces(
        CollectionId=collection, Image=_image(faces_dir, "enroll/obama/obama.jpg"), ExternalImageId="obama"
    )
    probe = _image(faces_dir, "probe/obama1.jpg")

    # An unmodified Rekognition client searches for `general`, which this collection does not declare.
    with pytest.raises(ClientError) as refused:
        _rekognition(env).search_faces_by_image(CollectionId=collection, Image=probe)
    assert _code(refused)[0] == "AccessDeniedException" and "missing-persons only" in _code(refused)[1]
    without_case = _rekognition(env, Purpose="missing-persons")
    with pytest.raises(ClientError) as refused:
        without_case.search_faces_by_image(CollectionId=collection, Image=probe)
    assert "X-Candor-Case" in _code(refused)[1]

    investigator = _rekognition(env, "AKIDEXAMPLEBOB", Purpose="missing-persons", Case="MP-2026-114")
    with pytest.raises(ClientError) as refused:
        investigator.search_faces_by_image(CollectionId=collection, Image=probe, FaceMatchThreshold=90)
    assert _code(refused)[0] == "InvalidParameterException" and "below 99" in _code(refused)[1]
    # Without a threshold the identification floor applies: nothing below 99 comes back.
    found = investigator.search_faces_by_image(CollectionId=collection, Image=probe)
    assert all(match["Similarity"] >= 99 for match in found["FaceMatches"])

    # Three searches a minute for this caller; the minute may turn between calls, so try again once if it did.
    for _ in range(2):
        minute = int(time.time()) // 60
        outcomes = []
        for _ in range(4):
            try:
                investigator.search_faces_by_image(CollectionId=collection, Image=probe, FaceMatchThreshold=99.5)
                outcomes.append("ok")
            except ClientError as error:
                outcomes.append(error.response["Error"]["Code"])
        if int(time.time()) // 60 == minute:
            break
    assert outcomes[-1] == "LimitExceededException" and outcomes.count("ok") <= 3

    entries = _audit(env, collection)
    refusals = [entry["reason"] for entry in entries if entry["event"] == "refusal"]
    assert {"PurposeNotDeclared", "ThresholdBelowFloor", "QuotaExceeded"} <= set(refusals)
    search = next(entry for entry in entries if entry["event"] == "search")
    assert search["purpose"] == "missing-persons" and search["case_reference"] == "MP-2026-114"
    assert search["caller"].endswith("/AKIDEXAMPLEBOB") and search["threshold"] == 99


def test_policy_is_described_and_changes_are_audited(env: LocalEnvironment) -> None:
    collection = f"policy-{uuid.uuid4().hex[:8]}"
    _rekognition(env).create_collection(CollectionId=collection)
    call = _candor(env)
    described = call("CandorService.DescribeCollectionPolicy", {"CollectionId": collection})["Policy"]
    assert described["Purposes"] == ["general"] and described["MinFaceMatchThreshold"] == 80
    assert described["Identification"] is False

    # A raised floor (tighter: at once) and a new purpose (looser: after the stack's delay, 24 h).
    answer = call(
        "CandorService.PutCollectionPolicy",
        {"CollectionId": collection, "Policy": {"Purposes": ["general", "fraud"], "MinFaceMatchThreshold": 95}},
    )
    assert answer["Policy"]["Purposes"] == ["general"] and answer["Policy"]["MinFaceMatchThreshold"] == 95
    pending = answer["PendingPolicy"]
    assert pending["Policy"]["Purposes"] == ["general", "fraud"] and pending["Loosens"] == ["adds the purpose(s) fraud"]
    assert 23.9 * 3600 < pending["EffectiveAt"] - time.time() <= 24 * 3600
    assert call("CandorService.DescribeCollectionPolicy", {"CollectionId": collection})["PendingPolicy"] == pending
    with pytest.raises(ClientError) as refused:
        _rekognition(env).search_faces_by_image(
            CollectionId=collection, Image={"Bytes": b"not read"}, FaceMatchThreshold=90
        )
    # Refused before the image is even decoded: the floor is checked first.
    assert _code(refused)[0] == "InvalidParameterException" and "below 95" in _code(refused)[1]
    with pytest.raises(ClientError) as refused:  # `fraud` is not in force yet
        _rekognition(env, Purpose="fraud", Case="F-1").search_faces_by_image(
            CollectionId=collection, Image={"Bytes": b"not read"}
        )
    assert _code(refused)[0] == "AccessDeniedException"

    cancelled = call("CandorService.CancelCollectionPolicyChange", {"CollectionId": collection})
    assert "PendingPolicy" not in cancelled and cancelled["Policy"]["MinFaceMatchThreshold"] == 95
    changes = [entry for entry in _audit(env, collection) if entry["event"] == "collection"]
    assert [(entry["operation"], entry["policy"]["purposes"]) for entry in changes] == [
        ("CreateCollection", ["general"]),
        ("PutCollectionPolicy", ["general"]),
        ("CancelCollectionPolicyChange", ["general"]),
    ]
    assert changes[1]["loosens"] == ["adds the purpose(s) fraud"]
    assert changes[1]["policy"]["pending"]["policy"]["purposes"] == ["general", "fraud"]


def test_erasure_leaves_nothing_searchable_and_proves_it(env: LocalEnvironment, faces_dir: Path) -> None:
    collection = f"erase-{uuid.uuid4().hex[:8]}"
    client = client_for(env)
    client.rekognition.create_collection(CollectionId=collection)
    keys = [
        client.upload_enrolment(collection, "obama", faces_dir / "enroll/obama/obama.jpg", "form-7"),
        client.upload_enrolment(collection, "obama", faces_dir / "enroll/obama/obama2.jpg", "form-7"),
        client.upload_enrolment(collection, "biden", faces_dir / "enroll/biden/biden.jpg", "form-8"),
    ]
    assert {record["status"] for record in client.wait_for_photos(keys, timeout_s=180).values()} == {"COMPLETE"}
    probe = _image(faces_dir, "probe/obama1.jpg")
    plain = _rekognition(env)
    assert plain.search_faces_by_image(CollectionId=collection, Image=probe)["FaceMatches"]

    erased = client.call("CandorService.ErasePerson", {"CollectionId": collection, "PersonId": "obama"})

    assert (erased["FacesRemoved"], erased["PhotosRemoved"]) == (2, 2)
    assert erased["Proof"] == {"Searched": True, "FacesSearched": 1, "RemainingMatches": [], "Erased": True}
    assert plain.search_faces_by_image(CollectionId=collection, Image=probe)["FaceMatches"] == []
    remaining = {face.get("ExternalImageId") for face in plain.list_faces(CollectionId=collection)["Faces"]}
    assert remaining == {"biden"}
    listed = client.s3.list_objects_v2(Bucket=env.resources["UploadBucket"], Prefix=f"enroll/{collection}/")
    assert [item["Key"] for item in listed.get("Contents", [])] == [keys[2]]
    assert all(client.photo_status(key) is None for key in keys[:2])

    erasure = [entry for entry in _audit(env, collection) if entry["event"] == "erasure"]
    assert len(erasure) == 1 and erasure[0]["faces_removed"] == 2 and erasure[0]["proof_remaining_matches"] == 0
    assert "obama" not in json.dumps(erasure[0])


def test_delete_user_erases_the_user(env: LocalEnvironment, faces_dir: Path) -> None:
    collection = f"users-{uuid.uuid4().hex[:8]}"
    rekognition = _rekognition(env, Consent="form-9")
    rekognition.create_collection(CollectionId=collection)
    face_ids = [
        rekognition.index_faces(CollectionId=collection, Image=_image(faces_dir, f"enroll/{photo}"))["FaceRecords"][0][
            "Face"
        ]["FaceId"]
        for photo in ("obama/obama.jpg", "biden/biden.jpg")
    ]
    rekognition.create_user(CollectionId=collection, UserId="user-obama")
    rekognition.associate_faces(CollectionId=collection, UserId="user-obama", FaceIds=face_ids[:1])

    rekognition.delete_user(CollectionId=collection, UserId="user-obama")

    assert [face["FaceId"] for face in rekognition.list_faces(CollectionId=collection)["Faces"]] == face_ids[1:]
    assert rekognition.list_users(CollectionId=collection)["Users"] == []
    probe = _image(faces_dir, "probe/obama1.jpg")
    assert rekognition.search_faces_by_image(CollectionId=collection, Image=probe)["FaceMatches"] == []


def test_the_audit_log_verifies_intact_and_detects_an_altered_entry(env: LocalEnvironment, faces_dir: Path) -> None:
    collection = f"audit-{uuid.uuid4().hex[:8]}"
    rekognition = _rekognition(env, Consent="form-3")
    rekognition.create_collection(CollectionId=collection)
    rekognition.index_faces(CollectionId=collection, Image=_image(faces_dir, "enroll/biden/biden.jpg"))
    for _ in range(2):
        rekognition.search_faces_by_image(CollectionId=collection, Image=_image(faces_dir, "enroll/biden/biden2.jpg"))
    store = DynamoAuditStore(
        env.resources["AuditTable"], env.session.resource("dynamodb", endpoint_url=env.endpoint_url)
    )
    (intact,) = verify_all(store, [collection])
    assert intact.intact and intact.entries == 4

    # Someone with write access to the table rewrites a search as if it had matched nobody.
    table = env.session.resource("dynamodb", endpoint_url=env.endpoint_url).Table(env.resources["AuditTable"])
    item = table.get_item(Key={"chain": collection, "seq": 3})["Item"]
    body = json.loads(item["body"])
    body["faces_matched"], body["matches"] = 0, [[]]
    table.put_item(Item={**item, "body": json.dumps(body, sort_keys=True, separators=(",", ":"))})

    (tampered,) = verify_all(store, [collection])
    assert not tampered.intact and tampered.problems == ["entry 3 altered: its content no longer matches its hash"]


def test_a_search_whose_false_match_risk_is_too_high_is_refused_and_audited(
    env: LocalEnvironment, faces_dir: Path
) -> None:
    collection = f"risk-{uuid.uuid4().hex[:8]}"
    call = _candor(env, consent="form-2")
    # At most a 1-in-10-million chance that a searched face matches a stranger among the collection's faces.
    call("CandorService.CreateCollection", {"CollectionId": collection, "Policy": {"MaxFalseMatchRisk": 1e-7}})
    assert call("CandorService.DescribeCollectionPolicy", {"CollectionId": collection})["Policy"][
        "MaxFalseMatchRisk"
    ] == pytest.approx(1e-7)
    enrolling = _rekognition(env, Consent="form-2")
    for name in ("enroll/obama/obama.jpg", "enroll/biden/biden.jpg"):
        enrolling.index_faces(
            CollectionId=collection, Image=_image(faces_dir, name), ExternalImageId=name.split("/")[1]
        )
    probe = _image(faces_dir, "probe/obama1.jpg")
    plain = _rekognition(env)

    # At 80 (1 in 10,000 per face) two faces give a risk of 2 in 10,000: refused, naming what would pass.
    with pytest.raises(ClientError) as refused:
        plain.search_faces_by_image(CollectionId=collection, Image=probe)
    code, message = _code(refused)
    assert code == "InvalidParameterException" and "MaxFalseMatchRisk" in message
    lowest = float(message.rsplit(" ", 1)[1])
    assert 99.8 < lowest < 100

    found = _candor(env)(
        "RekognitionService.SearchFacesByImage",
        {"CollectionId": collection, "Image": {"Bytes": base64.b64encode(probe["Bytes"]).decode()},
         "FaceMatchThreshold": lowest},
    )  # fmt: skip
    assert found["FalseMatchRisk"] <= 1e-7
    assert [match["Face"]["ExternalImageId"] for match in found["FaceMatches"]] == ["obama"]

    entries = _audit(env, collection)
    refusal = next(entry for entry in entries if entry["event"] == "refusal")
    assert refusal["reason"] == "FalseMatchRiskTooHigh" and refusal["collection_faces"] == 2
    search = next(entry for entry in entries if entry["event"] == "search")
    assert search["false_match_risk"] == pytest.approx(found["FalseMatchRisk"])
    assert search["collection_faces"] == 2 and search["threshold"] == lowest


def test_a_collection_of_the_previous_model_is_refused_until_reindexed_keeping_its_face_ids(
    env: LocalEnvironment, faces_dir: Path, model_dir: Path
) -> None:
    collection = f"reindex-{uuid.uuid4().hex[:8]}"
    client = client_for(env)
    client.rekognition.create_collection(CollectionId=collection)
    keys = [
        client.upload_enrolment(collection, "obama", faces_dir / "enroll/obama/obama.jpg", "form-3"),
        client.upload_enrolment(collection, "biden", faces_dir / "enroll/biden/biden.jpg", "form-3"),
    ]
    assert {record["status"] for record in client.wait_for_photos(keys, timeout_s=180).values()} == {"COMPLETE"}
    enrolling = _rekognition(env, Consent="form-3")
    # From image bytes: Candor keeps no photo to re-embed this face from.
    unstored = enrolling.index_faces(
        CollectionId=collection, Image=_image(faces_dir, "enroll/obama/obama2.jpg"), ExternalImageId="obama"
    )["FaceRecords"][0]["Face"]["FaceId"]
    before = {
        face["FaceId"]: face.get("ExternalImageId") for face in enrolling.list_faces(CollectionId=collection)["Faces"]
    }
    _as_if_made_by_facenet(env, collection, model_dir)

    plain = _rekognition(env)
    probe = _image(faces_dir, "probe/obama1.jpg")
    with pytest.raises(ClientError) as refused:
        plain.search_faces_by_image(CollectionId=collection, Image=probe)
    assert _code(refused)[0] == "InvalidParameterException" and "candor collections reindex" in _code(refused)[1]
    described = plain.describe_collection(CollectionId=collection)
    assert described["FaceModelVersion"].startswith("facenet") and described["FaceCount"] == 3

    first = client.call("CandorService.ReindexCollection", {"CollectionId": collection})
    assert first["Reindexed"] == 2 and not first["Complete"] and first["Remaining"] == 1
    assert [face["FaceId"] for face in first["UnreindexableFaces"]] == [unstored]
    with pytest.raises(ClientError):
        plain.search_faces_by_image(CollectionId=collection, Image=probe)  # never half one model, half another

    done = client.call("CandorService.ReindexCollection", {"CollectionId": collection, "DropUnreindexable": True})
    assert done["Complete"] and done["DroppedFaceIds"] == [unstored]
    assert done["FaceModelVersion"] == plain.describe_collection(CollectionId=collection)["FaceModelVersion"]
    after = {face["FaceId"]: face.get("ExternalImageId") for face in plain.list_faces(CollectionId=collection)["Faces"]}
    assert after == {face_id: person for face_id, person in before.items() if face_id != unstored}
    matches = plain.search_faces_by_image(CollectionId=collection, Image=probe)["FaceMatches"]
    assert [match["Face"]["ExternalImageId"] for match in matches] == ["obama"]
    assert matches[0]["Face"]["FaceId"] in before
    reindexed = [entry for entry in _audit(env, collection) if entry.get("operation") == "ReindexCollection"]
    assert [entry["switched"] for entry in reindexed] == [False, True]


def _as_if_made_by_facenet(env: LocalEnvironment, collection: str, model_dir: Path) -> None:
    """The collection as a stack before SFace left it: FaceNet vectors and FaceModelVersion."""
    from dataclasses import replace

    from candor.adapters.aws import DynamoFaceRepository
    from candor.core.settings import FACENET_VERSION

    dynamodb = env.session.resource("dynamodb", endpoint_url=env.endpoint_url)
    faces = DynamoFaceRepository(env.resources["FacesTable"], dynamodb)
    rng = np.random.default_rng(5)
    stale = [
        replace(face, model_version=FACENET_VERSION, embedding=_unit(rng.standard_normal(512)))
        for face in faces.list_collection(collection)
    ]
    faces.save_all(stale)
    dynamodb.Table(env.resources["CollectionsTable"]).update_item(
        Key={"collection_id": collection},
        UpdateExpression="SET face_model_version = :v",
        ExpressionAttributeValues={":v": FACENET_VERSION},
    )


def _unit(vector: Any) -> Any:
    return (vector / np.linalg.norm(vector)).astype(np.float32)
