"""FaceNet (Inception-ResNet-v1, 20180408-102900) embeddings in onnxruntime."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from candor import settings
from candor.faces import DetectedFace
from candor.vision.align import DEFAULT_ALIGNMENT, FACE_SIZE, Alignment, align_faces
from candor.vision.detector import create_session


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
    """N x 160 x 160 x 3 RGB crops (0..255) to N x 512 unit vectors: cosine similarity is a dot product."""

    input_size = (FACE_SIZE, FACE_SIZE)
    embedding_size = settings.EMBEDDING_SIZE
    version = settings.EMBEDDER_VERSION

    def __init__(
        self,
        model_path: Path,
        intra_op_threads: int = 0,
        batch_size: int = settings.EMBED_BATCH_SIZE,
        alignment: Alignment = DEFAULT_ALIGNMENT,
    ) -> None:
        self.session = create_session(model_path, intra_op_threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.batch_size = max(1, batch_size)
        self.alignment = alignment

    def embed(self, faces: np.ndarray) -> np.ndarray:
        """Embed aligned crops (N x 160 x 160 x 3, RGB, 0..255), prewhitened here, in batches."""
        if faces.ndim != 4 or faces.shape[1:] != (*self.input_size, 3):
            raise ValueError(f"expected N x {FACE_SIZE} x {FACE_SIZE} x 3 face crops, got {faces.shape}")
        embeddings = np.zeros((faces.shape[0], self.embedding_size), dtype=np.float32)
        for start in range(0, faces.shape[0], self.batch_size):
            batch = prewhiten(faces[start : start + self.batch_size])
            (output,) = self.session.run([self.output_name], {self.input_name: batch})
            embeddings[start : start + batch.shape[0]] = output
        # The graph normalises already; again here so float32 rounding never drifts a dot product past 1.
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        return embeddings / np.maximum(norms, 1e-12)

    def embed_faces(self, image: np.ndarray | Image.Image, faces: Sequence[DetectedFace]) -> np.ndarray:
        """Align each detected face of `image` (in that image's pixels) and embed them: N x 512."""
        if not faces:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        return self.embed(align_faces(image, faces, self.alignment))
