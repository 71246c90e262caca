"""The pipeline stages as plain functions on in-memory adapters, with the real models and real photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from candor.adapters.memory import (
    MemoryCollectionRepository,
    MemoryFaceRepository,
    MemoryImageStore,
    MemoryPhotoRepository,
    MemoryPublisher,
)
from candor.core.faces import PhotoStatus
from candor.core.settings import EMBEDDER_VERSION, EMBEDDING_SIZE
from candor.pipeline import PhotoRef, detect_photo, embed_photo
from candor.ports import Collection
from candor.search import CollectionIndexes, search_image

BUCKET = "uploads"
# An enrolment upload names the enrolled person's consent reference; without it nobody is indexed.
CONSENTED = {"candor-consent": "consent-form-17"}


class Stack:
    def __init__(self, models) -> None:  # type: ignore[no-untyped-def]
        self.detector, self.embedder = models
        self.images = MemoryImageStore()
        self.photos = MemoryPhotoRepository()
        self.faces = MemoryFaceRepository()
        self.collections = MemoryCollectionRepository()
        self.embed_queue = MemoryPublisher()
        self.indexes = CollectionIndexes(self.faces, self.collections)

    def upload(self, key: str, data: bytes, metadata: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        self.images.put(BUCKET, key, data, metadata)
        photo = detect_photo(
            PhotoRef(BUCKET, key),
            images=self.images,
            photos=self.photos,
            collections=self.collections,
            detector=self.detector,
            embed_queue=self.embed_queue,
            min_confidence=0.8,
        )
        while self.embed_queue.messages:
            embed_photo(
                self.embed_queue.messages.pop(0),
                images=self.images,
                photos=self.photos,
                faces=self.faces,
                collections=self.collections,
                embedder=self.embedder,
            )
        return self.photos.get(photo.photo_id)

    def search(self, data: bytes, collection: str = "people"):  # type: ignore[no-untyped-def]
        return search_image(
            data,
            collection,
            detector=self.detector,
            embedder=self.embedder,
            indexes=self.indexes,
            face_match_threshold=80,
            max_matches=3,
            min_confidence=0.8,
        )


@pytest.fixture
def stack(models) -> Stack:  # type: ignore[no-untyped-def]
    stack = Stack(models)
    stack.collections.create(Collection("people", "2026-11-22T00:00:00+00:00", EMBEDDER_VERSION))
    return stack


def _read(path: Path) -> bytes:
    return path.read_bytes()


def test_enrolment_photo_flows_to_a_searchable_face(stack: Stack, faces_dir: Path) -> None:
    photo = stack.upload("enroll/people/obama/obama.jpg", _read(faces_dir / "enroll/obama/obama.jpg"), CONSENTED)
    assert photo.status is PhotoStatus.COMPLETE
    assert len(photo.faces) == 1 and photo.image_width > 0
    (face,) = stack.faces.list_collection("people")
    assert face.external_image_id == "obama" and face.consent_reference == "consent-form-17"
    assert face.embedding.shape == (EMBEDDING_SIZE,) and np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-4)

    result = stack.search(_read(faces_dir / "probe/obama1.jpg"))
    assert [m.external_image_id for m in result.faces[0].matches] == ["obama"]
    assert 80 <= result.faces[0].matches[0].similarity <= 100


def test_only_the_largest_face_of_an_enrolment_photo_is_enrolled(stack: Stack, faces_dir: Path) -> None:
    photo = stack.upload("enroll/people/obama/group.jpg", _read(faces_dir / "probe/obama_and_biden.jpg"), CONSENTED)
    assert photo.status is PhotoStatus.COMPLETE and len(photo.faces) >= 2
    enrolled = list(stack.faces.list_collection("people"))
    assert len(enrolled) == 1
    assert len(stack.faces.faces) == len(photo.faces)  # the others are embedded, never indexed


def test_a_stranger_matches_nobody(stack: Stack, faces_dir: Path) -> None:
    for person in ("obama", "biden"):
        stack.upload(
            f"enroll/people/{person}/{person}.jpg", _read(faces_dir / f"enroll/{person}/{person}.jpg"), CONSENTED
        )
    result = stack.search(_read(faces_dir / "probe/lin-manuel-miranda.png"))
    assert result.faces and all(face.matches == [] for face in result.faces)


def test_bad_bytes_end_in_a_failed_record_not_an_exception(stack: Stack) -> None:
    photo = stack.upload("photos/broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    assert photo.status is PhotoStatus.FAILED
    assert photo.error_code == "InvalidImageFormat" and photo.error_message
    assert stack.embed_queue.messages == []


def test_enrolling_into_a_missing_collection_is_a_recorded_failure(stack: Stack, faces_dir: Path) -> None:
    photo = stack.upload("enroll/nobody/obama/obama.jpg", _read(faces_dir / "enroll/obama/obama.jpg"), CONSENTED)
    assert photo.status is PhotoStatus.FAILED and photo.error_code == "ResourceNotFound"
    assert "nobody" in (photo.error_message or "")


def test_an_enrolment_photo_without_a_face_fails_but_a_plain_one_completes(stack: Stack) -> None:
    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    buffer = io.BytesIO()
    Image.fromarray(gradient).convert("RGB").save(buffer, "JPEG")
    enrolment = stack.upload("enroll/people/ghost/wall.jpg", buffer.getvalue(), CONSENTED)
    assert enrolment.status is PhotoStatus.FAILED and enrolment.error_code == "NoFaceDetected"
    plain = stack.upload("photos/wall.jpg", buffer.getvalue())
    assert plain.status is PhotoStatus.COMPLETE and plain.faces == []


def test_processing_the_same_upload_twice_keeps_one_set_of_faces(stack: Stack, faces_dir: Path) -> None:
    data = _read(faces_dir / "probe/obama_and_biden.jpg")
    first = stack.upload("photos/pair.jpg", data)
    second = stack.upload("photos/pair.jpg", data)
    assert first.face_ids == second.face_ids
    assert len(stack.faces.faces) == len(first.face_ids)
