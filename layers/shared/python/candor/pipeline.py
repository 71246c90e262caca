"""The two pipeline stages as plain functions: detect the faces in an uploaded photo, then embed them.

Bad input ends in a FAILED photo record with a reason code and the message is consumed; anything else
(throttling, a network error) raises, so the queue retries it and, after a few receives, dead-letters it.

An enrolment needs a consent reference (metadata candor-consent): without one the photo is detected,
recorded as FAILED with ConsentRequired, audited as a refusal, and nobody in it is embedded or indexed.
What enrols nobody expires after the retention period (candor/retention.py).

The photo is decoded once. For a photo that enrols nobody the detect stage cuts the crops the embedder takes
and sends them inside the embed message (SQS keeps a message at most 14 days, under RetentionDays' 30; they
are never written anywhere else); the embed stage then embeds them without fetching or decoding the photo.
An enrolment photo's crops never travel: its faces must be erasable, so the embed stage decodes the photo
from S3 as before, and so it does whenever the crops are missing or were cut for another model. The embed
stage embeds the faces of a whole SQS batch in one model call (embed_batch), then stores each record's
(store_embedded); a bad record still fails alone.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from candor.accountability.policy import Caller
from candor.accountability.rules import Accountability
from candor.core.enrolment import META_CONSENT, enrolment_for, face_id_for, photo_id_for
from candor.core.errors import CandorError, ConsentRequiredError, NoFaceError, ResourceNotFoundError
from candor.core.faces import DetectedFace, Enrolment, PhotoRecord, PhotoStatus
from candor.core.settings import DEFAULT_RETENTION_DAYS, MAX_FACES, MAX_OBJECT_IMAGE_BYTES
from candor.indexing import store_faces
from candor.ports import (
    CollectionRepository,
    FaceDetector,
    FaceRepository,
    ImageStore,
    MessagePublisher,
    PhotoRepository,
)
from candor.retention import expire_photo, expiry
from candor.vision.embedder import EmbedderModel, FaceEmbedder, face_crops
from candor.vision.images import decode_image

# Who the audit log names for what the pipeline does: the upload (the uploader's identity is in S3's logs).
PIPELINE_CALLER = Caller("upload-pipeline")
# Crops travel in the embed message only while it stays well under SQS's 256 KiB with 100 faces' boxes
# (about 6 faces of 112x112 as PNG): a photo with more is decoded again by the embed stage.
MAX_MESSAGE_CROPS_CHARS = 180_000


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
    crop_model: EmbedderModel | None = None,
) -> PhotoRecord:
    """Find up to MAX_FACES faces, record them, and hand the photo to the embed stage; with `crop_model`, the
    crops that model embeds go with a photo that enrols nobody (the module's docstring says why only those)."""
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
        crops = None
        if crop_model is not None and photo.enrolment is None:
            crops = face_crops(image.pixels, [face.scaled(1.0 / image.scale) for face in photo.faces], crop_model)
        embed_queue.publish(embed_request(photo, ref.version_id, crops, crop_model))
    return photo


def embed_request(
    photo: PhotoRecord,
    version_id: str | None,
    crops: np.ndarray | None = None,
    crop_model: EmbedderModel | None = None,
) -> dict[str, Any]:
    """The embed queue's message: everything the next stage needs, well under SQS's 256 KB for 100 faces;
    the faces' crops (cut for `crop_model`) when they fit."""
    enrolment = photo.enrolment
    message: dict[str, Any] = {
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
    if crops is not None and crop_model is not None and len(crops) == len(photo.faces):
        data = _crops_png(crops)
        if len(data) <= MAX_MESSAGE_CROPS_CHARS:
            message["crops"] = {"model": crop_model.version, "size": crop_model.face_size, "png": data}
    return message


def _crops_png(crops: np.ndarray) -> str:
    """The crops one above the other in one PNG, as base64: lossless (the crops hold integers 0..255), about
    half the raw size, and as quick to write as deflating the raw pixels."""
    strip = crops.astype(np.uint8).reshape(-1, crops.shape[2], 3)
    buffer = io.BytesIO()
    Image.fromarray(strip).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class EmbedJob:
    """One embed message made ready for the model: its photo, its faces and their crops."""

    request: dict[str, Any]
    photo: PhotoRecord
    enrolment: Enrolment | None
    faces: list[DetectedFace]
    crops: np.ndarray  # N x size x size x 3, what the embedder takes
    image_size: tuple[int, int]
    vectors: np.ndarray | None = None  # one row per face, once embedded


@dataclass
class EmbedOutcome:
    """Where one message of a batch stands after embed_batch: `job` embedded and waiting for store_embedded,
    or its photo record already final (FAILED on bad input), or the error that fails just this message (it is
    retried, then dead-lettered). `seconds`: its time so far, its share of the model call split by faces."""

    job: EmbedJob | None = None
    photo: PhotoRecord | None = None
    error: Exception | None = None
    seconds: float = 0.0


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
    (outcome,) = embed_batch(
        [request],
        images=images,
        photos=photos,
        collections=collections,
        embedder=embedder,
        retention_days=retention_days,
    )
    return store_embedded(
        outcome,
        photos=photos,
        faces=faces,
        collections=collections,
        embedder=embedder,
        accountability=accountability,
        retention_days=retention_days,
    )


def embed_batch(
    requests: Sequence[dict[str, Any] | Exception],
    *,
    images: ImageStore,
    photos: PhotoRepository,
    collections: CollectionRepository,
    embedder: FaceEmbedder,
    retention_days: int = DEFAULT_RETENTION_DAYS,
) -> list[EmbedOutcome]:
    """The first half of embed_photo for a batch of messages, in order: each one's photo and crops, then every
    face of the batch in one model call. An Exception in `requests` (a body that did not parse) is that
    message's error; an error in one message never touches the others. store_embedded does the rest."""
    outcomes = [EmbedOutcome() for _ in requests]
    for outcome, request in zip(outcomes, requests, strict=True):
        started = time.perf_counter()
        try:
            if isinstance(request, Exception):
                raise request
            prepared = _prepare(request, images, photos, collections, embedder, retention_days)
        except Exception as error:  # it fails this message only, as a raise in its handler would
            outcome.error = error
        else:
            if isinstance(prepared, PhotoRecord):
                outcome.photo = prepared
            else:
                outcome.job = prepared
        outcome.seconds += time.perf_counter() - started

    waiting = [outcome for outcome in outcomes if outcome.job is not None]
    jobs = [outcome.job for outcome in waiting if outcome.job is not None]
    started = time.perf_counter()
    vectors = _embed_all(embedder, jobs)
    model_s = time.perf_counter() - started
    total_faces = sum(len(job.faces) for job in jobs) or 1
    for outcome, job, embedded in zip(waiting, jobs, vectors, strict=True):
        outcome.seconds += model_s * len(job.faces) / total_faces
        if isinstance(embedded, Exception):
            outcome.job, outcome.error = None, embedded
        else:
            job.vectors = embedded
    return outcomes


def store_embedded(
    outcome: EmbedOutcome,
    *,
    photos: PhotoRepository,
    faces: FaceRepository,
    collections: CollectionRepository,
    embedder: FaceEmbedder,
    accountability: Accountability | None = None,
    retention_days: int = DEFAULT_RETENTION_DAYS,
) -> PhotoRecord:
    """The second half of embed_photo for one message of embed_batch: its faces stored, the largest face of an
    enrolment photo in its collection, its record COMPLETE. Raises the message's error, if it has one."""
    if outcome.error is not None:
        raise outcome.error
    if outcome.job is None:
        assert outcome.photo is not None
        return outcome.photo
    started = time.perf_counter()
    outcome.photo = _store(outcome.job, photos, faces, collections, embedder, accountability, retention_days)
    outcome.job = None
    outcome.seconds += time.perf_counter() - started
    return outcome.photo


def _prepare(
    request: dict[str, Any],
    images: ImageStore,
    photos: PhotoRepository,
    collections: CollectionRepository,
    embedder: FaceEmbedder,
    retention_days: int,
) -> EmbedJob | PhotoRecord:
    """The message's photo and the crops of its faces; a PhotoRecord when it ended here (FAILED)."""
    recorded = photos.get(request["photo_id"])
    photo = recorded or _photo_from_request(request)
    enrolment = photo.enrolment
    if enrolment is not None and not enrolment.consent_reference:
        enrolment = None  # never indexed without consent, whatever queued the message
    detected = [DetectedFace.from_dict(face) for face in request["faces"]]
    # Crops are used only for a photo the detect stage recorded as enrolling nobody: a missing record means
    # the photo was erased or deleted, and then the photo's absence from S3 decides, as it always did.
    if recorded is not None and photo.enrolment is None and photo.image_width and photo.image_height:
        crops = _message_crops(request, embedder, len(detected))
        if crops is not None:
            return EmbedJob(request, photo, None, detected, crops, (photo.image_width, photo.image_height))
    try:
        stored = images.get(photo.bucket, photo.key, request.get("version_id"), max_bytes=MAX_OBJECT_IMAGE_BYTES)
        _require_collection(collections, enrolment, embedder.version)
        image = decode_image(stored.data, MAX_OBJECT_IMAGE_BYTES)
    except CandorError as error:
        return _record_failure(photos, photo, error, retention_days)
    crops = face_crops(image.pixels, [face.scaled(1.0 / image.scale) for face in detected], embedder.model)
    return EmbedJob(request, photo, enrolment, detected, crops, (image.width, image.height))


def _message_crops(request: dict[str, Any], embedder: FaceEmbedder, count: int) -> np.ndarray | None:
    """The crops the message carries, if they were cut for this embedder; None otherwise (the photo is then
    decoded: the crops are a shortcut, never needed)."""
    crops = request.get("crops")
    model = embedder.model
    if not isinstance(crops, dict) or crops.get("model") != embedder.version or crops.get("size") != model.face_size:
        return None
    if embedder.alignment != model.alignment:
        return None  # an embedder built with another crop (a benchmark's) cuts its own
    size = model.face_size
    try:
        with Image.open(io.BytesIO(base64.b64decode(crops["png"], validate=True)), formats=["PNG"]) as strip:
            if strip.mode != "RGB" or strip.size != (size, size * count):
                return None
            return np.asarray(strip).reshape(count, size, size, 3)
    except (KeyError, TypeError, ValueError, OSError, binascii.Error, Image.DecompressionBombError):
        return None


def _embed_all(embedder: FaceEmbedder, jobs: Sequence[EmbedJob]) -> list[np.ndarray | Exception]:
    """Every job's faces in one model call; if that call fails, one call per job, so that only the job
    at fault fails."""
    counts = [len(job.faces) for job in jobs]
    if not any(counts):
        return [np.zeros((0, embedder.embedding_size), dtype=np.float32) for _ in jobs]
    try:
        vectors = embedder.embed(np.concatenate([job.crops for job in jobs if len(job.faces)]))
    except Exception:  # retried job by job below
        results: list[np.ndarray | Exception] = []
        for job in jobs:
            try:
                results.append(embedder.embed(job.crops) if len(job.faces) else np.zeros((0, embedder.embedding_size)))
            except Exception as error:  # this job's outcome
                results.append(error)
        return results
    bounds = np.cumsum([0, *counts])
    return [vectors[bounds[i] : bounds[i + 1]] for i in range(len(jobs))]


def _store(
    job: EmbedJob,
    photos: PhotoRepository,
    faces: FaceRepository,
    collections: CollectionRepository,
    embedder: FaceEmbedder,
    accountability: Accountability | None,
    retention_days: int,
) -> PhotoRecord:
    """Store the embedded faces; the largest face of an enrolment photo joins its collection."""
    photo, enrolment, vectors = job.photo, job.enrolment, job.vectors
    assert vectors is not None
    # Faces are sorted largest first; only the person the upload names is enrolled, never bystanders.
    records = store_faces(
        vectors,
        photo.photo_id,
        job.faces,
        job.request["face_ids"],
        image_size=job.image_size,
        enrolment=enrolment,
        enrol_count=1,
        model_version=embedder.version,
        face_repository=faces,
        collections=collections,
        # A photo that enrols nobody and its faces go together (the detect stage set the photo's date).
        expires_at=photo.expires_at or expiry(retention_days),
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
