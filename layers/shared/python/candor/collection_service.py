"""What happens to a collection's faces and users besides indexing: list, delete, search by face id, and
Rekognition's users (one person's faces, searched as one).

A face belongs to at most one user (its record carries the user id); users live in their own repository,
keyed by collection. Every change that alters what a search can return marks the collection changed, so
warm indexes reload.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from candor.core.enrolment import validate_collection_id
from candor.core.errors import (
    InvalidPaginationTokenError,
    InvalidParameterError,
    ResourceNotFoundError,
)
from candor.core.faces import FaceRecord, Match
from candor.core.similarity import cosine_from_similarity, similarity_from_cosine
from candor.index.sync import CollectionFaces, FaceEntry
from candor.index.vectors import VectorIndex
from candor.ports import CollectionRepository, FaceRepository, IndexChange, Page, User, UserRepository
from candor.search import CollectionIndexes

# Rekognition's patterns for FaceId and UserId.
FACE_ID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
USER_ID_PATTERN = re.compile(r"^[a-zA-Z0-9_.\-:]{1,128}$")
# Rekognition's default similarity for a face to join a user that already has faces.
DEFAULT_USER_MATCH_THRESHOLD = 75.0
# At most this many neighbours are read per query when grouping faces into users.
MAX_NEIGHBOURS = 4096


def validate_face_id(face_id: object) -> str:
    if not isinstance(face_id, str) or not FACE_ID_PATTERN.match(face_id):
        raise InvalidParameterError(f"face id {face_id!r} is not a FaceId (a lowercase UUID)")
    return face_id


def validate_user_id(user_id: object) -> str:
    if not isinstance(user_id, str) or not USER_ID_PATTERN.match(user_id):
        raise InvalidParameterError(f"user id {user_id!r} must be 1-128 characters of letters, digits, '_.-:'")
    return user_id


@dataclass
class CollectionStore:
    """The repositories a collection's faces and users live in, with the warm indexes that search them."""

    collections: CollectionRepository
    faces: FaceRepository
    users: UserRepository
    indexes: CollectionIndexes

    def records(self, collection_id: str) -> CollectionFaces:
        """The collection's faces by id (ids, names, photos, users; the vectors are in its index); raises
        ResourceNotFoundError for a missing collection."""
        return self.indexes.get(collection_id)[2]


# --- collections and faces --------------------------------------------------------------------------------


def delete_collection(store: CollectionStore, collection_id: str) -> None:
    """The collection, its faces and its users. The collection goes last, so a retry finishes the work."""
    if store.collections.get(validate_collection_id(collection_id)) is None:
        raise ResourceNotFoundError(f"collection {collection_id!r} does not exist")
    store.faces.delete_all([face.face_id for face in store.faces.list_collection(collection_id)])
    while True:
        page = store.users.list_page(collection_id, 500)
        for user in page.items:
            store.users.delete(collection_id, user.user_id)
        if page.next_token is None:
            break
    store.indexes.forget(collection_id)
    store.collections.delete(collection_id)


def list_faces(
    store: CollectionStore,
    collection_id: str,
    limit: int,
    next_token: str | None = None,
    *,
    user_id: str | None = None,
    face_ids: Sequence[str] | None = None,
) -> Page[FaceRecord]:
    """A page of the collection's faces in face id order; NextToken is the last face id of the page."""
    if next_token is not None and not FACE_ID_PATTERN.match(next_token):
        raise InvalidPaginationTokenError(f"{next_token!r} is not a NextToken this listing gave")
    limit = max(limit, 1)
    if user_id is None and face_ids is None:
        if store.collections.get(validate_collection_id(collection_id)) is None:
            raise ResourceNotFoundError(f"collection {collection_id!r} does not exist")
        return store.faces.list_collection_page(collection_id, limit, next_token)
    # A filtered listing reads the (warm) collection: filters are short lists or one user's faces.
    records = store.records(collection_id)
    wanted = {validate_face_id(face_id) for face_id in face_ids} if face_ids is not None else None
    if user_id is not None:
        validate_user_id(user_id)
    chosen = sorted(
        (
            face.face_id
            for face in records.values()
            if (wanted is None or face.face_id in wanted)
            and (user_id is None or face.user_id == user_id)
            and (next_token is None or face.face_id > next_token)
        ),
    )
    # The page's full records (boxes, confidence, sizes) from the table; a face deleted meanwhile drops out.
    page = records.records(chosen[:limit])
    return Page(page, chosen[limit - 1] if len(chosen) > limit else None)


@dataclass
class FaceDeletion:
    deleted: list[str] = field(default_factory=list)
    # face id -> (user id it belongs to, reasons)
    refused: dict[str, tuple[str | None, list[str]]] = field(default_factory=dict)


def delete_faces(store: CollectionStore, collection_id: str, face_ids: Sequence[str]) -> FaceDeletion:
    """Faces not in the collection, or still associated with a user, are refused with Rekognition's reasons."""
    if not face_ids:
        raise InvalidParameterError("FaceIds must name at least one face")
    records = store.records(collection_id)
    result = FaceDeletion()
    for face_id in dict.fromkeys(validate_face_id(face_id) for face_id in face_ids):
        face = records.get(face_id)
        if face is None:
            result.refused[face_id] = (None, ["FACE_NOT_FOUND"])
        elif face.user_id is not None:
            result.refused[face_id] = (face.user_id, ["ASSOCIATED_TO_AN_EXISTING_USER"])
        else:
            result.deleted.append(face_id)
    if result.deleted:
        store.faces.delete_all(result.deleted)
        store.collections.mark_changed(collection_id, IndexChange(removed=tuple(result.deleted)))
        # Applied before the call returns: on S3 Vectors this deletes the vectors from the collection's index.
        store.indexes.get(collection_id)
    return result


def search_by_face_id(
    store: CollectionStore, collection_id: str, face_id: str, *, threshold: float, max_faces: int
) -> list[Match]:
    """The collection's other faces most similar to one of its faces, at or above the threshold."""
    _check_threshold(threshold)
    if max_faces < 1:
        raise InvalidParameterError("MaxFaces must be at least 1")
    _, index, records = store.indexes.get(collection_id)
    searched = records.get(validate_face_id(face_id))
    if searched is None:
        raise InvalidParameterError(f"face {face_id!r} is not in collection {collection_id!r}")
    (hits,) = index.search(index.vectors([searched.face_id]), max_faces + 1, cosine_from_similarity(threshold))
    matches = [
        _match(entry, hit.cosine)
        for hit in hits
        if hit.face_id != face_id and (entry := records.get(hit.face_id)) is not None
    ]
    matches = [match for match in matches if match.similarity >= threshold][:max_faces]
    # The searched face and its matches, checked against the table in one read (see CollectionFaces).
    alive = records.existing([face_id, *(match.face_id for match in matches)])
    if face_id not in alive:
        raise InvalidParameterError(f"face {face_id!r} is not in collection {collection_id!r}")
    return [match for match in matches if match.face_id in alive]


# --- users --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserSummary:
    user_id: str
    status: str  # Rekognition's UserStatus: CREATED until a face is associated, then ACTIVE


def count_users(store: CollectionStore, collection_id: str) -> int:
    count, token = 0, None
    while True:
        page = store.users.list_page(collection_id, 500, token)
        count += len(page.items)
        if page.next_token is None:
            return count
        token = page.next_token


def create_user(store: CollectionStore, collection_id: str, user_id: str) -> User:
    if store.collections.get(validate_collection_id(collection_id)) is None:
        raise ResourceNotFoundError(f"collection {collection_id!r} does not exist")
    user = User(collection_id, validate_user_id(user_id), datetime.now(UTC).isoformat())
    store.users.create(user)
    return user


def delete_user(store: CollectionStore, collection_id: str, user_id: str) -> None:
    """The user goes; its faces stay in the collection, associated with nobody."""
    require_user(store, collection_id, user_id)
    faces = store.records(collection_id).of_user(user_id)
    store.faces.set_user(faces, None)
    store.users.delete(collection_id, user_id)
    store.collections.mark_changed(collection_id, IndexChange(users=tuple((face_id, None) for face_id in faces)))


def list_users(store: CollectionStore, collection_id: str, limit: int, next_token: str | None) -> Page[UserSummary]:
    if next_token is not None and not USER_ID_PATTERN.match(next_token):
        raise InvalidPaginationTokenError(f"{next_token!r} is not a NextToken this listing gave")
    records = store.records(collection_id)
    active = {face.user_id for face in records.values() if face.user_id}
    page = store.users.list_page(collection_id, max(limit, 1), next_token)
    summaries = [UserSummary(user.user_id, "ACTIVE" if user.user_id in active else "CREATED") for user in page.items]
    return Page(summaries, page.next_token)


@dataclass
class Association:
    associated: list[str] = field(default_factory=list)
    # face id -> (user id it belongs to, similarity to the user or None, reasons)
    refused: dict[str, tuple[str | None, float | None, list[str]]] = field(default_factory=dict)
    user_status: str = "CREATED"


def associate_faces(
    store: CollectionStore,
    collection_id: str,
    user_id: str,
    face_ids: Sequence[str],
    threshold: float = DEFAULT_USER_MATCH_THRESHOLD,
) -> Association:
    """A face joins the user when it is in the collection, belongs to no other user, and (once the user has
    a face) is at least `threshold` similar to one of the user's faces: a user is one person."""
    _check_threshold(threshold)
    _check_face_list(face_ids)
    require_user(store, collection_id, user_id)
    _, index, records = store.indexes.get(collection_id)
    own = records.of_user(user_id)
    # A face is checked against the user's faces and those accepted before it in this call: a first call
    # naming two people's faces takes the first and refuses the other.
    members = list(index.vectors(own)) if own else []
    asked = list(dict.fromkeys(validate_face_id(face_id) for face_id in face_ids))
    # The vectors of the faces that may join, in one read.
    candidates = [face_id for face_id in asked if face_id in records and records[face_id].user_id is None]
    vectors = dict(zip(candidates, index.vectors(candidates), strict=True)) if candidates else {}
    result = Association()
    for face_id in asked:
        face = records.get(face_id)
        if face is None:
            result.refused[face_id] = (None, None, ["FACE_NOT_FOUND"])
            continue
        if face.user_id == user_id:
            result.associated.append(face_id)  # already there: associating again is not an error
            continue
        if face.user_id is not None:
            result.refused[face_id] = (face.user_id, None, ["ASSOCIATED_TO_A_DIFFERENT_USER"])
            continue
        vector = vectors.get(face_id)
        if vector is None:  # changed under this call: removed from the collection or given a user meanwhile
            result.refused[face_id] = (None, None, ["FACE_NOT_FOUND"])
            continue
        if members:
            cosine = float(np.max(np.stack(members) @ vector))
            similarity = round(float(similarity_from_cosine(cosine)), 4)
            if similarity < threshold:
                result.refused[face_id] = (None, similarity, ["LOW_MATCH_CONFIDENCE"])
                continue
        result.associated.append(face_id)
        members.append(vector)
    new = [face_id for face_id in result.associated if records[face_id].user_id != user_id]
    if new:
        store.faces.set_user(new, user_id)
        store.collections.mark_changed(collection_id, IndexChange(users=tuple((face_id, user_id) for face_id in new)))
    result.user_status = "ACTIVE" if own or result.associated else "CREATED"
    return result


@dataclass
class Disassociation:
    disassociated: list[str] = field(default_factory=list)
    refused: dict[str, tuple[str | None, list[str]]] = field(default_factory=dict)
    user_status: str = "CREATED"


def disassociate_faces(
    store: CollectionStore, collection_id: str, user_id: str, face_ids: Sequence[str]
) -> Disassociation:
    _check_face_list(face_ids)
    require_user(store, collection_id, user_id)
    records = store.records(collection_id)
    result = Disassociation()
    for face_id in dict.fromkeys(validate_face_id(face_id) for face_id in face_ids):
        face = records.get(face_id)
        if face is None:
            result.refused[face_id] = (None, ["FACE_NOT_FOUND"])
        elif face.user_id != user_id:
            result.refused[face_id] = (face.user_id, ["ASSOCIATED_TO_A_DIFFERENT_USER"])
        else:
            result.disassociated.append(face_id)
    if result.disassociated:
        store.faces.set_user(result.disassociated, None)
        change = IndexChange(users=tuple((face_id, None) for face_id in result.disassociated))
        store.collections.mark_changed(collection_id, change)
    remaining = {f.face_id for f in records.values() if f.user_id == user_id} - set(result.disassociated)
    result.user_status = "ACTIVE" if remaining else "CREATED"
    return result


@dataclass(frozen=True)
class UserMatch:
    user_id: str
    similarity: float
    status: str = "ACTIVE"


def search_users(
    store: CollectionStore,
    collection_id: str,
    *,
    user_id: str | None = None,
    face_id: str | None = None,
    threshold: float,
    max_users: int,
) -> list[UserMatch]:
    """Users similar to one of the collection's users (never itself) or to one of its faces."""
    if (user_id is None) == (face_id is None):
        raise InvalidParameterError("give exactly one of UserId or FaceId")
    _, index, records = store.indexes.get(collection_id)
    if user_id is not None:
        require_user(store, collection_id, user_id)
        own = records.of_user(user_id)
        if not own:
            return []
        queries = index.vectors(own)
    else:
        face = records.get(validate_face_id(face_id))
        if face is None:
            raise InvalidParameterError(f"face {face_id!r} is not in collection {collection_id!r}")
        queries = index.vectors([face.face_id])
    return user_matches(index, records, queries, threshold, max_users, exclude=user_id)


def user_matches(
    index: VectorIndex,
    records: CollectionFaces,
    queries: np.ndarray,
    threshold: float,
    max_users: int,
    exclude: str | None = None,
) -> list[UserMatch]:
    """Each user scored by its face most similar to any query face; best first, at or above the threshold."""
    _check_threshold(threshold)
    if not 1 <= max_users <= 500:
        raise InvalidParameterError("MaxUsers must be between 1 and 500")
    candidates: dict[str, list[tuple[float, str]]] = {}  # owner -> (cosine, face id), best first
    k = min(len(index), MAX_NEIGHBOURS)
    for hits in index.search(queries, k, cosine_from_similarity(threshold)):
        for hit in hits:
            entry = records.get(hit.face_id)
            owner = entry.user_id if entry is not None else None
            if owner is not None and owner != exclude:
                candidates.setdefault(owner, []).append((hit.cosine, hit.face_id))
    for faces in candidates.values():
        faces.sort(key=lambda candidate: (-candidate[0], candidate[1]))
    confirmed: set[str] = set()
    while True:
        best = {owner: faces[0] for owner, faces in candidates.items() if faces}
        matches = [UserMatch(owner, round(float(similarity_from_cosine(best[owner][0])), 4)) for owner in best]
        matches = [match for match in matches if match.similarity >= threshold]
        matches = sorted(matches, key=lambda match: (-match.similarity, match.user_id))[:max_users]
        # Only the face that scores each returned user is checked against the table (see CollectionFaces);
        # a user whose best face is gone is scored by its next one, checked in turn.
        deciding = {best[match.user_id][1] for match in matches} - confirmed
        if not deciding:
            return matches
        alive = records.existing(deciding)
        confirmed |= alive
        gone = deciding - alive
        for owner, faces in candidates.items():
            candidates[owner] = [candidate for candidate in faces if candidate[1] not in gone]


def _match(face: FaceEntry, cosine: float) -> Match:
    return Match(face.face_id, face.external_image_id, round(float(similarity_from_cosine(cosine)), 4), face.photo_id)


def require_user(store: CollectionStore, collection_id: str, user_id: str) -> User:
    if store.collections.get(validate_collection_id(collection_id)) is None:
        raise ResourceNotFoundError(f"collection {collection_id!r} does not exist")
    user = store.users.get(collection_id, validate_user_id(user_id))
    if user is None:
        raise ResourceNotFoundError(f"user {user_id!r} does not exist in collection {collection_id!r}")
    return user


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 100.0:
        raise InvalidParameterError("a similarity threshold must be between 0 and 100")


def _check_face_list(face_ids: Sequence[str]) -> None:
    if not 1 <= len(face_ids) <= 100:
        raise InvalidParameterError("FaceIds must name 1 to 100 faces")
