"""Shared fixtures: the labelled photos beside the project, and the models the setup step cached."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from candor.settings import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT.parent / "shared" / "data" / "faces"


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    if not FACES.is_dir():
        pytest.fail(f"the labelled photos are missing: expected {FACES} (shared/ beside the project)")
    return FACES


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return Path(os.environ.get("MODEL_DIR") or DEFAULT_MODEL_DIR)


@pytest.fixture(scope="session")
def models(model_dir: Path):  # type: ignore[no-untyped-def]
    from candor.vision import load_models

    return load_models(model_dir)
