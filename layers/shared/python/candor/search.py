"""Search by image: who are the people in this photo, among the faces enrolled in a collection?"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from candor.accountability.policy import Caller
from candor.accountability.rules import Accountability, Returned, SearchAuthorization
from candor.core.enrolment import validate_collection_id
from candor.core.errors import InvalidParameterError, NoFaceError, ResourceNotFoundError
from candor.core.faces import DetectedFace, Match
from candor.core.settings import EMBEDDER_VERSION, IN_FUNCTION_MAX_FACES, MAX_FACES, MAX_REQUEST_IMAGE_BYTES
from candor.core.similarity import cosine_from_similarity, similarity_from_cosine
from candor.index.engines import IN_FUNCTION
from candor.index.s3vectors import index_name
from candor.index.sync import CollectionFaces, IndexSync, WarmCollection
from candor.index.vectors import VectorIndex
from candor.ports import Collection, CollectionRepository, FaceDetector, FaceEmbedder, FaceRepository
from candor.vision.images import DecodedImage, decode_image
from candor.vision.quality import QualityFilter, assess_face, quality_reasons

logger = logging.getLogger(__name__)


@dataclass
class FaceSearchResult:
    face: DetectedFace  # in pixels of the upright image
    matches: list[Match] = field(default_factory=list)


@dataclass
class ImageSearchResult:
    image_width: int
    image_height: int
    faces: list[FaceSearchResult]


class CollectionIndexes:
    """Warm indexes, one per collection, brought up to date only when the collection's change number moved
    (from its snapshot on a cold start, then by its change log: candor/index/sync.py).

    Only collections of the face model this function embeds with (`model_version`) are searched: the vectors
    of two models are never compared. Another model's collection is refused until it is re-indexed."""

    def __init__(
        self,
        faces: FaceRepository,
        collections: CollectionRepository,
        sync: IndexSync | None = None,
        model_version: str = EMBEDDER_VERSION,
    ) -> None:
        self._faces = faces
        self._collections = collections
        self.model_version = model_version
        self._warm: dict[str, WarmCollection] = {}
        self._lock = threading.Lock()
        self._sync = sync or IndexSync()  # without a snapshot store: built from the table on a cold start

    def get(self, collection_id: str) -> tuple[Collection, VectorIndex, CollectionFaces]:
        collection = self._collections.get(validate_collection_id(collection_id))
        if collection is None:
            raise ResourceNotFoundError(f"collection {collection_id!r} does not exist")
        self.require_model(collection)
        with self._lock:
            warm = self._warm.get(collection_id)
            if (
                warm is None
                or warm.change_seq != collection.change_seq
                or warm.created_at != collection.created_at
                or not self._sync.engines.suits(warm.index, collection)  # migrated to another engine
            ):
                # The warm index is updated in place, never rebuilt: only the faces that changed are applied.
                warm = self._sync.load(collection, warm, self._faces, self._collections, self._lock)
                self._warm[collection_id] = warm
                if collection.index_engine == IN_FUNCTION and len(warm.index) > IN_FUNCTION_MAX_FACES:
                    logger.warning(
                        "collection %s has %d faces, past the in-function engine's %d: move it to S3 Vectors "
                        "(candor migrate %s --engine s3vectors)",
                        collection_id,
                        len(warm.index),
                        IN_FUNCTION_MAX_FACES,
                        collection_id,
                    )
        return collection, warm.index, warm.faces

    def require_model(self, collection: Collection) -> None:
        collection.require_face_model(self.model_version)

    def purge(self, collection_id: str) -> None:
        """After an erasure (logged): the change applied (on S3 Vectors, the erased vectors deleted from the
        collection's vector index) and the collection's snapshots, which hold the erased vectors (or, on S3
        Vectors, their ids), replaced by snapshots without them, so no cold start has to rebuild from the
        table. A snapshot that cannot be replaced is deleted, and so are all of a collection of another face
        model (this function cannot load them; a re-index rebuilds them)."""
        collection = self._collections.get(collection_id)
        if collection is not None and collection.face_model_version != self.model_version:
            self.forget(collection_id)
            return
        self.get(collection_id)  # applies the erasure's change
        with self._lock:
            warm = self._warm[collection_id]
            self._sync.republish(collection_id, warm)

    def forget(self, collection_id: str) -> None:
        """Drop a deleted collection's warm index, its snapshots and its vector index on S3 Vectors."""
        collection = self._collections.get(collection_id)
        with self._lock:
            self._warm.pop(collection_id, None)
        self._sync.forget(collection_id)
        store = self._sync.engines.vector_store
        if collection is not None and store is not None:
            store.delete_index(index_name(collection))


def search_image(
    image_bytes: bytes,
    collection_id: str,
    *,
    detector: FaceDetector,
    embedder: FaceEmbedder,
    indexes: CollectionIndexes,
    face_match_threshold: float,
    max_matches: int,
    min_confidence: float,
    largest_face_only: bool = False,
    quality_filter: QualityFilter = QualityFilter.NONE,
    before_matching: Callable[[int], None] | None = None,
) -> ImageSearchResult:
    """Every face in the photo (or only the largest) with its enrolled matches at or above the threshold.
    Faces below `quality_filter`'s bar are not searched (Rekognition's QualityFilter). `before_matching`
    hears how many faces are about to be searched, before any is (it may refuse by raising: the quota)."""
    if not 0.0 <= face_match_threshold <= 100.0:
        raise InvalidParameterError("FaceMatchThreshold must be between 0 and 100")
    if max_matches < 1:
        raise InvalidParameterError("MaxFaces must be at least 1")
    _collection, index, records = indexes.get(collection_id)
    image = decode_image(image_bytes, MAX_REQUEST_IMAGE_BYTES)
    found = detector.detect(image.pixels, max_faces=MAX_FACES, min_confidence=min_confidence)
    if not found:
        raise NoFaceError("no face found in the search photo")
    if quality_filter is not QualityFilter.NONE:
        found = [
            face for face in found if not quality_reasons(assess_face(image.pixels, face, image.scale), quality_filter)
        ]
        if not found:
            raise InvalidParameterError(f"no face in the search photo passes the quality filter {quality_filter}")
    if largest_face_only:
        found = found[:1]
    if before_matching is not None:
        before_matching(len(found))
    vectors = embedder.embed_faces(image.pixels, found)
    matched = match_faces(index, records, vectors, face_match_threshold, max_matches)
    results = [FaceSearchResult(image.to_original(face), matches) for face, matches in zip(found, matched, strict=True)]
    return _result(image, results)


def match_faces(
    index: VectorIndex, records: CollectionFaces, vectors: np.ndarray, face_match_threshold: float, max_matches: int
) -> list[list[Match]]:
    """Each embedding's enrolled matches at or above the threshold, best first (of faces still stored)."""
    neighbours = index.search(vectors, max_matches, cosine_from_similarity(face_match_threshold))
    alive = records.existing(hit.face_id for hits in neighbours for hit in hits)
    matched = []
    for hits in neighbours:
        matches = [
            Match(
                face_id=hit.face_id,
                external_image_id=entry.external_image_id,
                similarity=round(float(similarity_from_cosine(hit.cosine)), 4),
                photo_id=entry.photo_id,
            )
            for hit in hits
            if hit.face_id in alive and (entry := records.get(hit.face_id)) is not None
        ]
        # A rounding at the cut-off must never let a match below the threshold through.
        matched.append([match for match in matches if match.similarity >= face_match_threshold])
    return matched


def _result(image: DecodedImage, faces: list[FaceSearchResult]) -> ImageSearchResult:
    return ImageSearchResult(image.width, image.height, faces)


def authorize_collection_search(
    accountability: Accountability,
    indexes: CollectionIndexes,
    collection_id: str,
    caller: Caller,
    operation: str,
    threshold: float | None,
    identifications: int,
) -> SearchAuthorization:
    """A search of a whole collection (a video job's, a stream processor's) past the collection's rules now,
    its false-match risk taken against every face the collection holds."""
    collection, index, _ = indexes.get(collection_id)
    return accountability.authorize_search(
        collection.collection_id,
        collection.policy,
        caller,
        operation,
        threshold,
        faces=len(index),
        identifications=identifications,
    )


def returned_per_person(best: dict[int, dict[str, float]]) -> list[list[Returned]]:
    """What the audit keeps of a tracked search: per person (by index), each stored face matched with its best
    similarity."""
    return [
        [Returned(face_id, similarity) for face_id, similarity in sorted(faces.items())]
        for _, faces in sorted(best.items())
    ]
