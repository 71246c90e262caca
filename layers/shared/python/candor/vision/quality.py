"""How good a detected face is for recognition (brightness, sharpness), which way it points (pose), and
the quality bars IndexFaces, CompareFaces and SearchUsersByImage filter faces with.

Brightness: mean luminance (ITU-R BT.601) of the inner 60% of the face box, 0 (black) to 100 (white).
Sharpness: the face box resized to 64x64 grey pixels, the variance of its 4-neighbour Laplacian, mapped to
0..100 by 100 * (1 - exp(-variance / SHARPNESS_SCALE)); the fixed size makes it independent of face size
(a small face is judged by SMALL_BOUNDING_BOX, not here).
Pose, in degrees, from the five landmarks alone (no 3-D model):
- Roll: the angle of the line from the left to the right eye (positive: the face's right eye is lower).
- The landmarks are then rotated by -Roll, and with D the distance between the eyes:
  Yaw = atan(horizontal offset of the nose tip from the eyes' midpoint / (NOSE_DEPTH * D)): the nose tip
  stands about NOSE_DEPTH * D in front of the eyes, so turning the head by Yaw moves it sideways by
  depth * sin(Yaw) while the eyes' span shrinks with cos(Yaw). Positive: nose to the image's right.
  Pitch = atan((FRONTAL_NOSE_HEIGHT - h) / NOSE_DEPTH) where h is the nose tip's height between the eye line
  (0) and the mouth line (1) in units of that eye-to-mouth distance. Positive: looking up.
These are estimates good to roughly +-10 degrees near frontal, and they saturate towards profile views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import Image

from candor.core.faces import DetectedFace

SHARPNESS_SIZE = 64
# A sharp portrait's variance is 300-1200; blurred by 2% of the photo's width it falls to about 50 (-> 22).
SHARPNESS_SCALE = 200.0
# Anthropometric averages: nose tip depth over eye distance, and the nose tip's height between eyes and mouth.
NOSE_DEPTH = 0.6
FRONTAL_NOSE_HEIGHT = 0.55


@dataclass(frozen=True)
class FaceQuality:
    brightness: float  # 0..100
    sharpness: float  # 0..100


@dataclass(frozen=True)
class Pose:
    roll: float
    yaw: float
    pitch: float


@dataclass(frozen=True)
class AssessedFace:
    """A detected face (in pixels of the original upright image) with its quality and pose."""

    face: DetectedFace
    quality: FaceQuality
    pose: Pose


class QualityFilter(StrEnum):
    NONE = "NONE"
    AUTO = "AUTO"
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"


@dataclass(frozen=True)
class QualityBar:
    """A face passes when it meets every minimum; each miss is one of Rekognition's reasons."""

    min_confidence: float  # detector score 0..1
    min_face_side: float  # pixels of the original image, the box's shorter side
    min_sharpness: float
    min_brightness: float
    max_abs_yaw: float


# Measured on ../shared/data/faces: every enrolment portrait passes HIGH, the 240p probe passes MEDIUM.
QUALITY_BARS: dict[QualityFilter, QualityBar | None] = {
    QualityFilter.NONE: None,
    QualityFilter.LOW: QualityBar(0.80, 20, 5, 5, 90),
    QualityFilter.MEDIUM: QualityBar(0.85, 40, 15, 10, 60),
    QualityFilter.HIGH: QualityBar(0.90, 64, 30, 15, 45),
}
# Rekognition lets AUTO pick the bar; Candor picks LOW, which only turns away faces recognition cannot use.
QUALITY_BARS[QualityFilter.AUTO] = QUALITY_BARS[QualityFilter.LOW]


def parse_quality_filter(value: object, default: QualityFilter) -> QualityFilter:
    from candor.core.errors import InvalidParameterError

    if value is None:
        return default
    try:
        return QualityFilter(str(value))
    except ValueError:
        raise InvalidParameterError(f"QualityFilter must be one of {', '.join(QualityFilter)}, not {value!r}") from None


def quality_reasons(assessed: AssessedFace, quality_filter: QualityFilter) -> list[str]:
    """Rekognition's reasons a face falls below the bar (empty: it passes)."""
    bar = QUALITY_BARS[quality_filter]
    if bar is None:
        return []
    box = assessed.face.bounding_box
    checks = (
        (assessed.face.confidence < bar.min_confidence, "LOW_CONFIDENCE"),
        (min(box.width, box.height) < bar.min_face_side, "SMALL_BOUNDING_BOX"),
        (assessed.quality.sharpness < bar.min_sharpness, "LOW_SHARPNESS"),
        (assessed.quality.brightness < bar.min_brightness, "LOW_BRIGHTNESS"),
        (abs(assessed.pose.yaw) > bar.max_abs_yaw, "EXTREME_POSE"),
    )
    return [reason for failed, reason in checks if failed]


def assess_face(pixels: np.ndarray, face: DetectedFace, scale: float = 1.0) -> AssessedFace:
    """`face` in the coordinates of `pixels`; `scale` maps them to the original image (DecodedImage.scale)."""
    original = face if scale == 1.0 else face.scaled(scale)
    return AssessedFace(original, face_quality(pixels, face), face_pose(face))


def face_quality(pixels: np.ndarray, face: DetectedFace) -> FaceQuality:
    grey = _face_grey(pixels, face)
    if grey.size == 0:
        return FaceQuality(0.0, 0.0)
    h, w = grey.shape
    inner = grey[int(h * 0.2) : max(int(h * 0.8), int(h * 0.2) + 1), int(w * 0.2) : max(int(w * 0.8), int(w * 0.2) + 1)]
    brightness = float(inner.mean()) / 255.0 * 100.0
    small = np.asarray(
        Image.fromarray(grey.astype(np.uint8)).resize((SHARPNESS_SIZE, SHARPNESS_SIZE), Image.Resampling.BILINEAR),
        dtype=np.float64,
    )
    laplacian = small[:-2, 1:-1] + small[2:, 1:-1] + small[1:-1, :-2] + small[1:-1, 2:] - 4.0 * small[1:-1, 1:-1]
    sharpness = 100.0 * (1.0 - math.exp(-float(laplacian.var()) / SHARPNESS_SCALE))
    return FaceQuality(round(brightness, 4), round(sharpness, 4))


def face_pose(face: DetectedFace) -> Pose:
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
    roll = math.atan2(ry - ly, rx - lx)
    eye_mid = np.array([(lx + rx) / 2, (ly + ry) / 2])
    mouth_mid = np.array([(mlx + mrx) / 2, (mly + mry) / 2])
    eye_distance = math.hypot(rx - lx, ry - ly)
    # De-roll: express nose and mouth in a frame whose x axis runs along the eye line.
    cos_r, sin_r = math.cos(-roll), math.sin(-roll)

    def upright(point: np.ndarray) -> tuple[float, float]:
        dx, dy = point - eye_mid
        return dx * cos_r - dy * sin_r, dx * sin_r + dy * cos_r

    nose_x, nose_y = upright(np.array([nx, ny]))
    _, mouth_y = upright(mouth_mid)
    yaw = math.atan2(nose_x, NOSE_DEPTH * eye_distance) if eye_distance > 0 else 0.0
    height = nose_y / mouth_y if mouth_y > 0 else FRONTAL_NOSE_HEIGHT
    pitch = math.atan((FRONTAL_NOSE_HEIGHT - height) / NOSE_DEPTH)
    return Pose(round(math.degrees(roll), 4), round(math.degrees(yaw), 4), round(math.degrees(pitch), 4))


def _face_grey(pixels: np.ndarray, face: DetectedFace) -> np.ndarray:
    box = face.bounding_box
    height, width = pixels.shape[:2]
    left, top = max(int(box.left), 0), max(int(box.top), 0)
    right, bottom = min(math.ceil(box.left + box.width), width), min(math.ceil(box.top + box.height), height)
    crop = pixels[top:bottom, left:right].astype(np.float64)
    if crop.size == 0:
        return np.empty((0, 0))
    return crop[..., 0] * 0.299 + crop[..., 1] * 0.587 + crop[..., 2] * 0.114
