"""Amazon Rekognition's JSON protocol for the face operations, translated onto Candor's service functions.

Requests arrive as `POST /` with `X-Amz-Target: RekognitionService.<Operation>`; errors use Rekognition's
exception names so boto3 raises the same exceptions it would against AWS.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from candor.enrolment import validate_collection_id
from candor.errors import CandorError, ImageTooLargeError, InvalidParameterError
from candor.faces import LANDMARK_TYPES, DetectedFace, Match
from candor.images import decode_image
from candor.ports import Collection, CollectionRepository, FaceDetector, FaceEmbedder, ImageStore
from candor.search import CollectionIndexes, ImageSearchResult, search_image
from candor.settings import (
    DEFAULT_FACE_MATCH_THRESHOLD,
    EMBEDDER_VERSION,
    MAX_FACES,
    MAX_OBJECT_IMAGE_BYTES,
    MAX_REQUEST_IMAGE_BYTES,
)

EXCEPTION_NAMES = {
    "InvalidImageFormat": "InvalidImageFormatException",
    "ImageTooLarge": "ImageTooLargeException",
    "ImageTooSmall": "InvalidParameterException",
    "InvalidParameter": "InvalidParameterException",
    "NoFaceDetected": "InvalidParameterException",
    "ResourceNotFound": "ResourceNotFoundException",
    "ResourceAlreadyExists": "ResourceAlreadyExistsException",
}


@dataclass
class FaceApi:
    """The composition of adapters and models the operations run on."""

    images: ImageStore
    collections: CollectionRepository
    indexes: CollectionIndexes
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
        stored = self.images.get(
            s3_object["Bucket"], s3_object["Name"], s3_object.get("Version"), max_bytes=MAX_OBJECT_IMAGE_BYTES
        )
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


def create_collection(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    collection_id = validate_collection_id(str(_required(request, "CollectionId")))
    api.collections.create(Collection(collection_id, datetime.now(UTC).isoformat(), EMBEDDER_VERSION, index_version=""))
    return {"StatusCode": 200, "CollectionArn": api.collection_arn(collection_id), "FaceModelVersion": EMBEDDER_VERSION}


def describe_collection(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    collection, index, _ = api.indexes.get(str(_required(request, "CollectionId")))
    return {
        "FaceCount": len(index),
        "FaceModelVersion": collection.face_model_version,
        "CollectionARN": api.collection_arn(collection.collection_id),
        "CreationTimestamp": datetime.fromisoformat(collection.created_at).timestamp(),
    }


def list_collections(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    ids = api.collections.list_ids()
    return {"CollectionIds": ids, "FaceModelVersions": [EMBEDDER_VERSION] * len(ids)}


def detect_faces(api: FaceApi, request: dict[str, Any]) -> dict[str, Any]:
    image = decode_image(api.image_bytes(_required(request, "Image")), MAX_OBJECT_IMAGE_BYTES)
    found = api.detector.detect(image.pixels, max_faces=MAX_FACES, min_confidence=api.min_confidence)
    return {"FaceDetails": [face_detail(image.to_original(face), image.width, image.height) for face in found]}


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


def face_detail(face: DetectedFace, width: int, height: int) -> dict[str, Any]:
    return {
        "BoundingBox": face.bounding_box.as_ratios(width, height),
        "Landmarks": [
            {"Type": name, "X": x / width, "Y": y / height}
            for name, (x, y) in zip(LANDMARK_TYPES, face.landmarks, strict=True)
        ],
        "Confidence": face.confidence * 100,
    }


def face_match(match: Match) -> dict[str, Any]:
    face: dict[str, Any] = {"FaceId": match.face_id, "ImageId": match.photo_id}
    if match.external_image_id:
        face["ExternalImageId"] = match.external_image_id
    return {"Similarity": match.similarity, "Face": face}


Operation = Callable[[FaceApi, dict[str, Any]], dict[str, Any]]
OPERATIONS: dict[str, Operation] = {
    "CreateCollection": create_collection,
    "DescribeCollection": describe_collection,
    "ListCollections": list_collections,
    "DetectFaces": detect_faces,
    "SearchFacesByImage": search_faces_by_image,
}
# Candor's own operations speak the same protocol under the target prefix CandorService.
CANDOR_OPERATIONS: dict[str, Operation] = {"SearchAllFacesByImage": search_all_faces_by_image}
SERVICES: dict[str, dict[str, Operation]] = {"RekognitionService": OPERATIONS, "CandorService": CANDOR_OPERATIONS}
