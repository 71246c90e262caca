"""The two pipeline stages as plain functions: detect the faces in an uploaded photo, then embed them.

Bad input ends in a FAILED photo record with a reason code and the message is consumed; anything else
(throttling, a network error) raises, so the queue retries it and, after a few receives, dead-letters it.

An enrolment needs a consent reference (metadata candor-consent): without one the photo is detected,
recorded as FAILED with ConsentRequired, audited as a refusal, and nobody in it is embedded or indexed.
What enrols nobody expires after the retention period (candor/retention.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from candor.accountability.policy import Caller
from candor.accountability.rules import Accountability
from candor.core.enrolment import META_CONSENT, enrolment_for, face_id_for, photo_id_for
from candor.core.errors import CandorError, ConsentRequiredError, NoFaceError, ResourceNotFoundError
from candor.core.faces import DetectedFace, Enrolment, PhotoRecord, PhotoStatus
from candor.core.settings import DEFAULT_RETENTION_DAYS, MAX_FACES, MAX_OBJECT_IMAGE_BYTES
from candor.indexing import embed_and_store
from candor.ports import (
    CollectionRepository,
    FaceDetector,
    FaceEmbedder,
    FaceRepository,
    ImageStore,
    MessagePublisher,
    PhotoRepository,
)
from candor.retention import expire_photo, expiry
from candor.vision.images import decode_image

# Who the audit log names for what the pipeline does: the upload (the uploader's identity is in S3's logs).
PIPELINE_CALLER = Caller("upload-pipeline")


@dataclass(frozen=True)
class PhotoRef:
    bucket: str
    key: str
    version_id: str | None = None

    @property
    def photo_id(self) -> str:
        return photo_id_for(self.bucket, self.key)


def detect_photo(
    ref: PhotoRef,
    *,
    images: ImageStore,
    photos: PhotoRepository,
    collections: CollectionRepository,
    detector: FaceDetector,
    embed_queue: MessagePublisher,
    min_confidence: float,
    accountability: Accountability | None = None,
    retention_days: int = DEFAULT_RETENTION_DAYS,
) -> PhotoRecord:
    """Find up to MAX_FACES faces, record them, and hand the photo to the embed stage."""
    photo = PhotoRecord(ref.photo_id, ref.bucket, ref.key, PhotoStatus.DETECTED, detector_version=detector.version)
    try:
        stored = images.get(ref.bucket, ref.key, ref.version_id, max_bytes=MAX_OBJECT_IMAGE_BYTES)
        photo.source_etag, photo.source_modified = stored.etag, stored.last_modified
        photo.enrolment = enrolment_for(ref.key, stored.metadata)
        _require_collection(collections, photo.enrolment)
        image = decode_image(stored.data, MAX_OBJECT_IMAGE_BYTES)
        # One more than the limit tells a photo at the limit from one with faces left out.
        found = detector.detect(image.pixels, max_faces=MAX_FACES + 1, min_confidence=min_confidence)
        photo.faces_truncated = len(found) > MAX_FACES
        found = found[:MAX_FACES]
        if photo.enrolment and not found:
            raise NoFaceError("no face found in an enrolment photo")
    except CandorError as error:
        return _record_failure(photos, photo, error, retention_days)

    photo.image_width, photo.image_height = image.width, image.height
    photo.faces = [image.to_original(face) for face in found]
    photo.face_ids = [face_id_for(photo.photo_id, i) for i in range(len(photo.faces))]
    if photo.enrolment is not None and not photo.enrolment.consent_reference:
        return _refuse_without_consent(photo, photo.enrolment, images, photos, accountability, retention_days)
    if photo.enrolment is None:
        expire_photo(photo, images, retention_days)
    if not photo.faces:
        photo.status = PhotoStatus.COMPLETE
    photos.save(photo)
    if photo.faces:
        embed_queue.publish(embed_request(photo, ref.version_id))
    return photo


def embed_request(photo: PhotoRecord, version_id: str | None) -> dict[str, Any]:
    """The embed queue's message: everything the next stage needs, well under SQS's 256 KB for 100 faces."""
    enrolment = photo.enrolment
    return {
        "photo_id": photo.photo_id,
        "bucket": photo.bucket,
        "key": photo.key,
        "version_id": version_id,
        "face_ids": photo.face_ids,
        "faces": [face.to_dict() for face in photo.faces],
        "enrolment": None
        if enrolment is None
        else {
            "collection_id": enrolment.collection_id,
            "external_image_id": enrolment.external_image_id,
            "consent_reference": enrolment.consent_reference,
        },
    }


def embed_photo(
    request: dict[str, Any],
    *,
    images: ImageStore,
    photos: PhotoRepository,
    faces: FaceRepository,
    collections: CollectionRepository,
    embedder: FaceEmbedder,
    accountability: Accountability | None = None,
    retention_days: int = DEFAULT_RETENTION_DAYS,
) -> PhotoRecord:
    """Embed every detected face; the largest face of an enrolment photo joins its collection."""
    photo = photos.get(request["photo_id"]) or _photo_from_request(request)
    enrolment = photo.enrolment
    if enrolment is not None and not enrolment.consent_reference:
        enrolment = None  # never indexed without consent, whatever queued the message
    detected = [DetectedFace.from_dict(face) for face in request["faces"]]
    try:
        stored = images.get(photo.bucket, photo.key, request.get("version_id"), max_bytes=MAX_OBJECT_IMAGE_BYTES)
        _require_collection(collections, enrolment, embedder.version)
        image = decode_image(stored.data, MAX_OBJECT_IMAGE_BYTES)
    except CandorError as error:
        return _record_failure(photos, photo, error, retention_days)

    # Faces are sorted largest first; only the person the upload names is enrolled, never bystanders.
    records = embed_and_store(
        image,
        photo.photo_id,
        detected,
        request["face_ids"],
        enrolment=enrolment,
        enrol_count=1,
        embedder=embedder,
        face_repository=faces,
        collections=collections,
        expires_at=expiry(retention_days),
    )
    if enrolment is not None and enrolment.consent_reference and records and accountability is not None:
        accountability.record_enrolment(
            enrolment.collection_id,
            PIPELINE_CALLER,
            "Upload",
            face_ids=[records[0].face_id],
            person=enrolment.external_image_id,
            consent_reference=enrolment.consent_reference,
        )
    photo.status = PhotoStatus.COMPLETE
    photo.embedder_version = embedder.version
    photos.save(photo)
    return photo


def _require_collection(
    collections: CollectionRepository, enrolment: Enrolment | None, model_version: str | None = None
) -> None:
    if enrolment is None:
        return
    collection = collections.get(enrolment.collection_id)
    if collection is None:
        raise ResourceNotFoundError(
            f"collection {enrolment.collection_id!r} does not exist: create it before enrolling into it"
        )
    if model_version is not None:
        collection.require_face_model(model_version)  # never two models' vectors in one collection


def _refuse_without_consent(
    photo: PhotoRecord,
    enrolment: Enrolment,
    images: ImageStore,
    photos: PhotoRepository,
    accountability: Accountability | None,
    retention_days: int,
) -> PhotoRecord:
    """Detected and reported, never embedded: the faces stay boxes in the photo record until it expires."""
    error = ConsentRequiredError(
        f"enrolling into {enrolment.collection_id!r} needs the person's consent reference: "
        f"upload the photo with the object metadata {META_CONSENT}"
    )
    if accountability is not None:
        accountability.refuse(enrolment.collection_id, PIPELINE_CALLER, "Upload", error)
    expire_photo(photo, images, retention_days)
    return _record_failure(photos, photo, error)


def _record_failure(
    photos: PhotoRepository, photo: PhotoRecord, error: CandorError, retention_days: int = DEFAULT_RETENTION_DAYS
) -> PhotoRecord:
    photo.status = PhotoStatus.FAILED
    # A failed photo enrols nobody: its record goes after the retention period.
    photo.expires_at = photo.expires_at or expiry(retention_days)
    photo.error_code = error.code
    photo.error_message = error.message
    photos.save(photo)
    return photo


def _photo_from_request(request: dict[str, Any]) -> PhotoRecord:
    enrolment = request.get("enrolment")
    return PhotoRecord(
        photo_id=request["photo_id"],
        bucket=request["bucket"],
        key=request["key"],
        status=PhotoStatus.DETECTED,
        faces=[DetectedFace.from_dict(face) for face in request["faces"]],
        face_ids=list(request["face_ids"]),
        enrolment=Enrolment(**enrolment) if enrolment else None,
    )
