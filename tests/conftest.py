"""Shared fixtures: the labelled photos beside the project, and the models the setup step cached."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from candor.core.settings import DEFAULT_MODEL_DIR
from candor_local.emulator.moto_kms import honour_key_spec

# moto in this process (mock_aws) creates the template's signing key as the emulator's moto does.
honour_key_spec()

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
    from candor.vision.models import load_models

    return load_models(model_dir)


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """AWS mocked in this process (moto), with throwaway credentials and no endpoint from the caller."""
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield
