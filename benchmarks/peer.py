"""The peer, face_recognition (dlib), in a virtualenv of its own so it never enters Candor's runtime or test
dependencies. Created on first use from PyPI with pinned versions; run in a subprocess that prints JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

PEER_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "candor" / "peer-venv"
# dlib-bin is a prebuilt dlib; face_recognition itself is installed without its dependencies because it
# names the source package `dlib`, which would be compiled. setuptools < 81 keeps pkg_resources, which
# face_recognition_models still imports.
PEER_PACKAGES = (
    "dlib-bin==20.0.1.post1",
    "face_recognition_models==0.3.0",
    "numpy==2.4.6",
    "pillow==13.0.0",
    "click==8.3.1",
    "setuptools==80.9.0",
)
PEER_NO_DEPS = ("face_recognition==1.3.0",)
# The library's own default: faces match at a distance <= 0.6 (face_recognition.compare_faces).
PEER_DEFAULT_TOLERANCE = 0.6
_RUNNER = Path(__file__).with_name("peer_run.py")
_STAMP = "candor-peer.json"


@dataclass
class PeerPhoto:
    path: Path
    seconds: float
    cpu_seconds: float
    boxes: list[tuple[float, float, float, float]]  # left, top, width, height in pixels
    encodings: list[list[float]]


@dataclass
class PeerRun:
    version: str
    import_s: float
    photos: dict[Path, PeerPhoto]


def peer_python(venv_dir: Path = PEER_VENV) -> Path:
    """The peer venv's interpreter, creating the venv (minutes, once) when it is missing or out of date."""
    python = venv_dir / "bin" / "python"
    stamp = venv_dir / _STAMP
    wanted = sorted(PEER_PACKAGES + PEER_NO_DEPS)
    if python.exists() and stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return python
    print(f"bench: creating the peer's virtualenv in {venv_dir} (once) ...", file=sys.stderr)
    venv.EnvBuilder(clear=True, with_pip=True).create(venv_dir)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *PEER_PACKAGES], check=True)
    subprocess.run([*pip, "--no-deps", *PEER_NO_DEPS], check=True)
    stamp.write_text(json.dumps(wanted))
    return python


def run_peer(paths: list[Path], venv_dir: Path = PEER_VENV, timeout_s: float = 1800.0) -> PeerRun:
    python = peer_python(venv_dir)
    result = subprocess.run(
        [str(python), str(_RUNNER)],
        input=json.dumps([str(path) for path in paths]),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the peer failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    raw = json.loads(result.stdout)
    photos = {}
    for item in raw["photos"]:
        boxes = [(left, top, right - left, bottom - top) for top, right, bottom, left in item["boxes"]]
        photos[Path(item["path"])] = PeerPhoto(
            Path(item["path"]), item["seconds"], item["cpu_seconds"], boxes, item["encodings"]
        )
    return PeerRun(version=raw["version"], import_s=raw["import_s"], photos=photos)
