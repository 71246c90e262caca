"""A detected face to the square RGB crop an embedder takes (160x160 for FaceNet, 112x112 for SFace).

Three ways are offered and measured in benchmarks/preprocessing.py: the detector's box plus a margin
resized to a square regardless of its aspect ratio (what FaceNet's own MTCNN pipeline fed it, and the
default), a square crop around the box, and a similarity transform (rotation, uniform scale, shift)
taking the five landmarks onto a fixed template. The crop geometry is part of what an embedding means:
vectors made with different crops must not be compared."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from candor.core.faces import DetectedFace

FACE_SIZE = 160

# ArcFace's (insightface) reference points for a 112x112 crop, in LANDMARK_TYPES order:
# image-left eye, image-right eye, nose tip, image-left and image-right mouth corners.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

# Shrinking by more than this in one bilinear step skips source pixels (aliasing): the region is first
# resized with Pillow's antialiasing filter.
_MAX_DIRECT_SHRINK = 1.5


class Alignment(Protocol):
    """Where a face's crop comes from: a 3x3 matrix taking image pixels to crop pixels."""

    @property
    def name(self) -> str: ...

    def matrix(self, face: DetectedFace, size: int) -> np.ndarray: ...


@dataclass(frozen=True)
class BoxCrop:
    """A square around the box's centre, its side the box's longer side plus `margin` of it on each side."""

    margin: float = 0.0

    @property
    def name(self) -> str:
        return f"box-margin-{self.margin:.2f}"

    def matrix(self, face: DetectedFace, size: int) -> np.ndarray:
        box = face.bounding_box
        side = max(box.width, box.height, 1.0) * (1.0 + 2.0 * self.margin)
        centre_x = box.left + box.width / 2.0
        centre_y = box.top + box.height / 2.0
        scale = size / side
        return np.array(
            [
                [scale, 0.0, size / 2.0 - scale * centre_x],
                [0.0, scale, size / 2.0 - scale * centre_y],
                [0.0, 0.0, 1.0],
            ]
        )


@dataclass(frozen=True)
class StretchedBoxCrop:
    """FaceNet's own crop: the box plus `margin_x` of its width left and right and `margin_y` of its height
    above and below, resized to a square WITHOUT keeping the aspect ratio. facenet's align_dataset_mtcnn
    did exactly that with MTCNN's (taller than wide) boxes, so the model learned horizontally stretched
    faces; measured, this beats both the square crop and the similarity alignment by a wide margin."""

    margin_x: float = 0.10
    margin_y: float = 0.05

    @property
    def name(self) -> str:
        return f"stretched-box-margin-{self.margin_x:.2f}-{self.margin_y:.2f}"

    def matrix(self, face: DetectedFace, size: int) -> np.ndarray:
        box = face.bounding_box
        width = max(box.width, 1.0) * (1.0 + 2.0 * self.margin_x)
        height = max(box.height, 1.0) * (1.0 + 2.0 * self.margin_y)
        centre_x = box.left + box.width / 2.0
        centre_y = box.top + box.height / 2.0
        return np.array(
            [
                [size / width, 0.0, size / 2.0 - size / width * centre_x],
                [0.0, size / height, size / 2.0 - size / height * centre_y],
                [0.0, 0.0, 1.0],
            ]
        )


@dataclass(frozen=True)
class FivePointAlignment:
    """Similarity transform (Umeyama) of the five landmarks onto ArcFace's template, scaled by
    `face_scale` about the crop's centre (1.0 = ArcFace's tight 112 crop stretched to the full size;
    smaller leaves more forehead, chin and ears, as FaceNet saw in training) and moved down by
    `shift_y` of the crop (positive shows more forehead)."""

    face_scale: float = 0.8
    shift_y: float = 0.0

    @property
    def name(self) -> str:
        suffix = f"-shift-{self.shift_y:.2f}" if self.shift_y else ""
        return f"five-point-scale-{self.face_scale:.2f}{suffix}"

    def template(self, size: int) -> np.ndarray:
        unit = size / 112.0
        points = (ARCFACE_TEMPLATE_112 - 56.0) * self.face_scale * unit + size / 2.0
        points[:, 1] += self.shift_y * size
        return points

    def matrix(self, face: DetectedFace, size: int) -> np.ndarray:
        source = np.asarray(face.landmarks, dtype=np.float64)
        if source.shape != (5, 2) or not np.all(np.isfinite(source)):
            return StretchedBoxCrop().matrix(face, size)
        transform = similarity_transform(source, self.template(size))
        if transform is None:
            # Landmarks on top of one another: nothing to align, fall back to the box.
            return StretchedBoxCrop().matrix(face, size)
        return transform


# Chosen by benchmarks/preprocessing.py (docs/benchmarks-preprocessing.md): the middle of the plateau of
# margins (x 0.05-0.15, y 0.05-0.10) that separate every same-person pair from every different-person pair.
DEFAULT_ALIGNMENT: Alignment = StretchedBoxCrop(margin_x=0.10, margin_y=0.05)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray | None:
    """The least-squares rotation + uniform scale + translation taking `source` points onto `target`
    (Umeyama 1991, no reflection), as a 3x3 matrix; None when the source points do not span a plane."""
    count = source.shape[0]
    source_mean = source.mean(axis=0)
    target_mean = target.mean(axis=0)
    source_centred = source - source_mean
    target_centred = target - target_mean
    source_variance = float((source_centred**2).sum() / count)
    if source_variance < 1e-9:
        return None
    covariance = target_centred.T @ source_centred / count
    u, singular, vt = np.linalg.svd(covariance)
    signs = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        signs[-1] = -1.0
    rotation = u @ np.diag(signs) @ vt
    scale = float((singular * signs).sum() / source_variance)
    matrix = np.eye(3)
    matrix[:2, :2] = scale * rotation
    matrix[:2, 2] = target_mean - scale * rotation @ source_mean
    return matrix


def align_face(
    image: np.ndarray | Image.Image,
    face: DetectedFace,
    alignment: Alignment = DEFAULT_ALIGNMENT,
    size: int = FACE_SIZE,
) -> np.ndarray:
    """One face as a size x size x 3 float32 RGB crop (0..255); outside the image is black."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return warp(picture, alignment.matrix(face, size), size)


def align_faces(
    image: np.ndarray | Image.Image,
    faces: Sequence[DetectedFace],
    alignment: Alignment = DEFAULT_ALIGNMENT,
    size: int = FACE_SIZE,
    antialias: bool = True,
) -> np.ndarray:
    """All faces of one image as an N x size x size x 3 float32 batch (the image is wrapped once)."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    crops = np.zeros((len(faces), size, size, 3), dtype=np.float32)
    for i, face in enumerate(faces):
        crops[i] = warp(picture, alignment.matrix(face, size), size, antialias=antialias)
    return crops


def warp(picture: Image.Image, matrix: np.ndarray, size: int, antialias: bool = True) -> np.ndarray:
    """Apply an image-to-crop affine matrix with Pillow. A face much larger than the crop is first
    shrunk with an antialiasing filter: bilinear sampling alone would skip pixels and alias."""
    picture = picture.convert("RGB") if picture.mode != "RGB" else picture
    shrink = 1.0 / math.sqrt(abs(float(np.linalg.det(matrix[:2, :2]))) or 1.0)
    if antialias and shrink > _MAX_DIRECT_SHRINK:
        picture, matrix = _prescale(picture, matrix, size, shrink)
    inverse = np.linalg.inv(matrix)
    coefficients = tuple(float(v) for v in inverse[:2].ravel())
    crop = picture.transform(
        (size, size), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)
    )
    return np.asarray(crop, dtype=np.float32)


def _prescale(picture: Image.Image, matrix: np.ndarray, size: int, shrink: float) -> tuple[Image.Image, np.ndarray]:
    """Cut out the region the crop covers and resize it so one of its pixels is about one crop pixel."""
    inverse = np.linalg.inv(matrix)
    corners = inverse @ np.array([[0, size, 0, size], [0, 0, size, size], [1, 1, 1, 1]], dtype=np.float64)
    left, top = np.floor(corners[:2].min(axis=1)).astype(int) - 1
    right, bottom = np.ceil(corners[:2].max(axis=1)).astype(int) + 1
    region = picture.crop((int(left), int(top), int(right), int(bottom)))
    width = max(1, round((right - left) / shrink))
    height = max(1, round((bottom - top) / shrink))
    region = region.resize((width, height), Image.Resampling.BILINEAR)
    # Region pixels from image pixels: shift to the region's corner, then scale.
    to_region = np.array(
        [
            [width / (right - left), 0.0, -left * width / (right - left)],
            [0.0, height / (bottom - top), -top * height / (bottom - top)],
            [0.0, 0.0, 1.0],
        ]
    )
    return region, matrix @ np.linalg.inv(to_region)
