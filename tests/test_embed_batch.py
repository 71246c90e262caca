"""The photo decoded once and a batch embedded in one model call (candor/pipeline.py): the detect stage's crops
travel in the embed message of a photo that enrols nobody, the embed stage uses them only when they fit its
model, and a bad message still fails alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from candor.adapters.memory import (
    MemoryCollectionRepository,
    MemoryFaceRepository,
    MemoryImageStore,
    MemoryPhotoRepository,
    MemoryPublisher,
)
from candor.core.errors import ResourceNotFoundError
from candor.core.faces import PhotoRecord, PhotoStatus
from candor.core.settings import EMBEDDER_VERSION, MAX_OBJECT_IMAGE_BYTES
from candor.pipeline import PhotoRef, detect_photo, embed_batch, store_embedded
from candor.ports import Collection
from candor.vision.embedder import FACENET
from candor.vision.images import decode_image

BUCKET = "uploads"
CONSENTED = {"candor-consent": "consent-form-17"}


class CountingEmbedder:
    """The real embedder, counting its model calls."""

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder
        self.calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        self.calls.append(len(crops))
        result: np.ndarray = self._embedder.embed(crops)
        return result


class Stack:
    def __init__(self, models: Any) -> None:
        self.detector, embedder = models
        self.embedder = CountingEmbedder(embedder)
        self.images = MemoryImageStore()
        self.photos = MemoryPhotoRepository()
        self.faces = MemoryFaceRepository()
        self.collections = MemoryCollectionRepository()
        self.collections.create(Collection("people", "2026-12-01T00:00:00+00:00", EMBEDDER_VERSION))
        self.queue = MemoryPublisher()

    def detect(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> dict[str, Any]:
        self.images.put(BUCKET, key, data, metadata)
        detect_photo(
            PhotoRef(BUCKET, key),
            images=self.images,
            photos=self.photos,
            collections=self.collections,
            detector=self.detector,
            embed_queue=self.queue,
            min_confidence=0.8,
            crop_model=self.embedder.model,
        )
        message: dict[str, Any] = self.queue.messages.pop()
        return message

    def embed(self, requests: list[Any]) -> list[PhotoRecord | Exception]:
        """One batch, as the embed handler runs it: embedded together, then stored message by message."""
        outcomes = embed_batch(
            requests,
            images=self.images,
            photos=self.photos,
            collections=self.collections,
            embedder=self.embedder,  # type: ignore[arg-type]
        )
        results: list[PhotoRecord | Exception] = []
        for outcome in outcomes:
            try:
                results.append(
                    store_embedded(
                        outcome,
                        photos=self.photos,
                        faces=self.faces,
                        collections=self.collections,
                        embedder=self.embedder,  # type: ignore[arg-type]
                    )
                )
            except Exception as error:
                results.append(error)
        return results

    def vectors(self, photo_id: str) -> np.ndarray:
        """The photo's stored embeddings, largest face first."""
        photo = self.photos.get(photo_id)
        assert photo is not None
        return np.stack([self.faces.faces[face_id].embedding for face_id in photo.face_ids])


@pytest.fixture
def stack(models: Any) -> Stack:
    return Stack(models)


def test_a_plain_photo_travels_with_its_crops_and_is_embedded_without_fetching_it(
    stack: Stack, faces_dir: Path
) -> None:
    data = (faces_dir / "probe/two_people.jpg").read_bytes()
    message = stack.detect("photos/two.jpg", data)
    assert message["crops"]["model"] == EMBEDDER_VERSION and message["crops"]["size"] == 112
    image = decode_image(data, MAX_OBJECT_IMAGE_BYTES)
    photo = stack.photos.get(message["photo_id"])
    assert photo is not None
    expected = stack.embedder.embed_faces(image.pixels, [face.scaled(1.0 / image.scale) for face in photo.faces])
    # Decoded once: with the crops in the message the photo itself is not needed any more.
    stack.images.delete(BUCKET, "photos/two.jpg")

    (outcome,) = stack.embed([message])

    assert isinstance(outcome, PhotoRecord) and outcome.status is PhotoStatus.COMPLETE
    assert np.allclose(stack.vectors(message["photo_id"]), expected, atol=1e-5)


def test_the_crops_give_the_embeddings_the_decoded_photo_gives(stack: Stack, faces_dir: Path) -> None:
    data = (faces_dir / "probe/two_people.jpg").read_bytes()
    with_crops = stack.detect("photos/a.jpg", data)
    without = dict(stack.detect("photos/b.jpg", data))
    del without["crops"]

    stack.embed([with_crops, without])

    assert np.array_equal(stack.vectors(with_crops["photo_id"]), stack.vectors(without["photo_id"]))


def test_an_enrolment_photo_never_sends_its_crops(stack: Stack, faces_dir: Path) -> None:
    message = stack.detect(
        "enroll/people/biden/biden.jpg", (faces_dir / "enroll/biden/biden.jpg").read_bytes(), CONSENTED
    )
    assert "crops" not in message

    (outcome,) = stack.embed([message])

    assert isinstance(outcome, PhotoRecord) and outcome.status is PhotoStatus.COMPLETE
    assert [f.external_image_id for f in stack.faces.faces.values()] == ["biden"]


@pytest.mark.parametrize(
    "crops",
    [
        {"model": "another-model", "size": 112},
        {"model": EMBEDDER_VERSION, "size": FACENET.face_size},
        {"model": EMBEDDER_VERSION, "size": 112, "png": "not base64!"},
        {"model": EMBEDDER_VERSION, "size": 112, "png": "aGVsbG8="},  # base64, but no PNG
        {"model": EMBEDDER_VERSION, "size": 112, "png": None},
    ],
)
def test_crops_cut_for_another_model_or_damaged_are_ignored_and_the_photo_decoded(
    stack: Stack, faces_dir: Path, crops: dict[str, Any]
) -> None:
    message = stack.detect("photos/two.jpg", (faces_dir / "probe/two_people.jpg").read_bytes())
    message["crops"] = {**message["crops"], **crops}

    (outcome,) = stack.embed([message])

    assert isinstance(outcome, PhotoRecord) and outcome.status is PhotoStatus.COMPLETE
    assert len(stack.vectors(message["photo_id"])) == 2


def test_crops_of_another_photo_are_ignored(stack: Stack, faces_dir: Path) -> None:
    two = stack.detect("photos/two.jpg", (faces_dir / "probe/two_people.jpg").read_bytes())
    one = stack.detect("photos/one.jpg", (faces_dir / "probe/obama1.jpg").read_bytes())
    two["crops"] = one["crops"]  # a valid PNG, of one face where the message has two

    stack.embed([two])

    assert len(stack.vectors(two["photo_id"])) == 2


def test_a_photo_whose_record_is_gone_is_not_embedded_from_its_crops(stack: Stack, faces_dir: Path) -> None:
    # Erased or deleted after detection: only S3 decides, and the photo is gone there too.
    message = stack.detect("photos/two.jpg", (faces_dir / "probe/two_people.jpg").read_bytes())
    stack.photos.delete(message["photo_id"])
    stack.images.delete(BUCKET, "photos/two.jpg")

    (outcome,) = stack.embed([message])

    assert isinstance(outcome, PhotoRecord) and outcome.status is PhotoStatus.FAILED
    assert outcome.error_code == ResourceNotFoundError.code
    assert not stack.faces.faces


def test_a_batch_is_embedded_in_one_model_call_and_a_bad_message_fails_alone(stack: Stack, faces_dir: Path) -> None:
    two = stack.detect("photos/two.jpg", (faces_dir / "probe/two_people.jpg").read_bytes())
    one = stack.detect("photos/one.jpg", (faces_dir / "probe/obama1.jpg").read_bytes())
    enrol = stack.detect(
        "enroll/people/biden/biden.jpg", (faces_dir / "enroll/biden/biden.jpg").read_bytes(), CONSENTED
    )
    gone = stack.detect("enroll/people/obama/obama.jpg", (faces_dir / "probe/obama1.jpg").read_bytes(), CONSENTED)
    stack.images.delete(BUCKET, "enroll/people/obama/obama.jpg")  # bad input: a FAILED record, consumed
    unparsed = ValueError("not JSON")  # a body that did not parse: this message fails (retried)
    broken = {"photo_id": "nothing else"}

    outcomes = stack.embed([two, unparsed, one, broken, enrol, gone])

    assert stack.embedder.calls == [4]  # 2 + 1 + 1 faces, one call
    assert [o.status if isinstance(o, PhotoRecord) else type(o).__name__ for o in outcomes] == [
        PhotoStatus.COMPLETE,
        "ValueError",
        PhotoStatus.COMPLETE,
        "KeyError",
        PhotoStatus.COMPLETE,
        PhotoStatus.FAILED,
    ]
    assert outcomes[1] is unparsed
    assert [len(stack.vectors(m["photo_id"])) for m in (two, one, enrol)] == [2, 1, 1]
