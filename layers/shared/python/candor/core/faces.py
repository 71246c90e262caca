"""What a face is: plain records shared by detection, embedding, indexing and search."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

# Rekognition's landmark names for the five points YuNet and the alignment template use, in that order.
LANDMARK_TYPES = ("eyeLeft", "eyeRight", "nose", "mouthLeft", "mouthRight")


@dataclass(frozen=True)
class BoundingBox:
    """A box in pixels of the upright (EXIF-rotated) image."""

    left: float
    top: float
    width: float
    height: float

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def as_ratios(self, image_width: int, image_height: int) -> dict[str, float]:
        """Rekognition's form: fractions of the image's width and height."""
        return {
            "Width": self.width / image_width,
            "Height": self.height / image_height,
            "Left": self.left / image_width,
            "Top": self.top / image_height,
        }

    def scaled(self, factor: float) -> BoundingBox:
        return BoundingBox(self.left * factor, self.top * factor, self.width * factor, self.height * factor)

    def to_dict(self) -> dict[str, float]:
        return {"left": self.left, "top": self.top, "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> BoundingBox:
        return cls(float(data["left"]), float(data["top"]), float(data["width"]), float(data["height"]))


@dataclass(frozen=True)
class DetectedFace:
    """One face found by the detector: box, five landmarks (x, y in pixels, LANDMARK_TYPES order), score 0..1."""

    bounding_box: BoundingBox
    landmarks: tuple[tuple[float, float], ...]
    confidence: float

    def scaled(self, factor: float) -> DetectedFace:
        """The same face in an image resized by `factor` (decoders may shrink a huge photo)."""
        return DetectedFace(
            self.bounding_box.scaled(factor),
            tuple((x * factor, y * factor) for x, y in self.landmarks),
            self.confidence,
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "bounding_box": self.bounding_box.to_dict(),
            "landmarks": [[x, y] for x, y in self.landmarks],
            "confidence": self.confidence,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DetectedFace:
        box = data["bounding_box"]
        points = data["landmarks"]
        assert isinstance(box, dict) and isinstance(points, list)
        return cls(
            bounding_box=BoundingBox.from_dict(box),
            landmarks=tuple((float(x), float(y)) for x, y in points),
            confidence=float(data["confidence"]),  # type: ignore[arg-type]
        )


class PhotoStatus(StrEnum):
    DETECTED = "DETECTED"  # faces found, waiting for the embed stage
    COMPLETE = "COMPLETE"  # every face embedded (and the enrolled one indexed); also a photo with no face
    FAILED = "FAILED"  # a recorded, final failure with a reason code


@dataclass(frozen=True)
class Enrolment:
    """Where a photo's face goes: a collection, the person it shows, and the consent reference recorded."""

    collection_id: str
    external_image_id: str | None  # None: IndexFaces without an ExternalImageId
    consent_reference: str | None = None


@dataclass
class PhotoRecord:
    """The state of one uploaded photo, as the photos table stores it."""

    photo_id: str
    bucket: str
    key: str
    status: PhotoStatus
    image_width: int = 0
    image_height: int = 0
    faces: list[DetectedFace] = field(default_factory=list)
    face_ids: list[str] = field(default_factory=list)
    enrolment: Enrolment | None = None
    error_code: str | None = None
    error_message: str | None = None
    detector_version: str | None = None
    source_etag: str | None = None
    source_modified: str | None = None
    embedder_version: str | None = None
    # True when the photo held more than MAX_FACES faces: only the MAX_FACES largest were recorded.
    faces_truncated: bool = False
    # Unix time after which DynamoDB's TTL removes the record: set when the photo enrols nobody.
    expires_at: int | None = None


@dataclass
class FaceRecord:
    """One embedded face. `collection_id` is set only for a face enrolled into a collection."""

    face_id: str
    photo_id: str
    bounding_box: BoundingBox
    confidence: float
    embedding: np.ndarray
    model_version: str
    collection_id: str | None = None
    external_image_id: str | None = None
    consent_reference: str | None = None
    # The photo's upright size, so the box can be reported as ratios (0: unknown, a record from before).
    image_width: int = 0
    image_height: int = 0
    user_id: str | None = None  # Rekognition's users: at most one per face
    # Unix time after which DynamoDB's TTL removes the record: set on every face that is not enrolled.
    expires_at: int | None = None


@dataclass(frozen=True)
class Match:
    face_id: str
    external_image_id: str | None
    similarity: float
    photo_id: str | None = None
