"""The accountability rules as plain functions on in-memory adapters, with the real models and real photos:
consent to enrol, purpose binding, threshold floors, quotas, retention, erasure, and the audit entries each
leaves behind."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from candor.accountability.audit import AuditLog, verify_all
from candor.accountability.policy import Caller, CollectionPolicy, parse_policy
from candor.accountability.rules import Accountability, Returned, subject_hash
from candor.adapters.memory import (
    MemoryAuditStore,
    MemoryCollectionRepository,
    MemoryFaceRepository,
    MemoryImageStore,
    MemoryIndexSnapshotStore,
    MemoryPhotoRepository,
    MemoryPublisher,
    MemoryQuotaCounter,
    MemoryUserRepository,
)
from candor.collection_service import CollectionStore
from candor.core.errors import (
    ConsentRequiredError,
    FalseMatchRiskTooHighError,
    InvalidParameterError,
    PurposeNotDeclaredError,
    QuotaExceededError,
    ThresholdBelowFloorError,
)
from candor.core.faces import PhotoStatus
from candor.core.settings import DEFAULT_RETENTION_DAYS, EMBEDDER_VERSION, RETENTION_TAG
from candor.erasure import erase_person
from candor.index.sync import IndexSync
from candor.pipeline import PhotoRef, detect_photo, embed_photo
from candor.ports import Collection, User
from candor.retention import DAY_S
from candor.search import CollectionIndexes, search_image
from candor_local.emulator.template import load_yaml

BUCKET = "uploads"
NOW = datetime(2026, 11, 22, 12, 0, 30, tzinfo=UTC)
ALICE = Caller("arn:aws:iam::000000000000:user/alice")


class Stack:
    """The pipeline and the rules on memory adapters, as the functions compose them on AWS."""

    def __init__(self, models: Any) -> None:
        self.detector, self.embedder = models
        self.images = MemoryImageStore()
        self.photos = MemoryPhotoRepository()
        self.faces = MemoryFaceRepository()
        self.collections = MemoryCollectionRepository()
        self.users = MemoryUserRepository()
        self.snapshots = MemoryIndexSnapshotStore()
        self.embed_queue = MemoryPublisher()
        self.audit_store = MemoryAuditStore()
        self.quotas = MemoryQuotaCounter()
        self.accountability = Accountability(AuditLog(self.audit_store, clock=lambda: NOW), self.quotas, lambda: NOW)
        # Snapshots from the first face on, so erasure is seen to remove them.
        self.indexes = CollectionIndexes(
            self.faces,
            self.collections,
            IndexSync(self.snapshots, snapshot_min_faces=1, snapshot_min_changes=1, background=False),
        )
        self.store = CollectionStore(self.collections, self.faces, self.users, self.indexes)

    def create(self, collection_id: str, policy: CollectionPolicy | None = None) -> None:
        self.collections.create(
            Collection(collection_id, NOW.isoformat(), EMBEDDER_VERSION, policy=policy or CollectionPolicy())
        )

    def upload(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> Any:
        self.images.put(BUCKET, key, data, metadata)
        photo = detect_photo(
            PhotoRef(BUCKET, key),
            images=self.images,
            photos=self.photos,
            collections=self.collections,
            detector=self.detector,
            embed_queue=self.embed_queue,
            min_confidence=0.8,
            accountability=self.accountability,
        )
        while self.embed_queue.messages:
            embed_photo(
                self.embed_queue.messages.pop(0),
                images=self.images,
                photos=self.photos,
                faces=self.faces,
                collections=self.collections,
                embedder=self.embedder,
                accountability=self.accountability,
            )
        return self.photos.get(photo.photo_id)

    def search(self, data: bytes, collection_id: str, threshold: float = 80, largest_only: bool = True) -> list[Any]:
        result = search_image(
            data,
            collection_id,
            detector=self.detector,
            embedder=self.embedder,
            indexes=self.indexes,
            face_match_threshold=threshold,
            max_matches=100,
            min_confidence=0.8,
            largest_face_only=largest_only,
        )
        return [face.matches for face in result.faces]

    def entries(self, chain: str) -> list[dict[str, Any]]:
        return [record.fields for record in self.audit_store.entries(chain)]


@pytest.fixture
def stack(models: Any) -> Stack:
    stack = Stack(models)
    stack.create("people")
    return stack


def _enrol(stack: Stack, faces_dir: Path, person: str, photo: str, consent: str = "form-17") -> Any:
    return stack.upload(
        f"enroll/people/{person}/{Path(photo).name}",
        (faces_dir / "enroll" / photo).read_bytes(),
        {"candor-consent": consent},
    )


# --- consent ------------------------------------------------------------------------------------------------


def test_upload_without_consent_is_detected_reported_and_not_indexed(stack: Stack, faces_dir: Path) -> None:
    photo = stack.upload("enroll/people/obama/obama.jpg", (faces_dir / "enroll/obama/obama.jpg").read_bytes())

    assert photo.status is PhotoStatus.FAILED
    assert photo.error_code == "ConsentRequired"
    assert "candor-consent" in photo.error_message
    assert len(photo.faces) == 1  # detected and reported...
    assert stack.faces.faces == {}  # ...but nobody embedded, stored or indexed
    assert stack.embed_queue.messages == []
    (refusal,) = stack.entries("people")
    assert refusal["event"] == "refusal" and refusal["reason"] == "ConsentRequired"


def test_enrolment_records_its_consent_and_only_the_chosen_face(stack: Stack, faces_dir: Path) -> None:
    group = (faces_dir / "probe/two_people.jpg").read_bytes()
    photo = stack.upload("enroll/people/obama/group.jpg", group, {"candor-consent": "form-17"})

    assert photo.status is PhotoStatus.COMPLETE and len(photo.faces) == 2
    enrolled = [face for face in stack.faces.faces.values() if face.collection_id == "people"]
    assert [face.consent_reference for face in enrolled] == ["form-17"]
    bystander = next(face for face in stack.faces.faces.values() if face.collection_id is None)
    assert bystander.consent_reference is None and bystander.expires_at is not None
    (enrolment,) = stack.entries("people")
    assert enrolment["event"] == "enrolment"
    assert enrolment["consent_reference"] == "form-17"
    assert enrolment["face_ids"] == [enrolled[0].face_id]
    assert enrolment["subject"] == subject_hash("people", "obama") and "obama" not in str(enrolment)


def test_index_faces_without_consent_is_refused_and_audited(stack: Stack) -> None:
    with pytest.raises(ConsentRequiredError, match="X-Candor-Consent"):
        stack.accountability.require_consent("people", ALICE, "IndexFaces")

    assert stack.accountability.require_consent("people", Caller("bob", consent_reference="c-1"), "IndexFaces") == "c-1"
    (refusal,) = stack.entries("people")
    assert (refusal["operation"], refusal["reason"], refusal["caller"]) == (
        "IndexFaces",
        "ConsentRequired",
        ALICE.identity,
    )


# --- purposes, floors, quotas -------------------------------------------------------------------------------


def test_plain_collection_is_searchable_for_general_purpose_only(stack: Stack) -> None:
    policy = CollectionPolicy()
    assert stack.accountability.authorize_search("people", policy, ALICE, "SearchFacesByImage", None).threshold == 80.0

    marketing = Caller(ALICE.identity, purpose="marketing", case_reference="q4")
    with pytest.raises(PurposeNotDeclaredError, match="general only, not for 'marketing'"):
        stack.accountability.authorize_search("people", policy, marketing, "SearchFacesByImage", 90, b"probe")

    refusal = stack.entries("people")[-1]
    assert refusal["event"] == "refusal" and refusal["reason"] == "PurposeNotDeclared"
    assert refusal["purpose"] == "marketing" and refusal["case_reference"] == "q4"
    assert len(refusal["probe_sha256"]) == 64


def test_a_declared_purpose_other_than_general_needs_a_case_reference(stack: Stack) -> None:
    policy = parse_policy({"Purposes": ["missing-persons"]})
    without_case = Caller(ALICE.identity, purpose="missing-persons")
    with pytest.raises(PurposeNotDeclaredError, match="X-Candor-Case"):
        stack.accountability.authorize_search("people", policy, without_case, "SearchFaces", 85)
    with pytest.raises(PurposeNotDeclaredError):  # general is not declared by this collection
        stack.accountability.authorize_search("people", policy, ALICE, "SearchFaces", 85)

    with_case = Caller(ALICE.identity, purpose="missing-persons", case_reference="MP-2026-114")
    assert stack.accountability.authorize_search("people", policy, with_case, "SearchFaces", 85).threshold == 85


@pytest.mark.parametrize(
    ("policy", "floor"),
    [({}, 80.0), ({"Identification": True}, 99.0), ({"MinFaceMatchThreshold": 90}, 90.0)],
)
def test_thresholds_below_the_floor_are_refused(stack: Stack, policy: dict[str, Any], floor: float) -> None:
    parsed = parse_policy(policy)
    assert parsed.floor == floor
    # No threshold given: the search runs at the floor, never below it.
    assert stack.accountability.authorize_search("people", parsed, ALICE, "SearchFaces", None).threshold == floor
    assert stack.accountability.authorize_search("people", parsed, ALICE, "SearchFaces", floor).threshold == floor
    with pytest.raises(ThresholdBelowFloorError, match=f"below {floor:g}"):
        stack.accountability.authorize_search("people", parsed, ALICE, "SearchFaces", floor - 0.5)
    assert stack.entries("people")[-1]["reason"] == "ThresholdBelowFloor"


def test_a_policy_cannot_lower_the_floor() -> None:
    with pytest.raises(InvalidParameterError, match="MinFaceMatchThreshold must be a number from 80"):
        parse_policy({"MinFaceMatchThreshold": 50})
    assert parse_policy({"Identification": True, "MinFaceMatchThreshold": 80}).floor == 99.0


def test_quotas_per_caller_and_per_collection(stack: Stack) -> None:
    policy = parse_policy({"SearchesPerCallerPerMinute": 2, "SearchesPerMinute": 3})
    bob = Caller("arn:aws:iam::000000000000:user/bob")
    for _ in range(2):
        stack.accountability.authorize_search("people", policy, ALICE, "SearchFaces", None)
    with pytest.raises(QuotaExceededError, match="would pass your 2 identifications of 'people' a minute"):
        stack.accountability.authorize_search("people", policy, ALICE, "SearchFaces", None)
    stack.accountability.authorize_search("people", policy, bob, "SearchFaces", None)  # the third of the minute
    with pytest.raises(QuotaExceededError, match="would pass the 3 identifications a minute 'people' allows"):
        stack.accountability.authorize_search("people", policy, bob, "SearchFaces", None)

    refusals = [entry for entry in stack.entries("people") if entry["event"] == "refusal"]
    assert [(entry["caller"], entry["reason"]) for entry in refusals] == [
        (ALICE.identity, "QuotaExceeded"),
        (bob.identity, "QuotaExceeded"),
    ]


def test_quotas_count_people_identified_not_requests(stack: Stack) -> None:
    """A crowd photo costs one unit per face it names; what a search reserved and did not name comes back;
    a search that could pass the quota is refused before it runs, audited, with nothing answered."""
    policy = parse_policy({"SearchesPerCallerPerMinute": 5})
    crowd = stack.accountability.authorize_search(
        "people", policy, ALICE, "SearchAllFacesByImage", None, identifications=0
    )
    stack.accountability.reserve(crowd, ALICE, "SearchAllFacesByImage", 4, b"crowd")
    named = [[Returned("f1", 99.0)], [Returned("f2", 99.1)], [Returned("f3", 98.0)], []]  # 3 of 4 faces named
    stack.accountability.record_search(
        "people", ALICE, "SearchAllFacesByImage", threshold=80, matches=named, authorization=crowd
    )
    # 3 used of 5: a photo of 3 faces would pass the quota, so it is refused before it is searched.
    again = stack.accountability.authorize_search(
        "people", policy, ALICE, "SearchAllFacesByImage", None, identifications=0
    )
    with pytest.raises(QuotaExceededError, match="could name 3 people, which would pass your 5"):
        stack.accountability.reserve(again, ALICE, "SearchAllFacesByImage", 3, b"other crowd")
    one = stack.accountability.authorize_search("people", policy, ALICE, "SearchFaces", None)
    stack.accountability.record_search("people", ALICE, "SearchFaces", threshold=80, matches=[[]], authorization=one)
    for _ in range(2):  # the unmatched search gave its unit back: two more single-face searches fit
        stack.accountability.authorize_search("people", policy, ALICE, "SearchFaces", None)
    with pytest.raises(QuotaExceededError):
        stack.accountability.authorize_search("people", policy, ALICE, "SearchFaces", None)
    refusals = [entry for entry in stack.entries("people") if entry["event"] == "refusal"]
    assert [entry["operation"] for entry in refusals] == ["SearchAllFacesByImage", "SearchFaces"]


def test_a_search_is_audited_with_what_it_returned_and_nothing_biometric(stack: Stack, faces_dir: Path) -> None:
    _enrol(stack, faces_dir, "obama", "obama/obama.jpg")
    probe = (faces_dir / "probe/obama1.jpg").read_bytes()
    caller = Caller(ALICE.identity, purpose="general", case_reference="ticket-9")
    threshold = stack.accountability.authorize_search(
        "people", CollectionPolicy(), caller, "SearchFacesByImage", None
    ).threshold
    found = stack.search(probe, "people", threshold)
    returned = [[Returned(match.face_id, match.similarity) for match in face] for face in found]
    stack.accountability.record_search(
        "people", caller, "SearchFacesByImage", threshold=threshold, matches=returned, probe=probe
    )

    search = stack.entries("people")[-1]
    assert search["event"] == "search" and search["outcome"] == "allowed"
    assert (search["caller"], search["purpose"], search["case_reference"]) == (ALICE.identity, "general", "ticket-9")
    assert search["faces_matched"] == 1 and search["matches"][0][0]["id"] == found[0][0].face_id
    assert search["matches"][0][0]["similarity"] >= 80
    assert "embedding" not in str(search) and len(search["probe_sha256"]) == 64
    assert all(verification.intact for verification in verify_all(stack.audit_store))


# --- retention ----------------------------------------------------------------------------------------------


def test_a_photo_that_enrols_nobody_expires_with_its_faces(stack: Stack, faces_dir: Path) -> None:
    before = int(time.time())
    photo = stack.upload("photos/two people.jpg", (faces_dir / "probe/two_people.jpg").read_bytes())

    assert photo.status is PhotoStatus.COMPLETE
    assert before + 30 * DAY_S <= photo.expires_at <= int(time.time()) + 30 * DAY_S
    assert stack.images.tags[(BUCKET, "photos/two people.jpg")] == dict([RETENTION_TAG])
    assert len(stack.faces.faces) == 2
    assert all(face.expires_at == photo.expires_at for face in stack.faces.faces.values())


def test_an_enrolment_photo_and_its_face_do_not_expire(stack: Stack, faces_dir: Path) -> None:
    photo = _enrol(stack, faces_dir, "obama", "obama/obama.jpg")

    assert photo.expires_at is None
    assert (BUCKET, photo.key) not in stack.images.tags
    (face,) = stack.faces.faces.values()
    assert face.collection_id == "people" and face.expires_at is None


# --- erasure ------------------------------------------------------------------------------------------------


def test_erasure_removes_every_trace_and_proves_it(stack: Stack, faces_dir: Path) -> None:
    first = _enrol(stack, faces_dir, "obama", "obama/obama.jpg")
    second = _enrol(stack, faces_dir, "obama", "obama/obama2.jpg")
    _enrol(stack, faces_dir, "biden", "biden/biden.jpg")
    probe = (faces_dir / "probe/obama1.jpg").read_bytes()
    assert stack.search(probe, "people")[0]  # found before
    assert stack.snapshots.snapshots  # the index snapshot holds the vectors

    result = erase_person(
        stack.store,
        stack.photos,
        stack.images,
        "people",
        "obama",
        search=lambda image: stack.search(image, "people"),
    )

    assert (result.faces_removed, result.photos_removed, result.user_removed) == (2, 2, False)
    assert result.proof.searched and result.proof.erased and result.proof.remaining_matches == []
    assert stack.photos.get(first.photo_id) is None and stack.photos.get(second.photo_id) is None
    assert (BUCKET, first.key) not in stack.images.objects and (BUCKET, second.key) not in stack.images.objects
    assert {face.external_image_id for face in stack.faces.faces.values()} == {"biden"}
    # The old snapshot is gone; the one the proof search published holds the one face left (biden's).
    assert json.loads(stack.snapshots.snapshots["people"]["index.json"])["count"] == 1
    assert stack.search(probe, "people") == [[]]  # nobody found with a photo the erasure never saw
    biden = stack.search((faces_dir / "enroll/biden/biden2.jpg").read_bytes(), "people")
    assert biden[0] and biden[0][0].external_image_id == "biden"


def test_erasure_proof_names_a_face_left_under_another_name(stack: Stack, faces_dir: Path) -> None:
    _enrol(stack, faces_dir, "obama", "obama/obama.jpg")
    left = _enrol(stack, faces_dir, "barack", "obama/obama2.jpg")

    result = erase_person(
        stack.store, stack.photos, stack.images, "people", "obama", search=lambda image: stack.search(image, "people")
    )

    assert result.proof.searched and not result.proof.erased
    assert result.proof.remaining_matches == left.face_ids


def test_erasing_a_user_removes_their_faces_and_user(stack: Stack, faces_dir: Path) -> None:
    photo = _enrol(stack, faces_dir, "obama", "obama/obama.jpg")
    stack.users.create(User("people", "user-1", NOW.isoformat()))
    stack.faces.set_user(photo.face_ids, "user-1")

    result = erase_person(
        stack.store, stack.photos, stack.images, "people", "user-1", search=lambda image: stack.search(image, "people")
    )

    assert result.user_removed and result.faces_removed == 1 and result.proof.erased
    assert stack.users.get("people", "user-1") is None and stack.faces.faces == {}


# --- the template ---------------------------------------------------------------------------------------------


TEMPLATE = load_yaml(Path(__file__).resolve().parents[1] / "template.yaml")


def test_what_enrols_nobody_expires_by_ttl_and_lifecycle_after_retention_days() -> None:
    resources, parameters = TEMPLATE["Resources"], TEMPLATE["Parameters"]
    assert parameters["RetentionDays"]["Default"] == DEFAULT_RETENTION_DAYS == 30
    for table in ("PhotosTable", "FacesTable", "QuotasTable"):
        ttl = resources[table]["Properties"]["TimeToLiveSpecification"]
        assert ttl == {"AttributeName": "expires_at", "Enabled": True}, table
    rules = resources["UploadBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    (expiry_rule,) = [rule for rule in rules if "ExpirationInDays" in rule]
    assert expiry_rule["Status"] == "Enabled"
    assert expiry_rule["ExpirationInDays"] == {"Ref": "RetentionDays"}
    assert expiry_rule["TagFilters"] == [{"Key": RETENTION_TAG[0], "Value": RETENTION_TAG[1]}]
    assert TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]["RETENTION_DAYS"] == {"Ref": "RetentionDays"}


def test_the_audit_table_is_kept_and_no_function_may_change_or_delete_an_entry() -> None:
    resources = TEMPLATE["Resources"]
    audit = resources["AuditTable"]
    assert audit["DeletionPolicy"] == "Retain" and audit["UpdateReplacePolicy"] == "Retain"
    assert audit["Properties"]["KeySchema"] == [
        {"AttributeName": "chain", "KeyType": "HASH"},
        {"AttributeName": "seq", "KeyType": "RANGE"},
    ]
    for name, resource in resources.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        actions = {
            action
            for policy in resource["Properties"]["Policies"]
            for statement in policy["Statement"]
            if statement["Resource"] == {"Fn::GetAtt": ["AuditTable", "Arn"]}
            or statement["Resource"] == {"Fn::GetAtt": "AuditTable.Arn"}
            for action in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
        }
        # DigestFunction only reads the heads it signs; every other function appends and reads the head.
        assert actions == ({"dynamodb:Query"} if name == "DigestFunction" else {"dynamodb:PutItem", "dynamodb:Query"})


def test_erasing_a_user_leaves_a_face_enrolled_under_the_same_name(stack: Stack, faces_dir: Path) -> None:
    own = _enrol(stack, faces_dir, "obama", "obama/obama.jpg")
    other = _enrol(stack, faces_dir, "pat", "biden/biden.jpg")  # an ExternalImageId equal to the user id
    stack.users.create(User("people", "pat", NOW.isoformat()))
    stack.faces.set_user(own.face_ids, "pat")

    result = erase_person(
        stack.store,
        stack.photos,
        stack.images,
        "people",
        "pat",
        search=lambda image: stack.search(image, "people"),
        user_only=True,
    )

    assert result.faces_removed == 1
    assert set(stack.faces.faces) == set(other.face_ids)


def test_the_risk_limit_refuses_thresholds_too_low_for_the_collection_size_and_names_the_lowest(stack: Stack) -> None:
    identification = CollectionPolicy(purposes=("general",), identification=True)
    # At 99 (one in a million per face) a thousand faces give a risk of 0.1%: within the 1% default.
    allowed = stack.accountability.authorize_search("people", identification, ALICE, "SearchFaces", 99, faces=1000)
    assert allowed.false_match_rate == pytest.approx(1e-6) and allowed.false_match_risk == pytest.approx(1e-3, rel=1e-3)
    # A hundred thousand faces: 9.5%. The floor grows with the collection.
    with pytest.raises(FalseMatchRiskTooHighError, match=r"lowest threshold that passes is 99\.9[0-9]") as refused:
        stack.accountability.authorize_search("people", identification, ALICE, "SearchFaces", 99, faces=100_000)
    lowest = float(refused.value.message.rsplit(" ", 1)[1])
    passing = stack.accountability.authorize_search(
        "people", identification, ALICE, "SearchFaces", lowest, faces=100_000
    )
    assert passing.false_match_risk <= 0.01
    # A collection without identification has no limit unless it sets one.
    plain = stack.accountability.authorize_search("people", CollectionPolicy(), ALICE, "SearchFaces", 80, faces=100_000)
    assert plain.false_match_risk == pytest.approx(1 - (1 - 1e-4) ** 100_000)
    refusal = [entry for entry in stack.entries("people") if entry["event"] == "refusal"][-1]
    assert refusal["reason"] == "FalseMatchRiskTooHigh" and refusal["collection_faces"] == 100_000
