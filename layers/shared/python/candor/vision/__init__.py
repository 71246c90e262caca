"""Face detection (YuNet), alignment and embedding (FaceNet) with onnxruntime, Pillow and numpy only."""

from candor.vision.align import (
    DEFAULT_ALIGNMENT,
    FACE_SIZE,
    Alignment,
    BoxCrop,
    FivePointAlignment,
    StretchedBoxCrop,
    align_face,
    align_faces,
)
from candor.vision.detector import FaceDetector
from candor.vision.embedder import FaceEmbedder, prewhiten
from candor.vision.models import ModelNotFoundError, load_detector, load_embedder, load_models

__all__ = [
    "DEFAULT_ALIGNMENT",
    "FACE_SIZE",
    "Alignment",
    "BoxCrop",
    "FaceDetector",
    "FaceEmbedder",
    "FivePointAlignment",
    "ModelNotFoundError",
    "StretchedBoxCrop",
    "align_face",
    "align_faces",
    "load_detector",
    "load_embedder",
    "load_models",
    "prewhiten",
]
