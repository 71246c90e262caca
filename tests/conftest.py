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
def no_face_samples_dir() -> Path:
    """The detector's check photos (animals, objects, two people), as the setup step cached them."""
    from candor_local.packaging.models import NO_FACE_SAMPLES, NO_FACE_SAMPLES_DIR

    missing = [photo.name for photo in NO_FACE_SAMPLES if not (NO_FACE_SAMPLES_DIR / photo.name).is_file()]
    if missing:
        pytest.fail(f"photos missing from {NO_FACE_SAMPLES_DIR}: {missing}; run `bash scripts/setup.sh` first")
    return NO_FACE_SAMPLES_DIR


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


# A failing test that ran on the local runtime shows the end of each function's log in its report: what a
# worker did (or raised) is otherwise gone with the runtime's temporary folder, on CI above all.
LOG_TAIL_LINES = 25


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    from candor_local.emulator.runtime import LocalEnvironment

    funcargs = getattr(item, "funcargs", {})
    for env in {id(v): v for v in funcargs.values() if isinstance(v, LocalEnvironment)}.values():
        for log in sorted(env.log_dir.glob("*.log")):
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
            if lines:
                tail = "\n".join(lines[-LOG_TAIL_LINES:])
                report.sections.append((f"{log.name} (last {LOG_TAIL_LINES} lines)", tail))
