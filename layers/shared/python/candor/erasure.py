"""Erasure: every trace of a person in a collection, gone, then proved gone.

A person is named by the ExternalImageId they were enrolled under or by their Rekognition user id. Erased:
their face records with the embeddings, their user, their enrolment photos (the S3 object, the photo record
and every other face detected in it), their vectors in the collection's S3 Vectors index when it is on that
engine (deleted before the call returns), and the collection's index snapshots, which hold the vectors: each
is replaced by a snapshot of the index without them, or deleted. Candor keeps no crops. Then the collection is
searched with the largest face of one of their photos: the proof is that no face at all comes back (a face
still found is named, whoever it is enrolled as, so a second enrolment under another name cannot hide). The
audit log keeps that an erasure happened (a hash of the person's id, counts, the proof's outcome), never the
biometric data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from candor.collection_service import CollectionStore
from candor.core.errors import CandorError, ResourceNotFoundError
from candor.core.faces import Match
from candor.ports import ImageStore, IndexChange, PhotoRepository


@dataclass
class ErasureProof:
    """The search run after the erasure, with one of the person's photos."""

    searched: bool
    faces_searched: int = 0
    # Faces the person's photo still matches, whatever name they carry: must be empty.
    remaining_matches: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def erased(self) -> bool:
        return self.searched and not self.remaining_matches


@dataclass
class ErasureResult:
    faces_removed: int
    photos_removed: int
    user_removed: bool
    proof: ErasureProof
    # Matches of the erased faces removed from stored video job results.
    video_matches_removed: int = 0


ProofSearch = Callable[[bytes], list[list[Match]]]


def erase_person(
    store: CollectionStore,
    photos: PhotoRepository,
    images: ImageStore,
    collection_id: str,
    person: str,
    *,
    search: ProofSearch,
    probe: bytes | None = None,
    user_only: bool = False,
    erase_video_matches: Callable[[set[str]], int] | None = None,
) -> ErasureResult:
    """Erases `person` from the collection; `probe` (or else one of their enrolment photos) proves it.
    `user_only`: `person` is a UserId only (DeleteUser), never another face's ExternalImageId."""
    records = store.records(collection_id)
    targets = [
        face
        for face in records.values()
        if face.user_id == person or (not user_only and face.external_image_id == person)
    ]
    user = store.users.get(collection_id, person)
    if not targets and user is None:
        raise ResourceNotFoundError(f"nobody named {person!r} (person or user id) is enrolled in {collection_id!r}")
    erased_ids = {face.face_id for face in targets}
    removed_photos = 0
    for photo_id in dict.fromkeys(face.photo_id for face in targets):
        photo = photos.get(photo_id)
        if photo is None:
            continue  # IndexFaces with image bytes: Candor never had the photo
        if probe is None:
            probe = _read(images, photo.bucket, photo.key)
        images.delete(photo.bucket, photo.key)
        # The photo's other faces go with it: nothing of the photo survives it.
        erased_ids.update(photo.face_ids)
        photos.delete(photo_id)
        removed_photos += 1
    store.faces.delete_all(sorted(erased_ids))
    video_matches = erase_video_matches(erased_ids) if erase_video_matches is not None else 0
    if user is not None:
        store.users.delete(collection_id, person)
    store.collections.mark_changed(collection_id, IndexChange(removed=tuple(sorted(erased_ids))))
    # The change applied now (on S3 Vectors: the vectors deleted), and the snapshots replaced without them.
    store.indexes.purge(collection_id)
    return ErasureResult(
        faces_removed=len(erased_ids),
        photos_removed=removed_photos,
        user_removed=user is not None,
        proof=_prove(search, probe),
        video_matches_removed=video_matches,
    )


def _read(images: ImageStore, bucket: str, key: str) -> bytes | None:
    try:
        return images.get(bucket, key).data
    except ResourceNotFoundError:
        return None


def _prove(search: ProofSearch, probe: bytes | None) -> ErasureProof:
    if probe is None:
        return ErasureProof(False, note="no photo of the person to search with: give one to prove the erasure")
    try:
        found = search(probe)
    except CandorError as error:
        return ErasureProof(False, note=f"the proof search failed: {error.message}")
    remaining = [match.face_id for matches in found for match in matches]
    return ErasureProof(True, faces_searched=len(found), remaining_matches=remaining)
