"""Amazon Rekognition's JSON protocol for the face operations, translated onto Candor's service functions.

Requests arrive as `POST /` with `X-Amz-Target: RekognitionService.<Operation>` (or `CandorService.<Operation>`)
and reach an operation here only once they conform to the operation's model (protocol.py): the handlers read
members whose types, ranges, lengths and patterns are already checked, and check only what a model cannot
say. Errors use Rekognition's exception names so boto3 raises the same exceptions it would against AWS.

Every search passes the collection's rules and is audited (candor/accountability/rules.py); the caller states
purpose, case and consent in the X-Candor-* headers, which the handler turns into `FaceApi.caller`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from protocol import UnknownOperationError, operation_model, validate_request
from stream_operations import (
    create_stream_processor,
    delete_stream_processor,
    describe_stream_processor,
    list_stream_processors,
    start_stream_processor,
    stop_stream_processor,
    update_stream_processor,
)
from video_operations import get_face_detection, get_face_search, start_face_detection, start_face_search

from candor import collection_service as service
from candor.accountability.audit import ACCOUNT_CHAIN
from candor.accountability.policy import Caller, CollectionPolicy, cancel_pending, change_policy, parse_policy
from candor.accountability.rules import Accountability, Returned, SearchAuthorization
from candor.collection_service import CollectionStore, UserMatch
from candor.core.enrolment import COLLECTION_ID_PATTERN
from candor.core.errors import (
    AdminOperationError,
    CandorError,
    ImageTooLargeError,
    InvalidPaginationTokenError,
    InvalidParameterError,
    InvalidS3ObjectError,
    NoFaceError,
    QuotaExceededError,
    ResourceNotFoundError,
    ThresholdBelowFloorError,
)
from candor.core.faces import LANDMARK_TYPES, DetectedFace, FaceRecord, Match, PhotoRecord, PhotoStatus
from candor.core.settings import (
    DEFAULT_FACE_MATCH_THRESHOLD,
    EMBEDDER_VERSION,
    MAX_OBJECT_IMAGE_BYTES,
    MAX_REQUEST_IMAGE_BYTES,
    VIDEO_SAMPLE_INTERVAL_MS,
)
from candor.core.similarity import similarity_from_cosine
from candor.erasure import ErasureResult, erase_person
from candor.indexing import assess_faces, index_faces
from candor.live_processors import StreamProcessors
from candor.ports import Collection, CollectionRepository, FaceDetector, FaceEmbedder, ImageStore, PhotoRepository
from candor.reindex import reindex_collection
from candor.search import CollectionIndexes, ImageSearchResult, search_image
from candor.video_jobs import VideoJobs
from candor.vision.images import decode_image
from candor.vision.quality import AssessedFace, QualityFilter, parse_quality_filter, quality_reasons

T = TypeVar("T")
# Rekognition's default page sizes when MaxResults is not given.
DEFAULT_FACE_PAGE = 1000
DEFAULT_USER_PAGE = 100


@dataclass
class FaceApi:
    """The composition of adapters and models the operations run on."""

    images: ImageStore
    collections: CollectionRepository
    indexes: CollectionIndexes
    store: CollectionStore
    detector: FaceDetector
    embedder: FaceEmbedder
    min_confidence: float
    region: str
    account_id: str
    accountability: Accountability
    photos: PhotoRepository
    # Who asks, with the purpose, case and consent they state: set per request by `dispatch`.
    caller: Caller = field(default_factory=lambda: Caller("anonymous"))
    # "search" (SearchFunction) serves all but the policy administration; "admin" (AdminFunction) only that.
    role: str = "search"
    # How long a loosened policy waits before it is in force (template.yaml, PolicyLooseningDelayHours).
    loosening_delay: timedelta = timedelta(hours=24)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # Stored-video jobs (video_operations.py): recorded and queued here, run by VideoFunction.
    videos: VideoJobs | None = None
    video_sample_interval_ms: int = VIDEO_SAMPLE_INTERVAL_MS
    # The buckets Start* may read videos from (the functions' roles can read no other): empty means any.
    video_buckets: tuple[str, ...] = ()
    # Stream processors (stream_operations.py): recorded here, their frames analysed by LiveFunction.
    streams: StreamProcessors | None = None

    def dispatch(self, target: str, request: dict[str, Any], caller: Caller | None = None) -> dict[str, Any]:
        """Runs the operation `target` names on a decoded request body, once it conforms to the operation's model."""
        operation = operation_model(target)
        handler = SERVICES[operation.metadata["targetPrefix"]].get(operation.name)
        if handler is None:  # in the model, not served: labels, text, celebrities, ...
            raise UnknownOperationError(f"{target} is not an operation Candor serves")
        qualified = f"{operation.metadata['targetPrefix']}.{operation.name}"
        if self.role == "search" and qualified in ADMIN_OPERATIONS:
            raise AdminOperationError(
                f"{qualified} changes the rules searches follow: send it to the admin Function URL "
                "(AdminFunctionUrl; locally CANDOR_ADMIN_API) with the policy admin's credentials"
            )
        if self.role == "admin" and qualified not in ADMIN_OPERATIONS | ADMIN_READS:
            raise AdminOperationError(f"the admin Function URL serves policy administration only, not {qualified}")
        return handler(replace(self, caller=caller or self.caller), validate_request(operation, request))

    def image_bytes(self, image: Any) -> bytes:
        """Rekognition's Image: {"Bytes": base64} or {"S3Object": {"Bucket", "Name", "Version"}}."""
        if ("Bytes" in image) == ("S3Object" in image):
            raise InvalidParameterError("Image must have exactly one of Bytes or S3Object")
        if "Bytes" in image:
            try:
                data = base64.b64decode(image["Bytes"], validate=True)
            except (binascii.Error, TypeError) as error:
                raise InvalidParameterError("Image.Bytes is not valid base64") from error
            if len(data) > MAX_REQUEST_IMAGE_BYTES:
                raise ImageTooLargeError(f"Image.Bytes is {len(data)} bytes; the limit is 5 MB")
            return data
        s3_object = image["S3Object"]
        if not s3_object.get("Bucket") or not s3_object.get("Name"):
            raise InvalidParameterError("Image.S3Object needs Bucket and Name")
        try:
            stored = self.images.get(
                s3_object["Bucket"], s3_object["Name"], s3_object.get("Version"), max_bytes=MAX_OBJECT_IMAGE_BYTES
            )
        except ResourceNotFoundError as error:
            raise InvalidS3ObjectError(f"Image.S3Object cannot be read: {error.message}") from error
        return stored.data

    def collection_arn(self, collection_id: str) -> str:
        return f"arn:aws:rekognition:{self.region}:{self.account_id}:collection/{collection_id}"


def create_collection(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    """Rekognition's CreateCollection: the collection declares the purpose `general` only (CandorService's
    CreateCollection takes a Policy)."""
    collection_id = request["CollectionId"]
    policy = parse_policy(request["Policy"]) if "Policy" in request else CollectionPolicy()
    # Its creation time tells it from a deleted collection of the same name: that one's warm index is never reused.
    created_at = datetime.now(UTC).isoformat()
    api.collections.create(Collection(collection_id, created_at, EMBEDDER_VERSION, policy=policy))
    api.accountability.record_collection(collection_id, api.caller, "CreateCollection", policy)
    return {"StatusCode": 200, "CollectionArn": api.collection_arn(collection_id), "FaceModelVersion": EMBEDDER_VERSION}


def put_collection_policy(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    """Tightening is in force at once; a loosening waits `api.loosening_delay` (the tightest of the old and
    the new policy holds meanwhile) and is answered as PendingPolicy."""
    collection = _collection(api, request)
    now = api.clock()
    in_force = replace(collection.policy.in_force(now), pending=None)
    wanted = parse_policy(request["Policy"])
    stored = change_policy(collection.policy, wanted, now, api.loosening_delay, api.caller.identity)
    api.collections.set_policy(collection.collection_id, stored)
    loosens = in_force.loosenings(wanted) if stored.pending is not None else []
    api.accountability.record_collection(collection.collection_id, api.caller, "PutCollectionPolicy", stored, loosens)
    return _policy_response(stored, now)


def cancel_collection_policy_change(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    collection = _collection(api, request)
    now = api.clock()
    stored = cancel_pending(collection.policy, now)
    api.collections.set_policy(collection.collection_id, stored)
    api.accountability.record_collection(collection.collection_id, api.caller, "CancelCollectionPolicyChange", stored)
    return _policy_response(stored, now)


def describe_collection_policy(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    return _policy_response(_collection(api, request).policy, api.clock())


def _policy_response(stored: CollectionPolicy, now: datetime) -> dict[str, Any]:
    """The policy in force now and, while it waits, the pending one with when it takes effect."""
    in_force = stored.in_force(now)
    response: dict[str, Any] = {"Policy": policy_shape(in_force)}
    if in_force is stored and stored.pending is not None:
        response["PendingPolicy"] = {
            "Policy": policy_shape(stored.pending.policy),
            "EffectiveAt": stored.pending.effective_at.timestamp(),
            "RequestedBy": stored.pending.requested_by,
            "Loosens": replace(stored, pending=None).loosenings(stored.pending.policy),
        }
    return response


def policy_shape(policy: CollectionPolicy) -> dict[str, Any]:
    return {
        "Purposes": list(policy.purposes),
        "Identification": policy.identification,
        "MinFaceMatchThreshold": policy.floor,
        "SearchesPerCallerPerMinute": policy.searches_per_caller_per_minute,
        "SearchesPerMinute": policy.searches_per_minute,
        # Only when set: an identification collection without it has DEFAULT_IDENTIFICATION_MAX_RISK.
        **({"MaxFalseMatchRisk": policy.max_false_match_risk} if policy.max_false_match_risk is not None else {}),
    }


def _collection(api: FaceApi, request: dict[str, Any]) -> Collection:
    collection_id = request["CollectionId"]
    collection = api.collections.get(collection_id)
    if collection is None:
        raise ResourceNotFoundError(f"collection {collection_id!r} does not exist")
    return collection


def describe_collection(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    collection = _collection(api, request)
    if collection.face_model_version == api.indexes.model_version:
        _, index, _ = api.indexes.get(collection.collection_id)
        face_count = len(index)
    else:  # waiting for a re-index: this stack cannot load its vectors, but can count its faces
        face_count = sum(1 for _ in api.store.faces.list_collection(collection.collection_id))
    return {
        "FaceCount": face_count,
        "UserCount": service.count_users(api.store, collection.collection_id),
        "FaceModelVersion": collection.face_model_version,
        "CollectionARN": api.collection_arn(collection.collection_id),
        "CreationTimestamp": datetime.fromisoformat(collection.created_at).timestamp(),
    }


def list_collections(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    """Collection ids in order, MaxResults (at most 4096) at a time; NextToken is the last id of the page."""
    limit = request.get("MaxResults", 4096) or 4096
    after = request.get("NextToken")
    if after is not None and not COLLECTION_ID_PATTERN.match(after):
        raise InvalidPaginationTokenError(f"{after!r} is not a NextToken this listing gave")
    ids = [collection_id for collection_id in api.collections.list_ids() if after is None or collection_id > after]
    page = [api.collections.get(collection_id) for collection_id in ids[:limit]]
    response: dict[str, Any] = {
        "CollectionIds": ids[:limit],
        "FaceModelVersions": [c.face_model_version if c else EMBEDDER_VERSION for c in page],
    }
    if len(ids) > limit:
        response["NextToken"] = ids[limit - 1]
    return response


def delete_collection(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    collection_id = request["CollectionId"]
    service.delete_collection(api.store, collection_id)
    api.accountability.record_deletion(collection_id, api.caller, "DeleteCollection")
    return {"StatusCode": 200}


def detect_faces(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    image = decode_image(api.image_bytes(request["Image"]), MAX_OBJECT_IMAGE_BYTES)
    found = assess_faces(image, api.detector, api.min_confidence)
    return {"FaceDetails": [face_detail(face, image.width, image.height) for face in found]}


def index_faces_operation(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    """Rekognition's IndexFaces, with the one addition Candor requires: the consent reference."""
    max_faces = request.get("MaxFaces")
    # A missing collection is refused first: refusals are audited in chains of collections that exist.
    collection = _collection(api, request)
    collection_id = collection.collection_id
    api.indexes.require_model(collection)
    consent = api.accountability.require_consent(collection_id, api.caller, "IndexFaces")
    external_image_id = request.get("ExternalImageId")
    image = request["Image"]
    result = index_faces(
        api.image_bytes(image),
        collection_id,
        external_image_id=external_image_id,
        consent_reference=consent,
        max_faces=max_faces,
        quality_filter=parse_quality_filter(request.get("QualityFilter"), QualityFilter.AUTO),
        detector=api.detector,
        embedder=api.embedder,
        face_repository=api.store.faces,
        collections=api.collections,
        min_confidence=api.min_confidence,
    )
    if result.indexed and "S3Object" in image:
        # Where the faces came from, so that a re-index with another face model can embed them again.
        source = image["S3Object"]
        api.photos.save(
            PhotoRecord(
                result.image_id,
                str(source["Bucket"]),
                str(source["Name"]),
                PhotoStatus.COMPLETE,
                image_width=result.image_width,
                image_height=result.image_height,
                faces=[assessed.face for _, assessed in result.indexed],
                face_ids=[record.face_id for record, _ in result.indexed],
                embedder_version=api.embedder.version,
            )
        )
    if result.indexed:
        api.accountability.record_enrolment(
            collection_id,
            api.caller,
            "IndexFaces",
            face_ids=[record.face_id for record, _ in result.indexed],
            person=external_image_id,
            consent_reference=consent,
        )
    width, height = result.image_width, result.image_height
    return {
        "FaceRecords": [
            {"Face": face_shape(record), "FaceDetail": face_detail(assessed, width, height)}
            for record, assessed in result.indexed
        ],
        "UnindexedFaces": [
            {"Reasons": reasons, "FaceDetail": face_detail(assessed, width, height)}
            for assessed, reasons in result.unindexed
        ],
        "FaceModelVersion": EMBEDDER_VERSION,
    }


def list_faces(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    page = service.list_faces(
        api.store,
        request["CollectionId"],
        request.get("MaxResults", DEFAULT_FACE_PAGE),
        request.get("NextToken"),
        user_id=request.get("UserId"),
        face_ids=request.get("FaceIds"),
    )
    response: dict[str, Any] = {
        "Faces": [face_shape(face) for face in page.items],
        "FaceModelVersion": EMBEDDER_VERSION,
    }
    if page.next_token:
        response["NextToken"] = page.next_token
    return response


def delete_faces(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    collection_id = request["CollectionId"]
    result = service.delete_faces(api.store, collection_id, request["FaceIds"])
    if result.deleted:
        api.accountability.record_deletion(collection_id, api.caller, "DeleteFaces", face_ids=result.deleted)
    return {
        "DeletedFaces": result.deleted,
        "UnsuccessfulFaceDeletions": [
            _without_none({"FaceId": face_id, "UserId": user_id, "Reasons": reasons})
            for face_id, (user_id, reasons) in result.refused.items()
        ],
    }


def search_faces(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    face_id = request["FaceId"]
    max_faces = request.get("MaxFaces", 1)
    collection_id, authorized = _authorize(api, request, "SearchFaces", "FaceMatchThreshold")
    threshold = authorized.threshold
    matches = _audited(
        api,
        collection_id,
        "SearchFaces",
        threshold,
        lambda: service.search_by_face_id(api.store, collection_id, face_id, threshold=threshold, max_faces=max_faces),
        lambda found: [[Returned(m.face_id, m.similarity) for m in found]],
        searched=face_id,
        authorization=authorized,
    )
    return {
        "SearchedFaceId": face_id,
        "FaceMatches": [face_match(m) for m in matches],
        "FaceModelVersion": EMBEDDER_VERSION,
        "FalseMatchRisk": authorized.false_match_risk,
    }


def compare_faces(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    """The largest face of the source image against every face of the target image. No collection is
    searched, so no purpose is bound; the comparison is audited and keeps the default floor (80)."""
    quality_filter = parse_quality_filter(request.get("QualityFilter"), QualityFilter.NONE)
    source_bytes = api.image_bytes(request["SourceImage"])
    target_bytes = api.image_bytes(request["TargetImage"])
    asked = float(request.get("SimilarityThreshold", 0)) if "SimilarityThreshold" in request else None
    threshold = DEFAULT_FACE_MATCH_THRESHOLD if asked is None else asked
    if threshold < DEFAULT_FACE_MATCH_THRESHOLD:
        error = ThresholdBelowFloorError(
            f"a similarity threshold below {DEFAULT_FACE_MATCH_THRESHOLD:g} is refused (asked for {threshold:g})"
        )
        api.accountability.refuse(ACCOUNT_CHAIN, api.caller, "CompareFaces", error, probe=source_bytes)
        raise error
    return _audited(
        api,
        ACCOUNT_CHAIN,
        "CompareFaces",
        threshold,
        lambda: _compare(api, source_bytes, target_bytes, threshold, quality_filter),
        lambda response: [
            [Returned(f"target-face-{n}", match["Similarity"]) for n, match in enumerate(response["FaceMatches"])]
        ],
        probe=source_bytes,
    )


def _compare(
    api: FaceApi, source_bytes: bytes, target_bytes: bytes, threshold: float, quality_filter: QualityFilter
) -> dict[str, Any]:
    source_image = decode_image(source_bytes, MAX_OBJECT_IMAGE_BYTES)
    target_image = decode_image(target_bytes, MAX_OBJECT_IMAGE_BYTES)
    sources = [
        f
        for f in assess_faces(source_image, api.detector, api.min_confidence)
        if not quality_reasons(f, quality_filter)
    ]
    if not sources:
        raise NoFaceError("no face found in the source image")
    source = sources[0]
    targets = [
        f
        for f in assess_faces(target_image, api.detector, api.min_confidence)
        if not quality_reasons(f, quality_filter)
    ]
    source_vector = api.embedder.embed_faces(source_image.pixels, [source.face.scaled(1.0 / source_image.scale)])[0]
    response: dict[str, Any] = {
        "SourceImageFace": {
            "BoundingBox": source.face.bounding_box.as_ratios(source_image.width, source_image.height),
            "Confidence": source.face.confidence * 100,
        },
        "FaceMatches": [],
        "UnmatchedFaces": [],
    }
    if targets:
        vectors = api.embedder.embed_faces(
            target_image.pixels, [t.face.scaled(1.0 / target_image.scale) for t in targets]
        )
        similarities = similarity_from_cosine(vectors @ source_vector)
        for target, similarity in zip(targets, similarities, strict=True):
            compared = compared_face(target, target_image.width, target_image.height)
            if float(similarity) >= threshold:
                response["FaceMatches"].append({"Similarity": round(float(similarity), 4), "Face": compared})
            else:
                response["UnmatchedFaces"].append(compared)
        response["FaceMatches"].sort(key=lambda match: -match["Similarity"])
    return response


# --- users --------------------------------------------------------------------------------------------------


def create_user(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    service.create_user(api.store, request["CollectionId"], request["UserId"])
    return {}


def delete_user(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    """Candor erases the user: their faces, photos and index entries go too, not only the user (see
    ErasePerson); the proof search runs with one of their enrolment photos when Candor has one."""
    collection_id = request["CollectionId"]
    user_id = request["UserId"]
    service.require_user(api.store, collection_id, user_id)
    _erase(api, collection_id, user_id, "DeleteUser", probe=None, user_only=True)
    return {}


def erase_person_operation(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    """Candor's ErasePerson: every trace of a person (ExternalImageId or UserId), then the proof."""
    collection_id = request["CollectionId"]
    person = request["PersonId"]
    probe = api.image_bytes(request["Image"]) if "Image" in request else None
    result = _erase(api, collection_id, person, "ErasePerson", probe)
    proof = result.proof
    return {
        "FacesRemoved": result.faces_removed,
        "PhotosRemoved": result.photos_removed,
        "VideoMatchesRemoved": result.video_matches_removed,
        "UserRemoved": result.user_removed,
        "Proof": _without_none(
            {
                "Searched": proof.searched,
                "FacesSearched": proof.faces_searched,
                "RemainingMatches": proof.remaining_matches,
                "Erased": proof.erased,
                "Note": proof.note or None,
            }
        ),
    }


def _erase(
    api: FaceApi, collection_id: str, person: str, operation: str, probe: bytes | None, user_only: bool = False
) -> ErasureResult:
    def search(image: bytes) -> list[list[Match]]:
        # The proof searches the largest face at the lowest similarity Candor returns: a near miss shows too.
        result = search_image(
            image,
            collection_id,
            detector=api.detector,
            embedder=api.embedder,
            indexes=api.indexes,
            face_match_threshold=DEFAULT_FACE_MATCH_THRESHOLD,
            max_matches=100,
            min_confidence=api.min_confidence,
            largest_face_only=True,
        )
        return [face.matches for face in result.faces]

    result = erase_person(
        api.store,
        api.photos,
        api.images,
        collection_id,
        person,
        search=search,
        probe=probe,
        user_only=user_only,
        erase_video_matches=api.videos.erase_matches if api.videos is not None else None,
    )
    api.accountability.record_erasure(
        collection_id,
        api.caller,
        operation,
        person,
        faces_removed=result.faces_removed,
        photos_removed=result.photos_removed,
        user_removed=result.user_removed,
        video_matches_removed=result.video_matches_removed,
        proof_searched=result.proof.searched,
        proof_remaining_matches=len(result.proof.remaining_matches),
    )
    return result


def list_users(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    page = service.list_users(
        api.store,
        request["CollectionId"],
        request.get("MaxResults", DEFAULT_USER_PAGE),
        request.get("NextToken"),
    )
    response: dict[str, Any] = {"Users": [{"UserId": u.user_id, "UserStatus": u.status} for u in page.items]}
    if page.next_token:
        response["NextToken"] = page.next_token
    return response


def associate_faces(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    user_id = request["UserId"]
    result = service.associate_faces(
        api.store,
        request["CollectionId"],
        user_id,
        request["FaceIds"],
        float(request.get("UserMatchThreshold", service.DEFAULT_USER_MATCH_THRESHOLD)),
    )
    return {
        "AssociatedFaces": [{"FaceId": face_id} for face_id in result.associated],
        "UnsuccessfulFaceAssociations": [
            _without_none({"FaceId": face_id, "UserId": owner, "Confidence": similarity, "Reasons": reasons})
            for face_id, (owner, similarity, reasons) in result.refused.items()
        ],
        "UserStatus": result.user_status,
    }


def disassociate_faces(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    result = service.disassociate_faces(
        api.store,
        request["CollectionId"],
        request["UserId"],
        request["FaceIds"],
    )
    return {
        "DisassociatedFaces": [{"FaceId": face_id} for face_id in result.disassociated],
        "UnsuccessfulFaceDisassociations": [
            _without_none({"FaceId": face_id, "UserId": owner, "Reasons": reasons})
            for face_id, (owner, reasons) in result.refused.items()
        ],
        "UserStatus": result.user_status,
    }


def search_users(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    user_id, face_id = request.get("UserId"), request.get("FaceId")
    max_users = request.get("MaxUsers", DEFAULT_USER_PAGE)
    collection_id, authorized = _authorize(api, request, "SearchUsers", "UserMatchThreshold")
    threshold = authorized.threshold
    matches = _audited(
        api,
        collection_id,
        "SearchUsers",
        threshold,
        lambda: service.search_users(
            api.store, collection_id, user_id=user_id, face_id=face_id, threshold=threshold, max_users=max_users
        ),
        lambda found: [[Returned(m.user_id, m.similarity) for m in found]],
        searched=user_id or face_id,
        authorization=authorized,
    )
    response: dict[str, Any] = {
        "UserMatches": [user_match(m) for m in matches],
        "FaceModelVersion": EMBEDDER_VERSION,
        "FalseMatchRisk": authorized.false_match_risk,
    }
    if user_id is not None:
        response["SearchedUser"] = {"UserId": user_id}
    else:
        response["SearchedFace"] = {"FaceId": face_id}
    return response


def search_users_by_image(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    """The largest face that passes the quality filter is searched; every other face says why it was not."""
    max_users = request.get("MaxUsers", DEFAULT_USER_PAGE)
    quality_filter = parse_quality_filter(request.get("QualityFilter"), QualityFilter.NONE)
    # image_bytes has applied the limit of the image's source (5 MB of Bytes, 15 MB of an S3 object).
    probe = api.image_bytes(request["Image"])
    collection_id, authorized = _authorize(api, request, "SearchUsersByImage", "UserMatchThreshold", probe)
    response = _audited(
        api,
        collection_id,
        "SearchUsersByImage",
        authorized.threshold,
        lambda: _search_users_by_image(api, collection_id, probe, authorized.threshold, max_users, quality_filter),
        lambda response: [[Returned(m["User"]["UserId"], m["Similarity"]) for m in response["UserMatches"]]],
        probe=probe,
        authorization=authorized,
    )
    return {**response, "FalseMatchRisk": authorized.false_match_risk}


def _search_users_by_image(
    api: FaceApi, collection_id: str, probe: bytes, threshold: float, max_users: int, quality_filter: QualityFilter
) -> dict[str, Any]:
    _, index, records = api.indexes.get(collection_id)
    image = decode_image(probe, MAX_OBJECT_IMAGE_BYTES)
    found = assess_faces(image, api.detector, api.min_confidence)
    if not found:
        raise NoFaceError("no face found in the search photo")
    searched: AssessedFace | None = None
    unsearched = []
    for face in found:
        reasons = quality_reasons(face, quality_filter)
        if not reasons and searched is None:
            searched = face
            continue
        unsearched.append(
            {"FaceDetails": face_detail(face, image.width, image.height), "Reasons": reasons or ["FACE_NOT_LARGEST"]}
        )
    if searched is None:
        raise InvalidParameterError("no face in the image passes the quality filter")
    vector = api.embedder.embed_faces(image.pixels, [searched.face.scaled(1.0 / image.scale)])
    matches = service.user_matches(index, records, vector, threshold, max_users)
    return {
        "UserMatches": [user_match(m) for m in matches],
        "FaceModelVersion": EMBEDDER_VERSION,
        "SearchedFace": {"FaceDetail": face_detail(searched, image.width, image.height)},
        "UnsearchedFaces": unsearched,
    }


def search_faces_by_image(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    result, authorized = _search(api, request, "SearchFacesByImage", largest_face_only=True)
    searched = result.faces[0]
    box = searched.face.bounding_box
    return {
        "SearchedFaceBoundingBox": box.as_ratios(result.image_width, result.image_height),
        "SearchedFaceConfidence": searched.face.confidence * 100,
        "FaceMatches": [face_match(match) for match in searched.matches],
        "FaceModelVersion": EMBEDDER_VERSION,
        "FalseMatchRisk": authorized.false_match_risk,
    }


def search_all_faces_by_image(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    """Candor's own operation: SearchFacesByImage for every face in the photo, not only the largest."""
    result, authorized = _search(api, request, "SearchAllFacesByImage", largest_face_only=False)
    return {
        "Faces": [
            {
                "BoundingBox": item.face.bounding_box.as_ratios(result.image_width, result.image_height),
                "Landmarks": _landmarks(item.face, result.image_width, result.image_height),
                "Confidence": item.face.confidence * 100,
                "FaceMatches": [face_match(match) for match in item.matches],
            }
            for item in result.faces
        ],
        "FaceModelVersion": EMBEDDER_VERSION,
        "FalseMatchRisk": authorized.false_match_risk,
    }


def _search(
    api: FaceApi, request: dict[str, Any], operation: str, *, largest_face_only: bool
) -> tuple[ImageSearchResult, SearchAuthorization]:
    max_matches = request.get("MaxFaces", 1 if largest_face_only else 5)
    quality_filter = parse_quality_filter(request.get("QualityFilter"), QualityFilter.NONE)
    probe = api.image_bytes(request["Image"])
    # Every face of a photo may name someone: counted once the faces are found, before any is searched.
    collection_id, authorized = _authorize(
        api, request, operation, "FaceMatchThreshold", probe, identifications=1 if largest_face_only else 0
    )
    threshold = authorized.threshold

    def count_faces(faces: int) -> None:
        if not largest_face_only:
            api.accountability.reserve(authorized, api.caller, operation, faces, probe)

    result = _audited(
        api,
        collection_id,
        operation,
        threshold,
        lambda: search_image(
            probe,
            collection_id,
            detector=api.detector,
            embedder=api.embedder,
            indexes=api.indexes,
            face_match_threshold=threshold,
            max_matches=max_matches,
            min_confidence=api.min_confidence,
            largest_face_only=largest_face_only,
            quality_filter=quality_filter,
            before_matching=count_faces,
        ),
        lambda result: [[Returned(m.face_id, m.similarity) for m in face.matches] for face in result.faces],
        probe=probe,
        authorization=authorized,
    )
    return result, authorized


def _authorize(
    api: FaceApi,
    request: dict[str, Any],
    operation: str,
    threshold_name: str,
    probe: bytes | None = None,
    identifications: int = 1,
) -> tuple[str, SearchAuthorization]:
    """The collection's rules for this caller: the threshold to search at and its false-match risk against
    the collection's faces, with `identifications` counted against its quotas, or a refusal (audited)."""
    # The warm index gives the collection (one read, as the search itself makes) and its size.
    collection, index, _ = api.indexes.get(request["CollectionId"])
    asked = float(request[threshold_name]) if threshold_name in request else None
    authorized = api.accountability.authorize_search(
        collection.collection_id,
        collection.policy,
        api.caller,
        operation,
        asked,
        probe,
        faces=len(index),
        identifications=identifications,
    )
    return collection.collection_id, authorized


def _audited(
    api: FaceApi,
    chain: str,
    operation: str,
    threshold: float,
    run: Callable[[], T],
    returned: Callable[[T], Sequence[Sequence[Returned]]],
    *,
    probe: bytes | None = None,
    searched: str | None = None,
    authorization: SearchAuthorization | None = None,
) -> T:
    """Runs an allowed search and audits what it returns before the caller sees it."""
    record = partial(
        api.accountability.record_search,
        chain,
        api.caller,
        operation,
        threshold=threshold,
        probe=probe,
        searched=searched,
        authorization=authorization,
    )
    try:
        result = run()
    except QuotaExceededError:
        raise  # refused before it searched, and audited as a refusal
    except CandorError as error:
        record(matches=[], error=error)
        raise
    record(matches=returned(result))
    return result


def reindex_collection_operation(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    """Candor's own: one page of re-embedding a collection with this stack's face model (candor/reindex.py)."""
    collection = _collection(api, request)
    drop = request.get("DropUnreindexable", False)
    before = collection.face_model_version
    progress = reindex_collection(
        collection.collection_id,
        collections=api.collections,
        faces=api.store.faces,
        photos=api.photos,
        images=api.images,
        detector=api.detector,
        embedder=api.embedder,
        min_confidence=api.min_confidence,
        next_token=request.get("NextToken"),
        page_size=request.get("MaxFaces", 100),
        drop_unreindexable=drop,
    )
    switched = before != progress.face_model_version
    if progress.reindexed or progress.dropped or switched:
        api.accountability.record_reindex(
            collection.collection_id,
            api.caller,
            "ReindexCollection",
            from_model=before,
            to_model=progress.target_model_version,
            reindexed=progress.reindexed,
            dropped_face_ids=progress.dropped or None,
            switched=switched,
        )
    if switched:
        api.indexes.forget(collection.collection_id)  # the old model's snapshots: never loaded again
    response: dict[str, Any] = {
        "CollectionId": collection.collection_id,
        "FaceModelVersion": progress.face_model_version,
        "TargetFaceModelVersion": progress.target_model_version,
        "Reindexed": progress.reindexed,
        "Remaining": progress.remaining,
        "Complete": progress.complete,
        "UnreindexableFaces": [
            _without_none({"FaceId": u.face_id, "ExternalImageId": u.external_image_id, "Reason": u.reason})
            for u in progress.unreindexable
        ],
        "DroppedFaceIds": progress.dropped,
    }
    if progress.next_token:
        response["NextToken"] = progress.next_token
    return response


def face_detail(assessed: AssessedFace, width: int, height: int) -> dict[str, Any]:
    """Rekognition's FaceDetail with what Candor measures: box, landmarks, pose, quality, confidence."""
    return compared_face(assessed, width, height)


def compared_face(assessed: AssessedFace, width: int, height: int) -> dict[str, Any]:
    face, pose, quality = assessed.face, assessed.pose, assessed.quality
    return {
        "BoundingBox": face.bounding_box.as_ratios(width, height),
        "Landmarks": _landmarks(face, width, height),
        "Pose": {"Roll": pose.roll, "Yaw": pose.yaw, "Pitch": pose.pitch},
        "Quality": {"Brightness": quality.brightness, "Sharpness": quality.sharpness},
        "Confidence": face.confidence * 100,
    }


def _landmarks(face: DetectedFace, width: int, height: int) -> list[dict[str, Any]]:
    return [
        {"Type": name, "X": x / width, "Y": y / height}
        for name, (x, y) in zip(LANDMARK_TYPES, face.landmarks, strict=True)
    ]


def face_shape(face: FaceRecord) -> dict[str, Any]:
    """Rekognition's Face: a stored face of a collection."""
    shape: dict[str, Any] = {
        "FaceId": face.face_id,
        "ImageId": face.photo_id,
        "Confidence": face.confidence * 100,
        "IndexFacesModelVersion": face.model_version,
    }
    if face.image_width and face.image_height:
        shape["BoundingBox"] = face.bounding_box.as_ratios(face.image_width, face.image_height)
    if face.external_image_id:
        shape["ExternalImageId"] = face.external_image_id
    if face.user_id:
        shape["UserId"] = face.user_id
    return shape


def face_match(match: Match) -> dict[str, Any]:
    face: dict[str, Any] = {"FaceId": match.face_id, "ImageId": match.photo_id}
    if match.external_image_id:
        face["ExternalImageId"] = match.external_image_id
    return {"Similarity": match.similarity, "Face": face}


def user_match(match: UserMatch) -> dict[str, Any]:
    return {"Similarity": match.similarity, "User": {"UserId": match.user_id, "UserStatus": match.status}}


def _without_none(shape: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in shape.items() if value is not None}


Operation = Callable[[FaceApi, dict[str, Any]], dict[str, Any]]
OPERATIONS: dict[str, Operation] = {
    "CreateCollection": create_collection,
    "DescribeCollection": describe_collection,
    "ListCollections": list_collections,
    "DeleteCollection": delete_collection,
    "DetectFaces": detect_faces,
    "IndexFaces": index_faces_operation,
    "ListFaces": list_faces,
    "DeleteFaces": delete_faces,
    "SearchFaces": search_faces,
    "SearchFacesByImage": search_faces_by_image,
    "CompareFaces": compare_faces,
    "CreateUser": create_user,
    "DeleteUser": delete_user,
    "ListUsers": list_users,
    "AssociateFaces": associate_faces,
    "DisassociateFaces": disassociate_faces,
    "SearchUsers": search_users,
    "SearchUsersByImage": search_users_by_image,
    "StartFaceDetection": start_face_detection,
    "GetFaceDetection": get_face_detection,
    "StartFaceSearch": start_face_search,
    "GetFaceSearch": get_face_search,
    "CreateStreamProcessor": create_stream_processor,
    "StartStreamProcessor": start_stream_processor,
    "StopStreamProcessor": stop_stream_processor,
    "DescribeStreamProcessor": describe_stream_processor,
    "ListStreamProcessors": list_stream_processors,
    "UpdateStreamProcessor": update_stream_processor,
    "DeleteStreamProcessor": delete_stream_processor,
}
# Candor's own operations speak the same protocol under the target prefix CandorService.
CANDOR_OPERATIONS: dict[str, Operation] = {
    "SearchAllFacesByImage": search_all_faces_by_image,
    "CreateCollection": create_collection,
    "PutCollectionPolicy": put_collection_policy,
    "DescribeCollectionPolicy": describe_collection_policy,
    "ErasePerson": erase_person_operation,
    "ReindexCollection": reindex_collection_operation,
    "CancelCollectionPolicyChange": cancel_collection_policy_change,
}
# Served by AdminFunction only: what changes the rules searches follow, or removes a collection whole.
ADMIN_OPERATIONS = frozenset(
    {
        "CandorService.CreateCollection",
        "CandorService.PutCollectionPolicy",
        "CandorService.CancelCollectionPolicyChange",
        "RekognitionService.DeleteCollection",
    }
)
# What AdminFunction also answers, to see what it administers.
ADMIN_READS = frozenset(
    {
        "CandorService.DescribeCollectionPolicy",
        "RekognitionService.DescribeCollection",
        "RekognitionService.ListCollections",
    }
)
SERVICES: dict[str, dict[str, Operation]] = {"RekognitionService": OPERATIONS, "CandorService": CANDOR_OPERATIONS}
