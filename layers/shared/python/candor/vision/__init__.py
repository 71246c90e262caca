"""Face detection (YuNet), alignment and embedding (SFace or FaceNet) with onnxruntime, Pillow and numpy only."""

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
from candor.vision.embedder import (
    EMBEDDER_MODELS,
    FACENET,
    SFACE,
    EmbedderModel,
    FaceEmbedder,
    default_embedder_model,
    prewhiten,
)
from candor.vision.models import (
    ModelNotFoundError,
    load_detector,
    load_embedder,
    load_embedder_version,
    load_models,
)

__all__ = [
    "DEFAULT_ALIGNMENT",
    "EMBEDDER_MODELS",
    "FACENET",
    "FACE_SIZE",
    "SFACE",
    "Alignment",
    "BoxCrop",
    "EmbedderModel",
    "FaceDetector",
    "FaceEmbedder",
    "FivePointAlignment",
    "ModelNotFoundError",
    "StretchedBoxCrop",
    "align_face",
    "align_faces",
    "default_embedder_model",
    "load_detector",
    "load_embedder",
    "load_embedder_version",
    "load_models",
    "prewhiten",
]
