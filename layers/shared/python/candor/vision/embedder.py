"""Face embeddings in onnxruntime: one class for every embedding model, each described by an EmbedderModel
(its file, the crop it was trained on, and how pixels enter the network)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from candor.core import settings
from candor.core.faces import DetectedFace
from candor.vision.align import Alignment, FivePointAlignment, StretchedBoxCrop, align_faces
from candor.vision.detector import create_session


@dataclass(frozen=True)
class EmbedderModel:
    """What one embedding model needs. `version` names the model and its crop together: vectors of two
    versions are never compared (a collection keeps the version it was created with)."""

    version: str
    file: str
    sha256: str
    embedding_size: int
    face_size: int
    alignment: Alignment
    # How the crop (RGB, 0..255) becomes the network's input.
    channels_first: bool
    bgr: bool
    # Standardise each crop by its own mean and deviation (FaceNet); otherwise raw 0..255 values go in and
    # the network normalises them itself (SFace's graph starts with (x - 127.5) / 128).
    prewhiten: bool


FACENET = EmbedderModel(
    version=settings.FACENET_VERSION,
    file=settings.FACENET_FILE,
    sha256=settings.FACENET_SHA256,
    embedding_size=512,
    face_size=160,
    # FaceNet's own crop: the box plus a margin, stretched to a square (candor/vision/align.py).
    alignment=StretchedBoxCrop(margin_x=0.10, margin_y=0.05),
    channels_first=False,
    bgr=False,
    prewhiten=True,
)
SFACE = EmbedderModel(
    version=settings.SFACE_VERSION,
    file=settings.SFACE_FILE,
    sha256=settings.SFACE_SHA256,
    embedding_size=128,
    face_size=112,
    # The five landmarks onto ArcFace's 112x112 template, as OpenCV's FaceRecognizerSF.alignCrop does.
    alignment=FivePointAlignment(face_scale=1.0),
    channels_first=True,
    bgr=True,
    prewhiten=False,
)
EMBEDDER_MODELS = {model.version: model for model in (FACENET, SFACE)}


def default_embedder_model() -> EmbedderModel:
    """The model new collections get (settings.EMBEDDER_VERSION)."""
    return EMBEDDER_MODELS[settings.EMBEDDER_VERSION]


def prewhiten(faces: np.ndarray) -> np.ndarray:
    """Standardise each face by its own mean and standard deviation, as FaceNet was trained; the floor on
    the deviation keeps a flat (all one colour) crop finite."""
    values = faces.astype(np.float32, copy=False)
    axes = tuple(range(1, values.ndim))
    mean = values.mean(axis=axes, keepdims=True)
    std = values.std(axis=axes, keepdims=True)
    floor = 1.0 / math.sqrt(values[0].size)
    return ((values - mean) / np.maximum(std, floor)).astype(np.float32)


class FaceEmbedder:
    """N aligned crops (N x size x size x 3, RGB, 0..255) to N unit vectors: cosine similarity is a dot product."""

    def __init__(
        self,
        model_path: Path,
        intra_op_threads: int = 0,
        batch_size: int = settings.EMBED_BATCH_SIZE,
        model: EmbedderModel | None = None,
        alignment: Alignment | None = None,
    ) -> None:
        self.model = model or default_embedder_model()
        self.session = create_session(model_path, intra_op_threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.batch_size = max(1, batch_size)
        self.alignment = alignment or self.model.alignment
        self.version = self.model.version
        self.embedding_size = self.model.embedding_size
        self.input_size = (self.model.face_size, self.model.face_size)

    def network_input(self, faces: np.ndarray) -> np.ndarray:
        """Crops as the network wants them: colour order, layout and normalisation of its training."""
        values = faces[..., ::-1] if self.model.bgr else faces
        values = prewhiten(values) if self.model.prewhiten else values.astype(np.float32)
        if self.model.channels_first:
            values = values.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(values, dtype=np.float32)

    def embed(self, faces: np.ndarray) -> np.ndarray:
        """Embed aligned crops in batches of at most `batch_size`."""
        if faces.ndim != 4 or faces.shape[1:] != (*self.input_size, 3):
            size = self.model.face_size
            raise ValueError(f"expected N x {size} x {size} x 3 face crops, got {faces.shape}")
        embeddings = np.zeros((faces.shape[0], self.embedding_size), dtype=np.float32)
        for start in range(0, faces.shape[0], self.batch_size):
            batch = self.network_input(faces[start : start + self.batch_size])
            (output,) = self.session.run([self.output_name], {self.input_name: batch})
            embeddings[start : start + batch.shape[0]] = output
        # Normalised here even where the graph does it, so float32 rounding never drifts a dot product past 1.
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        return embeddings / np.maximum(norms, 1e-12)

    def embed_faces(self, image: np.ndarray | Image.Image, faces: Sequence[DetectedFace]) -> np.ndarray:
        """Align each detected face of `image` (in that image's pixels) and embed them."""
        if not faces:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        return self.embed(face_crops(image, faces, self.model, self.alignment))


def face_crops(
    image: np.ndarray | Image.Image,
    faces: Sequence[DetectedFace],
    model: EmbedderModel,
    alignment: Alignment | None = None,
) -> np.ndarray:
    """The crops `model` embeds (N x size x size x 3, float32 holding 0..255 integers): what the detect stage
    cuts from the photo it decoded, so that the embed stage need not decode it again."""
    return align_faces(image, faces, alignment or model.alignment, model.face_size)
