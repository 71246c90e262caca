"""The compute limit: Candor's models alone, in this process, photo by photo (decode, detect, embed)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

from candor.core import settings
from candor.core.faces import DetectedFace
from candor.vision.images import decode_image
from candor.vision.models import load_models

T = TypeVar("T")


@dataclass
class CandorPhoto:
    path: Path
    decode_ms: float
    detect_ms: float
    embed_ms: float  # align + embed every face found
    faces: list[DetectedFace]  # in the original upright image's pixels
    embeddings: np.ndarray  # one L2-normalised row per face, same order

    @property
    def total_ms(self) -> float:
        return self.decode_ms + self.detect_ms + self.embed_ms


@dataclass
class ComputeLimit:
    photos: list[CandorPhoto]

    @property
    def seconds(self) -> float:
        return sum(photo.total_ms for photo in self.photos) / 1000

    @property
    def photos_per_s(self) -> float:
        return len(self.photos) / self.seconds

    @property
    def faces_per_s(self) -> float:
        return sum(len(photo.faces) for photo in self.photos) / self.seconds

    def mean_ms(self, step: str) -> float:
        return statistics.fmean(getattr(photo, f"{step}_ms") for photo in self.photos)


def _median_ms(run: Callable[[], T], repeat: int) -> tuple[T, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        times.append((time.perf_counter() - started) * 1000)
    return result, statistics.median(times)


def measure_compute_limit(paths: Sequence[Path], model_dir: Path, repeat: int = 3) -> ComputeLimit:
    """Each photo as the pipeline handles it (same settings), median of `repeat` runs per step: a shared
    machine disturbs single runs."""
    detector, embedder = load_models(model_dir)
    # Warm-up: onnxruntime's first runs allocate and pick kernels; that is cold start, measured elsewhere.
    warm = decode_image(paths[0].read_bytes(), settings.MAX_OBJECT_IMAGE_BYTES)
    embedder.embed_faces(warm.pixels, detector.detect(warm.pixels, min_confidence=settings.MIN_DETECTION_CONFIDENCE))
    photos = []
    for path in paths:
        data = path.read_bytes()
        image, decode_ms = _median_ms(partial(decode_image, data, settings.MAX_OBJECT_IMAGE_BYTES), repeat)
        detect = partial(
            detector.detect,
            image.pixels,
            max_faces=settings.MAX_FACES,
            min_confidence=settings.MIN_DETECTION_CONFIDENCE,
        )
        faces, detect_ms = _median_ms(detect, repeat)
        vectors, embed_ms = _median_ms(partial(embedder.embed_faces, image.pixels, faces), repeat)
        photos.append(
            CandorPhoto(
                path=path,
                decode_ms=decode_ms,
                detect_ms=detect_ms,
                embed_ms=embed_ms,
                faces=[image.to_original(face) for face in faces],
                embeddings=np.asarray(vectors),
            )
        )
    return ComputeLimit(photos)


@dataclass(frozen=True)
class Pass:
    """One pass over the photos, decode + detect + embed each: seconds per photo, wall and CPU (CPU time of
    all this process's threads: what a busy machine inflates least)."""

    wall_s: float
    cpu_s: float


def timed_pass(paths: Sequence[Path], model_dir: Path) -> Pass:
    """Quick enough to bracket another measurement with, so that both see the same load on a shared machine."""
    detector, embedder = load_models(model_dir)
    wall, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        image = decode_image(path.read_bytes(), settings.MAX_OBJECT_IMAGE_BYTES)
        faces = detector.detect(
            image.pixels, max_faces=settings.MAX_FACES, min_confidence=settings.MIN_DETECTION_CONFIDENCE
        )
        embedder.embed_faces(image.pixels, faces)
    return Pass((time.perf_counter() - wall) / len(paths), (time.process_time() - cpu) / len(paths))
