"""The face API's rules on in-memory adapters: quality and pose measures, quality bars, pagination of faces and
users, and what users may hold. No network; real photos where a measure needs pixels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from candor import collection_service as service
from candor.adapters.memory import MemoryCollectionRepository, MemoryFaceRepository, MemoryUserRepository
from candor.core.errors import ConflictError, InvalidPaginationTokenError, InvalidParameterError, ResourceNotFoundError
from candor.core.faces import BoundingBox, DetectedFace, FaceRecord
from candor.core.settings import EMBEDDER_VERSION, EMBEDDING_SIZE
from candor.ports import Collection
from candor.search import CollectionIndexes
from candor.vision.quality import QualityFilter, assess_face, face_pose, face_quality, quality_reasons


def _face(landmarks: list[tuple[float, float]], side: float = 200, confidence: float = 0.95) -> DetectedFace:
    return DetectedFace(BoundingBox(100, 100, side, side), tuple(landmarks), confidence)


FRONTAL = [(170.0, 180.0), (230.0, 180.0), (200.0, 213.0), (175.0, 240.0), (225.0, 240.0)]


def _rotated(points: list[tuple[float, float]], degrees: float) -> list[tuple[float, float]]:
    angle = math.radians(degrees)
    cx, cy = 200.0, 200.0
    return [
        (
            cx + (x - cx) * math.cos(angle) - (y - cy) * math.sin(angle),
            cy + (x - cx) * math.sin(angle) + (y - cy) * math.cos(angle),
        )
        for x, y in points
    ]


def test_a_frontal_face_has_no_roll_yaw_or_pitch() -> None:
    pose = face_pose(_face(FRONTAL))
    assert abs(pose.roll) < 0.01 and abs(pose.yaw) < 0.01 and abs(pose.pitch) < 0.01


def test_roll_is_the_eye_line_angle_and_does_not_leak_into_yaw_or_pitch() -> None:
    pose = face_pose(_face(_rotated(FRONTAL, 20)))
    assert pose.roll == pytest.approx(20, abs=0.01)
    assert abs(pose.yaw) < 0.01 and abs(pose.pitch) < 0.01


def test_yaw_follows_the_nose_sideways_and_pitch_up_and_down() -> None:
    turned = list(FRONTAL)
    turned[2] = (200.0 + 0.6 * 60 * math.tan(math.radians(30)), 213.0)  # nose as a 30 degree turn moves it
    assert face_pose(_face(turned)).yaw == pytest.approx(30, abs=0.1)
    looking_up = list(FRONTAL)
    looking_up[2] = (200.0, 200.0)  # nose tip closer to the eye line
    assert face_pose(_face(looking_up)).pitch > 10


def test_blur_lowers_sharpness_and_darkness_lowers_brightness(models, faces_dir: Path) -> None:  # type: ignore[no-untyped-def]
    detector, _ = models
    photo = Image.open(faces_dir / "enroll/obama/obama.jpg").convert("RGB")
    pixels = np.asarray(photo)
    face = detector.detect(pixels)[0]
    sharp = face_quality(pixels, face)
    blurred = face_quality(np.asarray(photo.filter(ImageFilter.GaussianBlur(photo.width / 80))), face)
    dark = face_quality(np.asarray(ImageEnhance.Brightness(photo).enhance(0.1)), face)
    assert sharp.sharpness > 90 and blurred.sharpness < sharp.sharpness / 2
    assert 40 < sharp.brightness < 70 and dark.brightness < 10
    assessed = assess_face(np.asarray(ImageEnhance.Brightness(photo).enhance(0.1)), face)
    assert "LOW_BRIGHTNESS" in quality_reasons(assessed, QualityFilter.MEDIUM)
    assert quality_reasons(assessed, QualityFilter.NONE) == []


def test_quality_bars_name_every_shortfall() -> None:
    small = assess_face(np.full((400, 400, 3), 128, np.uint8), _face(FRONTAL, side=30, confidence=0.82))
    # A flat grey square: no detail at all, so it is not sharp; mid-grey is bright enough.
    assert quality_reasons(small, QualityFilter.HIGH) == ["LOW_CONFIDENCE", "SMALL_BOUNDING_BOX", "LOW_SHARPNESS"]
    assert quality_reasons(small, QualityFilter.AUTO) == quality_reasons(small, QualityFilter.LOW) == ["LOW_SHARPNESS"]


# --- collections, faces and users on in-memory adapters -------------------------------------------------------


def _store(face_count: int, collection_id: str = "people") -> tuple[service.CollectionStore, list[str]]:
    collections, faces = MemoryCollectionRepository(), MemoryFaceRepository()
    collections.create(Collection(collection_id, "2026-01-01T00:00:00+00:00", EMBEDDER_VERSION, change_seq=0))
    rng = np.random.default_rng(7)
    ids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(face_count)]
    base = rng.normal(size=EMBEDDING_SIZE)
    records = []
    for number, face_id in enumerate(ids):
        # Faces 0-2 are one person (close to one vector), every other face is someone else.
        vector = base + rng.normal(size=EMBEDDING_SIZE) * 0.3 if number < 3 else rng.normal(size=EMBEDDING_SIZE)
        records.append(
            FaceRecord(
                face_id, "photo", BoundingBox(0, 0, 10, 10), 0.9, vector / np.linalg.norm(vector), "test", collection_id
            )
        )
    faces.save_all(records)
    return service.CollectionStore(
        collections, faces, MemoryUserRepository(), CollectionIndexes(faces, collections)
    ), ids


def test_list_faces_pages_in_face_id_order_without_repeats() -> None:
    store, ids = _store(7)
    seen, token, pages = [], None, 0
    while True:
        page = service.list_faces(store, "people", 3, token)
        seen += [face.face_id for face in page.items]
        pages += 1
        if page.next_token is None:
            break
        token = page.next_token
    assert seen == sorted(ids) and pages == 3
    assert service.list_faces(store, "people", 7).next_token is None
    with pytest.raises(InvalidPaginationTokenError):
        service.list_faces(store, "people", 3, "not-a-token")
    with pytest.raises(ResourceNotFoundError):
        service.list_faces(store, "missing", 3)


def test_list_users_pages_and_reports_status() -> None:
    store, ids = _store(3)
    for user in ("carol", "alice", "bob"):
        service.create_user(store, "people", user)
    service.associate_faces(store, "people", "bob", [ids[0]])
    first = service.list_users(store, "people", 2, None)
    assert [(u.user_id, u.status) for u in first.items] == [("alice", "CREATED"), ("bob", "ACTIVE")]
    rest = service.list_users(store, "people", 2, first.next_token)
    assert [u.user_id for u in rest.items] == ["carol"] and rest.next_token is None
    with pytest.raises(ConflictError):
        service.create_user(store, "people", "alice")


def test_a_user_takes_only_faces_of_one_person_and_keeps_them_from_deletion() -> None:
    store, ids = _store(5)
    service.create_user(store, "people", "pat")
    # Two people in the first call: the first face makes the user, the other is refused.
    first = service.associate_faces(store, "people", "pat", [ids[0], ids[4]])
    assert first.associated == [ids[0]] and first.refused[ids[4]][2] == ["LOW_MATCH_CONFIDENCE"]
    result = service.associate_faces(store, "people", "pat", [ids[1], ids[3]])
    assert result.associated == [ids[1]]
    assert result.refused[ids[3]][2] == ["LOW_MATCH_CONFIDENCE"]
    deletion = service.delete_faces(store, "people", [ids[0], ids[4]])
    assert deletion.deleted == [ids[4]] and deletion.refused[ids[0]] == ("pat", ["ASSOCIATED_TO_AN_EXISTING_USER"])
    service.create_user(store, "people", "sam")
    service.associate_faces(store, "people", "sam", [ids[2]])
    assert [m.user_id for m in service.search_users(store, "people", user_id="pat", threshold=80, max_users=5)] == [
        "sam"
    ]
    service.delete_user(store, "people", "pat")
    assert service.list_faces(store, "people", 10, user_id="pat").items == []
    with pytest.raises(InvalidParameterError):
        service.associate_faces(store, "people", "sam", ["not-a-face-id"])


def test_deleting_a_collection_removes_its_faces_and_users() -> None:
    store, _ = _store(4)
    service.create_user(store, "people", "pat")
    service.delete_collection(store, "people")
    assert list(store.faces.list_collection("people")) == []
    assert store.users.list_page("people", 10).items == []
    with pytest.raises(ResourceNotFoundError):
        service.delete_collection(store, "people")
