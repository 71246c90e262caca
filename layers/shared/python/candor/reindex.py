"""Re-index a collection with the face model this stack runs, from the photos its faces were enrolled from.

A collection keeps the face model it was created with (its FaceModelVersion): the vectors of two models are
never compared, so a collection of an older model is refused by searches and enrolments until it is
re-indexed. Re-indexing walks the collection's faces in face-id order, a page per call (a call stays well
inside a function's timeout; the caller passes NextToken on), and gives each face still on the old model a
new vector from its stored photo: the face is found again in the photo by its box, aligned and embedded.
Face ids, people, users and shards stay as they were. When a pass ends with every face on the new model,
the collection switches to it and its old index snapshots are dropped. A face whose photo is not stored
(IndexFaces with image bytes) or no longer readable is reported; the switch then waits until those faces
are enrolled again or deleted, or the caller asks for them to be dropped (audited as a deletion).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from candor.core.enrolment import validate_collection_id
from candor.core.errors import CandorError, InvalidParameterError, ResourceNotFoundError
from candor.core.faces import BoundingBox, DetectedFace, FaceRecord
from candor.core.settings import MAX_FACES, MAX_OBJECT_IMAGE_BYTES
from candor.ports import CollectionRepository, FaceDetector, FaceEmbedder, FaceRepository, ImageStore, PhotoRepository
from candor.vision.detector import box_iou
from candor.vision.images import decode_image

# Faces re-embedded per call: about 100 photos' decode, detect and embed, a few seconds on one vCPU.
REINDEX_PAGE = 100
# A face is found again in its photo when a detection overlaps its stored box this much.
MIN_REFOUND_IOU = 0.5


@dataclass
class Unreindexable:
    face_id: str
    external_image_id: str | None
    reason: str


@dataclass
class ReindexProgress:
    collection_id: str
    face_model_version: str  # the collection's, after this call
    target_model_version: str
    reindexed: int = 0
    remaining: int = 0  # faces still on another model, after this call
    next_token: str | None = None
    unreindexable: list[Unreindexable] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.face_model_version == self.target_model_version


def reindex_collection(
    collection_id: str,
    *,
    collections: CollectionRepository,
    faces: FaceRepository,
    photos: PhotoRepository,
    images: ImageStore,
    detector: FaceDetector,
    embedder: FaceEmbedder,
    min_confidence: float,
    next_token: str | None = None,
    page_size: int = REINDEX_PAGE,
    drop_unreindexable: bool = False,
) -> ReindexProgress:
    """One page of the re-index (see the module's docstring); the last page switches the collection."""
    collection = collections.get(validate_collection_id(collection_id))
    if collection is None:
        raise ResourceNotFoundError(f"collection {collection_id!r} does not exist")
    if not 1 <= page_size <= 1000:
        raise InvalidParameterError("MaxFaces must be from 1 to 1000")
    if collection.index_engine != "in-function":
        # An S3 Vectors index holds one model's vectors of one dimension: re-index in the function.
        raise InvalidParameterError(
            f"collection {collection_id!r} is on {collection.index_engine}: move it into the function first "
            f"(candor collections migrate {collection_id} --engine in-function), re-index, then move it back"
        )
    target = embedder.version
    progress = ReindexProgress(collection_id, collection.face_model_version, target)
    if collection.face_model_version == target:
        return progress
    stale = sorted(
        (face for face in faces.list_collection(collection_id) if face.model_version != target),
        key=lambda face: face.face_id,
    )
    page = [face for face in stale if next_token is None or face.face_id > next_token][:page_size]
    updated = _reembed(page, photos, images, detector, embedder, min_confidence, progress.unreindexable)
    faces.save_all(updated)
    progress.reindexed = len(updated)
    if page and page[-1].face_id != stale[-1].face_id:
        progress.next_token = page[-1].face_id
        progress.remaining = len(stale) - len(updated)
        return progress
    # The pass is over: switch when no face is left on the old model (or those left are dropped).
    left = [face for face in faces.list_collection(collection_id) if face.model_version != target]
    if left and drop_unreindexable:
        faces.delete_all([face.face_id for face in left])
        progress.dropped = [face.face_id for face in left]
        left = []
    progress.remaining = len(left)
    if not left:
        collections.set_model_version(collection_id, target)
        progress.face_model_version = target
    return progress


def _reembed(
    page: Sequence[FaceRecord],
    photos: PhotoRepository,
    images: ImageStore,
    detector: FaceDetector,
    embedder: FaceEmbedder,
    min_confidence: float,
    unreindexable: list[Unreindexable],
) -> list[FaceRecord]:
    by_photo: dict[str, list[FaceRecord]] = {}
    for face in page:
        by_photo.setdefault(face.photo_id, []).append(face)
    updated: list[FaceRecord] = []
    for photo_id, group in by_photo.items():
        photo = photos.get(photo_id)
        if photo is None or not photo.bucket:
            reason = "its photo is not stored (indexed from image bytes): index the person again, or delete the face"
            unreindexable += [Unreindexable(face.face_id, face.external_image_id, reason) for face in group]
            continue
        try:
            stored = images.get(photo.bucket, photo.key, max_bytes=MAX_OBJECT_IMAGE_BYTES)
            image = decode_image(stored.data, MAX_OBJECT_IMAGE_BYTES)
        except CandorError as error:
            reason = f"its photo s3://{photo.bucket}/{photo.key} cannot be read: {error.message}"
            unreindexable += [Unreindexable(face.face_id, face.external_image_id, reason) for face in group]
            continue
        found = detector.detect(image.pixels, max_faces=MAX_FACES, min_confidence=min_confidence)
        for face in group:
            refound = _refind(face.bounding_box, [image.to_original(f) for f in found])
            if refound is None:
                reason = "the face is no longer found in its photo"
                unreindexable.append(Unreindexable(face.face_id, face.external_image_id, reason))
                continue
            vector = embedder.embed_faces(image.pixels, [found[refound]])[0]
            updated.append(
                replace(face, embedding=np.asarray(vector, dtype=np.float32), model_version=embedder.version)
            )
    return updated


def _refind(box: BoundingBox, found: Sequence[DetectedFace]) -> int | None:
    """The detection that is the stored face: the best overlap with its box, if it overlaps enough."""
    if not found:
        return None
    corners = np.array([[f.bounding_box.left, f.bounding_box.top, f.bounding_box.left + f.bounding_box.width,
                         f.bounding_box.top + f.bounding_box.height] for f in found])  # fmt: skip
    overlaps = box_iou(np.array([box.left, box.top, box.left + box.width, box.top + box.height]), corners)
    best = int(np.argmax(overlaps))
    return best if overlaps[best] >= MIN_REFOUND_IOU else None
