"""Amazon Rekognition's JSON protocol for the face operations, translated onto Candor's service functions.

Requests arrive as `POST /` with `X-Amz-Target: RekognitionService.<Operation>`; errors use Rekognition's
exception names so boto3 raises the same exceptions it would against AWS.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from candor import collection_service as service
from candor.collection_service import CollectionStore, UserMatch
from candor.enrolment import COLLECTION_ID_PATTERN, validate_collection_id
from candor.errors import (
    CandorError,
    ImageTooLargeError,
    InvalidPaginationTokenError,
    InvalidParameterError,
    InvalidS3ObjectError,
    NoFaceError,
    ResourceNotFoundError,
)
from candor.faces import LANDMARK_TYPES, DetectedFace, FaceRecord, Match
from candor.images import decode_image
from candor.indexing import assess_faces, index_faces
from candor.ports import Collection, CollectionRepository, FaceDetector, FaceEmbedder, ImageStore
from candor.quality import AssessedFace, QualityFilter, parse_quality_filter, quality_reasons
from candor.search import CollectionIndexes, ImageSearchResult, search_image
from candor.settings import (
    DEFAULT_FACE_MATCH_THRESHOLD,
    EMBEDDER_VERSION,
    MAX_FACES,
    MAX_OBJECT_IMAGE_BYTES,
    MAX_REQUEST_IMAGE_BYTES,
)
from candor.similarity import similarity_from_cosine

EXCEPTION_NAMES = {
    "InvalidImageFormat": "InvalidImageFormatException",
    "ImageTooLarge": "ImageTooLargeException",
    "ImageTooSmall": "InvalidParameterException",
    "InvalidParameter": "InvalidParameterException",
    "NoFaceDetected": "InvalidParameterException",
    "ResourceNotFound": "ResourceNotFoundException",
    "ResourceAlreadyExists": "ResourceAlreadyExistsException",
    "InvalidS3Object": "InvalidS3ObjectException",
    "Conflict": "ConflictException",
    "InvalidPaginationToken": "InvalidPaginationTokenException",
}
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

    def dispatch(self, target: str, request: dict[str, Any]) -> dict[str, Any]:
        service, _, operation = target.partition(".")
        handler = SERVICES.get(service, {}).get(operation)
        if handler is None:
            raise UnknownOperationError(f"{target or '(no X-Amz-Target)'} is not an operation Candor serves")
        return handler(self, request)

    def image_bytes(self, image: Any) -> bytes:
        """Rekognition's Image: {"Bytes": base64} or {"S3Object": {"Bucket", "Name", "Version"}}."""
        if not isinstance(image, dict) or ("Bytes" in image) == ("S3Object" in image):
            raise InvalidParameterError("Image must have exactly one of Bytes or S3Object")
        if "S3Object" in image and not isinstance(image["S3Object"], dict):
            raise InvalidParameterError("Image.S3Object must be an object")
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


class UnknownOperationError(Exception):
    pass


def error_body(error: CandorError) -> dict[str, str]:
    return {"__type": EXCEPTION_NAMES.get(error.code, "InternalServerError"), "Message": error.message}


def _required(request: dict[str, Any], name: str) -> Any:
    if name not in request:
        raise InvalidParameterError(f"{name} is required")
    return request[name]


def _number(request: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidParameterError(f"{name} must be a number from {low:g} to {high:g}")
    return float(value)


def _integer(request: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidParameterError(f"{name} must be an integer from {low} to {high}")
    return value


def _optional_str(request: dict[str, Any], name: str) -> str | None:
    value = request.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidParameterError(f"{name} must be a string")
    return value


def _id_list(request: dict[str, Any], name: str, high: int) -> list[str]:
    value = _required(request, name)
    if not isinstance(value, list) or not 1 <= len(value) <= high:
        raise InvalidParameterError(f"{name} must list 1 to {high} ids")
    return [service.validate_face_id(face_id) for face_id in value]


def create_collection(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    collection_id = validate_collection_id(str(_required(request, "CollectionId")))
    # A fresh index version: a warm index of a deleted collection of the same name is never reused.
    api.collections.create(
        Collection(collection_id, datetime.now(UTC).isoformat(), EMBEDDER_VERSION, index_version=uuid.uuid4().hex)
    )
    return {"StatusCode": 200, "CollectionArn": api.collection_arn(collection_id), "FaceModelVersion": EMBEDDER_VERSION}


def describe_collection(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    collection, index, _ = api.indexes.get(str(_required(request, "CollectionId")))
    return {
        "FaceCount": len(index),
        "UserCount": service.count_users(api.store, collection.collection_id),
        "FaceModelVersion": collection.face_model_version,
        "CollectionARN": api.collection_arn(collection.collection_id),
        "CreationTimestamp": datetime.fromisoformat(collection.created_at).timestamp(),
    }


def list_collections(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    """Collection ids in order, MaxResults (at most 4096) at a time; NextToken is the last id of the page."""
    limit = _integer(request, "MaxResults", 4096, 0, 4096) or 4096
    after = _optional_str(request, "NextToken")
    if after is not None and not COLLECTION_ID_PATTERN.match(after):
        raise InvalidPaginationTokenError(f"{after!r} is not a NextToken this listing gave")
    ids = [collection_id for collection_id in api.collections.list_ids() if after is None or collection_id > after]
    response: dict[str, Any] = {
        "CollectionIds": ids[:limit],
        "FaceModelVersions": [EMBEDDER_VERSION] * len(ids[:limit]),
    }
    if len(ids) > limit:
        response["NextToken"] = ids[limit - 1]
    return response


def delete_collection(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    service.delete_collection(api.store, str(_required(request, "CollectionId")))
    return {"StatusCode": 200}


def detect_faces(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    image = decode_image(api.image_bytes(_required(request, "Image")), MAX_OBJECT_IMAGE_BYTES)
    found = assess_faces(image, api.detector, api.min_confidence)
    return {"FaceDetails": [face_detail(face, image.width, image.height) for face in found]}


def index_faces_operation(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    max_faces = _integer(request, "MaxFaces", MAX_FACES, 1, 2**31 - 1) if "MaxFaces" in request else None
    result = index_faces(
        api.image_bytes(_required(request, "Image")),
        str(_required(request, "CollectionId")),
        external_image_id=_optional_str(request, "ExternalImageId"),
        max_faces=max_faces,
        quality_filter=parse_quality_filter(request.get("QualityFilter"), QualityFilter.AUTO),
        detector=api.detector,
        embedder=api.embedder,
        face_repository=api.store.faces,
        collections=api.collections,
        min_confidence=api.min_confidence,
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
    face_ids = _id_list(request, "FaceIds", 4096) if "FaceIds" in request else None
    page = service.list_faces(
        api.store,
        str(_required(request, "CollectionId")),
        _integer(request, "MaxResults", DEFAULT_FACE_PAGE, 0, 4096),
        _optional_str(request, "NextToken"),
        user_id=_optional_str(request, "UserId"),
        face_ids=face_ids,
    )
    response: dict[str, Any] = {
        "Faces": [face_shape(face) for face in page.items],
        "FaceModelVersion": EMBEDDER_VERSION,
    }
    if page.next_token:
        response["NextToken"] = page.next_token
    return response


def delete_faces(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    result = service.delete_faces(
        api.store, str(_required(request, "CollectionId")), _id_list(request, "FaceIds", 4096)
    )
    return {
        "DeletedFaces": result.deleted,
        "UnsuccessfulFaceDeletions": [
            _without_none({"FaceId": face_id, "UserId": user_id, "Reasons": reasons})
            for face_id, (user_id, reasons) in result.refused.items()
        ],
    }


def search_faces(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    face_id = str(_required(request, "FaceId"))
    matches = service.search_by_face_id(
        api.store,
        str(_required(request, "CollectionId")),
        face_id,
        threshold=_number(request, "FaceMatchThreshold", DEFAULT_FACE_MATCH_THRESHOLD, 0, 100),
        max_faces=_integer(request, "MaxFaces", 1, 1, 4096),
    )
    return {
        "SearchedFaceId": face_id,
        "FaceMatches": [face_match(m) for m in matches],
        "FaceModelVersion": EMBEDDER_VERSION,
    }


def compare_faces(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    """The largest face of the source image against every face of the target image."""
    threshold = _number(request, "SimilarityThreshold", DEFAULT_FACE_MATCH_THRESHOLD, 0, 100)
    quality_filter = parse_quality_filter(request.get("QualityFilter"), QualityFilter.NONE)
    source_image = decode_image(api.image_bytes(_required(request, "SourceImage")), MAX_OBJECT_IMAGE_BYTES)
    target_image = decode_image(api.image_bytes(_required(request, "TargetImage")), MAX_OBJECT_IMAGE_BYTES)
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
    service.create_user(api.store, str(_required(request, "CollectionId")), str(_required(request, "UserId")))
    return {}


def delete_user(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    service.delete_user(api.store, str(_required(request, "CollectionId")), str(_required(request, "UserId")))
    return {}


def list_users(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    page = service.list_users(
        api.store,
        str(_required(request, "CollectionId")),
        _integer(request, "MaxResults", DEFAULT_USER_PAGE, 1, 500),
        _optional_str(request, "NextToken"),
    )
    response: dict[str, Any] = {"Users": [{"UserId": u.user_id, "UserStatus": u.status} for u in page.items]}
    if page.next_token:
        response["NextToken"] = page.next_token
    return response


def associate_faces(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    user_id = str(_required(request, "UserId"))
    result = service.associate_faces(
        api.store,
        str(_required(request, "CollectionId")),
        user_id,
        _id_list(request, "FaceIds", 100),
        _number(request, "UserMatchThreshold", service.DEFAULT_USER_MATCH_THRESHOLD, 0, 100),
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
        str(_required(request, "CollectionId")),
        str(_required(request, "UserId")),
        _id_list(request, "FaceIds", 100),
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
    user_id, face_id = _optional_str(request, "UserId"), _optional_str(request, "FaceId")
    matches = service.search_users(
        api.store,
        str(_required(request, "CollectionId")),
        user_id=user_id,
        face_id=face_id,
        threshold=_number(request, "UserMatchThreshold", DEFAULT_FACE_MATCH_THRESHOLD, 0, 100),
        max_users=_integer(request, "MaxUsers", DEFAULT_USER_PAGE, 1, 500),
    )
    response: dict[str, Any] = {"UserMatches": [user_match(m) for m in matches], "FaceModelVersion": EMBEDDER_VERSION}
    if user_id is not None:
        response["SearchedUser"] = {"UserId": user_id}
    else:
        response["SearchedFace"] = {"FaceId": face_id}
    return response


def search_users_by_image(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    """The largest face that passes the quality filter is searched; every other face says why it was not."""
    collection_id = str(_required(request, "CollectionId"))
    threshold = _number(request, "UserMatchThreshold", DEFAULT_FACE_MATCH_THRESHOLD, 0, 100)
    max_users = _integer(request, "MaxUsers", DEFAULT_USER_PAGE, 1, 500)
    quality_filter = parse_quality_filter(request.get("QualityFilter"), QualityFilter.NONE)
    _, index, records = api.indexes.get(collection_id)
    # image_bytes has applied the limit of the image's source (5 MB of Bytes, 15 MB of an S3 object).
    image = decode_image(api.image_bytes(_required(request, "Image")), MAX_OBJECT_IMAGE_BYTES)
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
    result = _search(api, request, largest_face_only=True)
    searched = result.faces[0]
    box = searched.face.bounding_box
    return {
        "SearchedFaceBoundingBox": box.as_ratios(result.image_width, result.image_height),
        "SearchedFaceConfidence": searched.face.confidence * 100,
        "FaceMatches": [face_match(match) for match in searched.matches],
        "FaceModelVersion": EMBEDDER_VERSION,
    }


def search_all_faces_by_image(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    """Candor's own operation: SearchFacesByImage for every face in the photo, not only the largest."""
    result = _search(api, request, largest_face_only=False)
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
    }


def _search(api: FaceApi, request: dict[str, Any], *, largest_face_only: bool) -> ImageSearchResult:
    return search_image(
        api.image_bytes(_required(request, "Image")),
        str(_required(request, "CollectionId")),
        detector=api.detector,
        embedder=api.embedder,
        indexes=api.indexes,
        face_match_threshold=float(request.get("FaceMatchThreshold", DEFAULT_FACE_MATCH_THRESHOLD)),
        max_matches=int(request.get("MaxFaces", 1 if largest_face_only else 5)),
        min_confidence=api.min_confidence,
        largest_face_only=largest_face_only,
    )


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
}
# Candor's own operations speak the same protocol under the target prefix CandorService.
CANDOR_OPERATIONS: dict[str, Operation] = {"SearchAllFacesByImage": search_all_faces_by_image}
SERVICES: dict[str, dict[str, Operation]] = {"RekognitionService": OPERATIONS, "CandorService": CANDOR_OPERATIONS}
