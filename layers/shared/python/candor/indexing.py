"""Faces into a collection: the one implementation of "embed these faces, store them, index the enrolled
ones" that both the pipeline's embed stage and the face API's IndexFaces run."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from candor.core.enrolment import face_id_for, validate_collection_id, validate_external_image_id
from candor.core.errors import InvalidParameterError, ResourceNotFoundError
from candor.core.faces import DetectedFace, Enrolment, FaceRecord
from candor.core.settings import MAX_FACES, MAX_OBJECT_IMAGE_BYTES
from candor.ports import CollectionRepository, FaceDetector, FaceEmbedder, FaceRepository, IndexChange
from candor.vision.images import DecodedImage, decode_image
from candor.vision.quality import AssessedFace, QualityFilter, assess_face, quality_reasons


def embed_and_store(
    image: DecodedImage,
    photo_id: str,
    faces: Sequence[DetectedFace],
    face_ids: Sequence[str],
    *,
    enrolment: Enrolment | None,
    enrol_count: int,
    embedder: FaceEmbedder,
    face_repository: FaceRepository,
    collections: CollectionRepository,
    expires_at: int | None = None,
) -> list[FaceRecord]:
    """Embed `faces` (pixels of the original upright image, largest first), store every one, and enrol the
    first `enrol_count` of them into the enrolment's collection, whose warm indexes then reload. The others
    are kept until `expires_at` (candor/retention.py)."""
    vectors = embedder.embed_faces(image.pixels, [face.scaled(1.0 / image.scale) for face in faces])
    return store_faces(
        vectors,
        photo_id,
        faces,
        face_ids,
        image_size=(image.width, image.height),
        enrolment=enrolment,
        enrol_count=enrol_count,
        model_version=embedder.version,
        face_repository=face_repository,
        collections=collections,
        expires_at=expires_at,
    )


def store_faces(
    vectors: np.ndarray,
    photo_id: str,
    faces: Sequence[DetectedFace],
    face_ids: Sequence[str],
    *,
    image_size: tuple[int, int],
    enrolment: Enrolment | None,
    enrol_count: int,
    model_version: str,
    face_repository: FaceRepository,
    collections: CollectionRepository,
    expires_at: int | None = None,
) -> list[FaceRecord]:
    """embed_and_store's second half, for faces already embedded (`vectors`, one row per face, by the model
    `model_version`): the embed stage embeds the faces of a whole batch of photos in one model call."""
    image_width, image_height = image_size
    if enrolment is not None and enrol_count and collections.get(enrolment.collection_id) is None:
        raise ResourceNotFoundError(f"collection {enrolment.collection_id!r} does not exist")
    records = []
    for number, (face_id, face, vector) in enumerate(zip(face_ids, faces, vectors, strict=True)):
        enrolled = enrolment if enrolment is not None and number < enrol_count else None
        records.append(
            FaceRecord(
                face_id=face_id,
                photo_id=photo_id,
                bounding_box=face.bounding_box,
                confidence=face.confidence,
                embedding=vector,
                model_version=model_version,
                collection_id=enrolled.collection_id if enrolled else None,
                external_image_id=enrolled.external_image_id if enrolled else None,
                consent_reference=enrolled.consent_reference if enrolled else None,
                image_width=image_width,
                image_height=image_height,
                expires_at=None if enrolled else expires_at,
            )
        )
    face_repository.save_all(records)
    indexed = [record for record in records if record.collection_id is not None]
    if enrolment is not None and indexed:
        added = tuple(record.face_id for record in indexed)
        collections.mark_changed(enrolment.collection_id, IndexChange(added=added))
    return records


def assess_faces(image: DecodedImage, detector: FaceDetector, min_confidence: float) -> list[AssessedFace]:
    """Every face in the image (largest first) with its quality and pose, in the original image's pixels."""
    found = detector.detect(image.pixels, max_faces=MAX_FACES, min_confidence=min_confidence)
    return [assess_face(image.pixels, face, image.scale) for face in found]


@dataclass
class IndexResult:
    image_id: str
    image_width: int
    image_height: int
    indexed: list[tuple[FaceRecord, AssessedFace]] = field(default_factory=list)
    unindexed: list[tuple[AssessedFace, list[str]]] = field(default_factory=list)


def index_faces(
    image_bytes: bytes,
    collection_id: str,
    *,
    external_image_id: str | None,
    max_faces: int | None,
    quality_filter: QualityFilter,
    detector: FaceDetector,
    embedder: FaceEmbedder,
    face_repository: FaceRepository,
    collections: CollectionRepository,
    min_confidence: float,
    consent_reference: str | None = None,
) -> IndexResult:
    """Rekognition's IndexFaces: the faces that pass the quality bar, largest first and at most `max_faces`,
    join the collection; the others come back with their reasons. Nothing is stored for them."""
    if collections.get(validate_collection_id(collection_id)) is None:
        raise ResourceNotFoundError(f"collection {collection_id!r} does not exist")
    if external_image_id is not None:
        validate_external_image_id(external_image_id)
    if max_faces is not None and max_faces < 1:
        raise InvalidParameterError("MaxFaces must be at least 1")
    image = decode_image(image_bytes, MAX_OBJECT_IMAGE_BYTES)
    assessed = assess_faces(image, detector, min_confidence)
    # Each call is a new image (as in Rekognition): indexing the same photo twice gives new face ids.
    result = IndexResult(str(uuid.uuid4()), image.width, image.height)
    passing: list[AssessedFace] = []
    for face in assessed:
        reasons = quality_reasons(face, quality_filter)
        if not reasons and max_faces is not None and len(passing) >= max_faces:
            reasons = ["EXCEEDS_MAX_FACES"]
        if reasons:
            result.unindexed.append((face, reasons))
        else:
            passing.append(face)
    if passing:
        records = embed_and_store(
            image,
            result.image_id,
            [face.face for face in passing],
            [face_id_for(result.image_id, number) for number in range(len(passing))],
            enrolment=Enrolment(collection_id, external_image_id, consent_reference),
            enrol_count=len(passing),
            embedder=embedder,
            face_repository=face_repository,
            collections=collections,
        )
        result.indexed = list(zip(records, passing, strict=True))
    return result
