"""Load the models once per process (a Lambda container keeps them between invocations)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from candor.core import settings
from candor.vision.detector import FaceDetector
from candor.vision.embedder import EMBEDDER_MODELS, FaceEmbedder


class ModelNotFoundError(FileNotFoundError):
    """A model file is not where the settings say: the machine has not been set up."""


def _require(model_dir: Path, *names: str) -> list[Path]:
    """The files `names` in `model_dir`, refusing with the setup command if any is missing."""
    paths = [model_dir / name for name in names]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        listed = ", ".join(str(path) for path in missing)
        raise ModelNotFoundError(
            f"Model file not found: {listed}. Run `bash scripts/setup.sh` to fetch and check the models, "
            "or set MODEL_DIR to the folder that holds them (on AWS: MODEL_BUCKET, see README 'Deploy to AWS')."
        )
    return paths


def model_paths(model_dir: Path) -> tuple[Path, Path]:
    """(detector, embedder) files in `model_dir`, refusing with the setup command if either is missing."""
    detector, embedder = _require(model_dir, settings.DETECTOR_FILE, settings.EMBEDDER_FILE)
    return detector, embedder


def load_models(model_dir: Path | str, intra_op_threads: int = 0) -> tuple[FaceDetector, FaceEmbedder]:
    """The detector and the embedder for `model_dir`, built on first use and shared afterwards."""
    return _load_models(Path(model_dir).expanduser().resolve(), intra_op_threads)


def load_detector(model_dir: Path | str, intra_op_threads: int = 0) -> FaceDetector:
    """The detector alone (DetectFunction never pays for FaceNet's 94 MB)."""
    return _load_detector(Path(model_dir).expanduser().resolve(), intra_op_threads)


def load_embedder(model_dir: Path | str, intra_op_threads: int = 0) -> FaceEmbedder:
    """The embedder alone."""
    return _load_embedder(Path(model_dir).expanduser().resolve(), intra_op_threads)


@lru_cache(maxsize=4)
def _load_models(model_dir: Path, intra_op_threads: int) -> tuple[FaceDetector, FaceEmbedder]:
    model_paths(model_dir)  # both missing files named in one error
    return _load_detector(model_dir, intra_op_threads), _load_embedder(model_dir, intra_op_threads)


@lru_cache(maxsize=4)
def _load_detector(model_dir: Path, intra_op_threads: int) -> FaceDetector:
    (path,) = _require(model_dir, settings.DETECTOR_FILE)
    return FaceDetector(path, intra_op_threads)


def load_embedder_version(model_dir: Path | str, version: str, intra_op_threads: int = 0) -> FaceEmbedder:
    """The embedder of one model version (a collection's FaceModelVersion), whatever the default is."""
    if version not in EMBEDDER_MODELS:
        raise ValueError(f"unknown face model version {version!r}; known: {sorted(EMBEDDER_MODELS)}")
    return _load_embedder(Path(model_dir).expanduser().resolve(), intra_op_threads, version)


@lru_cache(maxsize=4)
def _load_embedder(model_dir: Path, intra_op_threads: int, version: str = settings.EMBEDDER_VERSION) -> FaceEmbedder:
    model = EMBEDDER_MODELS[version]
    (path,) = _require(model_dir, model.file)
    return FaceEmbedder(path, intra_op_threads, model=model)
