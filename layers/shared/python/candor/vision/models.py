"""Load the two models once per process (a Lambda container keeps them between invocations)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from candor import settings
from candor.vision.detector import FaceDetector
from candor.vision.embedder import FaceEmbedder


class ModelNotFoundError(FileNotFoundError):
    """A model file is not where the settings say: the machine has not been set up."""


def model_paths(model_dir: Path) -> tuple[Path, Path]:
    """(detector, embedder) files in `model_dir`, refusing with the setup command if either is missing."""
    detector = model_dir / settings.DETECTOR_FILE
    embedder = model_dir / settings.EMBEDDER_FILE
    missing = [path for path in (detector, embedder) if not path.is_file()]
    if missing:
        names = ", ".join(str(path) for path in missing)
        raise ModelNotFoundError(
            f"Model file not found: {names}. Run `bash scripts/setup.sh` to fetch and check the models, "
            "or set MODEL_DIR to the folder that holds them."
        )
    return detector, embedder


def load_models(model_dir: Path | str, intra_op_threads: int = 0) -> tuple[FaceDetector, FaceEmbedder]:
    """The detector and the embedder for `model_dir`, built on first use and shared afterwards."""
    return _load_models(Path(model_dir).expanduser().resolve(), intra_op_threads)


@lru_cache(maxsize=4)
def _load_models(model_dir: Path, intra_op_threads: int) -> tuple[FaceDetector, FaceEmbedder]:
    detector_path, embedder_path = model_paths(model_dir)
    return FaceDetector(detector_path, intra_op_threads), FaceEmbedder(embedder_path, intra_op_threads)
