"""Where a function finds its model files. The model layer carries what fits in Lambda's 250 MB zip limit
(the runtime and YuNet, /opt/models); the embedder (SFace, 39 MB) would push Embed and Search past it, so on AWS it
comes from the model bucket: fetched once per cold start into /tmp and checked against its pinned sha256.
Locally MODEL_DIR holds every file and nothing is fetched."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from candor.core import settings

# What `scripts/setup.sh` verified and the deploy uploads.
MODEL_SHA256 = {settings.DETECTOR_FILE: settings.DETECTOR_SHA256, settings.EMBEDDER_FILE: settings.EMBEDDER_SHA256}
# Lambda's only writable place; it outlives invocations of one instance, so a warm start fetches nothing.
FETCHED_MODEL_DIR = Path("/tmp/candor-models")


class ModelSource(Protocol):
    """Somewhere model files can be fetched from by name (the model bucket on AWS)."""

    def fetch(self, name: str, destination: Path) -> None: ...


class ModelChecksumError(RuntimeError):
    """A fetched model file is not the pinned one: it is never loaded."""


def model_dir_with(
    names: Sequence[str], model_dir: Path, source: ModelSource | None, fetched_dir: Path = FETCHED_MODEL_DIR
) -> Path:
    """A folder holding every file in `names`: `model_dir` when it has them all, else `fetched_dir`, which
    gets links to the files `model_dir` has and the others from `source`. Without a source the missing
    files are left to `load_models`, which names them and the setup command."""
    missing = [name for name in names if not (model_dir / name).is_file()]
    if not missing or source is None:
        return model_dir
    fetched_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = fetched_dir / name
        if target.is_file():
            continue
        if name not in missing:
            target.symlink_to(model_dir / name)
            continue
        partial = target.with_name(f".{name}.{os.getpid()}.part")
        source.fetch(name, partial)
        expected = MODEL_SHA256.get(name)
        if expected is not None and _sha256(partial) != expected:
            partial.unlink()
            raise ModelChecksumError(f"{name} from the model bucket does not have the pinned sha256 {expected}")
        partial.replace(target)  # atomic: a half-written file is never seen as a model
    return fetched_dir


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
