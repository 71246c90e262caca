"""`candor bench accuracy`: verification accuracy and false-match rates on LFW, through the functions' code.

    candor bench accuracy --lfw ../shared/data/lfw [--json] [--peer] [--models VERSION,...] [--calibrate]

Every photo goes through what the functions run: decode_image, YuNet at the service's detection threshold,
the face LFW labels (the one nearest the photo's centre: LFW's photos are centred on their subject, and
some show a larger face of someone else), the model's alignment, the embedder. Known errors of LFW's
labels are corrected before pairs are counted: one person under two names counts as one
(benchmarks/lfw_aliases.txt), and a photograph filed under two names, or showing someone else, is left out
of the all-pairs figures (benchmarks/lfw_excluded.txt; pairs.txt is scored as published).
Then:

- all pairs of photos: same person (genuine) and different people (impostor), FMR and FNMR at similarity
  80, 90 and 99, and the true-match rate (TAR) at a false-match rate of 1e-3, 1e-4 and 1e-5. A photo where
  no face is found takes part as a non-match: its genuine pairs count as missed, its impostor pairs as
  rejected;
- the 3,000 pairs of pairs.txt: accuracy at 80, the best accuracy over all thresholds, and the accuracy of
  a threshold chosen on four folds and applied to the fifth (cross-validated);
- `--calibrate`: the similarity scale of the model (candor/core/similarity.py) fitted to these impostor pairs
  and written to the package; a check fits it on half of the people and measures it on the other half;
- `--peer`: face_recognition on a stated random subset of the pairs' photos, with the same keys, and
  Candor's figures on the same subset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmarks.report import replace_section, table
from candor.core import settings, similarity
from candor.core.errors import CandorError
from candor.core.faces import BoundingBox, DetectedFace
from candor.vision.detector import FaceDetector
from candor.vision.embedder import EMBEDDER_MODELS, FaceEmbedder
from candor.vision.images import DecodedImage, decode_image
from candor.vision.models import load_detector, load_embedder_version
from candor_local.packaging.models import NO_FACE_SAMPLES, NO_FACE_SAMPLES_DIR, sample_photo_bytes

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LFW = REPO.parent / "shared" / "data" / "lfw"
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
SECTION_TITLE = "Accuracy on LFW"

SIMILARITIES = (80.0, 90.0, 99.0)
TAR_FMRS = (1e-3, 1e-4, 1e-5)
# Detection thresholds whose LFW detect rate and false positives are reported (the service uses one).
DETECTION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
PEER_DEFAULT_PHOTOS = 1200
PEER_SEED = 14


LFW_ALIASES = Path(__file__).with_name("lfw_aliases.txt")
# Photos left out of the all-pairs counts: one photograph filed under two names, or a photo of someone else.
LFW_EXCLUDED = Path(__file__).with_name("lfw_excluded.txt")


def read_excluded(path: Path) -> set[str]:
    """Photo names (Name_NNNN), one a line; '#' starts a comment."""
    return {line.split("#", 1)[0].strip() for line in path.read_text().splitlines()} - {""}


def read_aliases(path: Path) -> list[tuple[str, str]]:
    """(name, alias) pairs: lines of two LFW names of one person; '#' starts a comment."""
    pairs = []
    for line in path.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            if len(fields) != 2:
                raise SystemExit(f"bench accuracy: {path}: expected two names per line, got {line!r}")
            pairs.append((fields[0], fields[1]))
    return pairs


@dataclass
class Lfw:
    photos: list[Path]
    identities: np.ndarray  # one integer per photo
    names: list[str]  # one per identity
    pairs: list[tuple[int, int, bool, int]]  # photo index, photo index, same person, fold
    counted: np.ndarray  # per photo: whether its pairs count in the all-pairs figures (LFW_EXCLUDED)


def load_lfw(root: Path) -> Lfw:
    """The photos under images/<Name>/ and the pairs of pairs.txt, as indices into the photo list."""
    images = root / "images"
    if not images.is_dir() or not (root / "pairs.txt").is_file():
        raise SystemExit(f"bench accuracy: {root} is not an LFW folder (it needs images/<Name>/*.jpg and pairs.txt)")
    names = sorted(p.name for p in images.iterdir() if p.is_dir())
    # One person under two names counts as one identity (an alias takes its first name's number).
    same_as = {alias: name for name, alias in read_aliases(LFW_ALIASES) if name in names and alias in names}
    numbers = {name: number for number, name in enumerate(names)}
    photos: list[Path] = []
    identities: list[int] = []
    for name in names:
        for path in sorted((images / name).glob("*.jpg")):
            photos.append(path)
            identities.append(numbers[same_as.get(name, name)])
    index = {path.relative_to(images).as_posix(): i for i, path in enumerate(photos)}

    def photo(name: str, number: str) -> int:
        key = f"{name}/{name}_{int(number):04d}.jpg"
        if key not in index:
            raise SystemExit(f"bench accuracy: pairs.txt names {key}, which is not under {images}")
        return index[key]

    lines = (root / "pairs.txt").read_text().split("\n")
    folds, per_fold = (int(v) for v in lines[0].split())
    pairs: list[tuple[int, int, bool, int]] = []
    for number, line in enumerate(line for line in lines[1:] if line.strip()):
        fold = number // (2 * per_fold)
        fields = line.split()
        if len(fields) == 3:
            pairs.append((photo(fields[0], fields[1]), photo(fields[0], fields[2]), True, fold))
        elif len(fields) == 4:
            pairs.append((photo(fields[0], fields[1]), photo(fields[2], fields[3]), False, fold))
        else:
            raise SystemExit(f"bench accuracy: pairs.txt line {number + 2} is not a pair: {line!r}")
    if len(pairs) != folds * 2 * per_fold:
        raise SystemExit(f"bench accuracy: pairs.txt has {len(pairs)} pairs, its header says {folds * 2 * per_fold}")
    excluded = read_excluded(LFW_EXCLUDED)
    counted = np.array([photo.stem not in excluded for photo in photos])
    return Lfw(photos, np.asarray(identities, dtype=np.int64), names, pairs, counted)


# --------------------------------------------------------------------------------------- the functions' code


@dataclass
class Detections:
    faces: list[list[DetectedFace]]  # every face at the lowest reported threshold, largest first
    seconds: float
    failed: int  # photos that could not be decoded


def detect_all(photos: Sequence[Path], detector: FaceDetector) -> Detections:
    started = time.perf_counter()
    lowest = min(DETECTION_THRESHOLDS)
    faces: list[list[DetectedFace]] = []
    failed = 0
    for path in tqdm(photos, desc="detect", unit="photo", file=sys.stderr, mininterval=2.0):
        try:
            image = decode_image(path.read_bytes(), settings.MAX_OBJECT_IMAGE_BYTES)
        except CandorError:
            failed += 1
            faces.append([])
            continue
        found = detector.detect(image.pixels, max_faces=settings.MAX_FACES, min_confidence=lowest)
        faces.append([image.to_original(face) for face in found])
    return Detections(faces, time.perf_counter() - started, failed)


def _fingerprint(photos: Sequence[Path], *parts: object) -> str:
    """Names a cache entry: the photos (path, size, time) and what the figures depend on."""
    digest = hashlib.sha256(repr(parts).encode())
    for path in photos:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def cached_detections(photos: Sequence[Path], detector: FaceDetector, cache: Path | None) -> Detections:
    """detect_all, or what an earlier run with the same photos and detector left in `cache` (--cache)."""
    path = cache / f"detections-{_fingerprint(photos, detector.version, DETECTION_THRESHOLDS)}.json" if cache else None
    if path is not None and path.is_file():
        data = json.loads(path.read_text())
        print(f"bench accuracy: detections from {path} (measured {data['seconds']:.0f} s)", file=sys.stderr)
        return Detections([[DetectedFace.from_dict(f) for f in faces] for faces in data["faces"]], data["seconds"], 0)
    detections = detect_all(photos, detector)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        faces = [[face.to_dict() for face in found] for found in detections.faces]
        path.write_text(json.dumps({"seconds": detections.seconds, "faces": faces}))
    return detections


def cached_embeddings(
    photos: Sequence[Path], detections: Detections, embedder: FaceEmbedder, min_confidence: float, cache: Path | None
) -> tuple[np.ndarray, np.ndarray, float]:
    """embed_all, or an earlier run's from `cache` (--cache)."""
    key = _fingerprint(photos, embedder.version, min_confidence, settings.DETECTOR_VERSION, "centre-face")
    path = cache / f"embeddings-{key}.npz" if cache else None
    if path is not None and path.is_file():
        data = np.load(path)
        print(f"bench accuracy: {embedder.version} embeddings from {path}", file=sys.stderr)
        return data["vectors"], data["has_face"], float(data["seconds"])
    vectors, has_face, seconds = embed_all(photos, detections, embedder, min_confidence)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, vectors=vectors, has_face=has_face, seconds=seconds)
    return vectors, has_face, seconds


def labelled_faces(
    photos: Sequence[Path], detections: Detections, min_confidence: float, desc: str
) -> Iterator[tuple[int, DecodedImage, DetectedFace]]:
    """(photo index, decoded photo, its labelled face) for every photo with one, with a progress bar."""
    for i, path in enumerate(tqdm(photos, desc=desc, unit="photo", file=sys.stderr, mininterval=2.0)):
        if not detections.faces[i]:
            continue
        image = decode_image(path.read_bytes(), settings.MAX_OBJECT_IMAGE_BYTES)
        face = chosen_face(detections.faces[i], min_confidence, image.width, image.height)
        if face is not None:
            yield i, image, face


def chosen_face(
    faces: Sequence[DetectedFace], min_confidence: float, width: float, height: float
) -> DetectedFace | None:
    """The face LFW labels: of those at or above the service's detection threshold, the nearest to the
    photo's centre."""
    kept = [face for face in faces if face.confidence >= min_confidence]
    return min(kept, key=lambda face: _off_centre(face.bounding_box, width, height)) if kept else None


def _off_centre(box: Any, width: float, height: float) -> float:
    return float(np.hypot(box.left + box.width / 2 - width / 2, box.top + box.height / 2 - height / 2))


def embed_all(
    photos: Sequence[Path], detections: Detections, embedder: FaceEmbedder, min_confidence: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """(embeddings, has_face, seconds): one unit vector per photo (zeros where no face was found)."""
    started = time.perf_counter()
    vectors = np.zeros((len(photos), embedder.embedding_size), dtype=np.float32)
    has_face = np.zeros(len(photos), dtype=bool)
    for i, image, face in labelled_faces(photos, detections, min_confidence, f"embed {embedder.version}"):
        vectors[i] = embedder.embed_faces(image.pixels, [face.scaled(1.0 / image.scale)])[0]
        has_face[i] = True
    return vectors, has_face, time.perf_counter() - started


# -------------------------------------------------------------------------------------------------- scoring


@dataclass
class Scores:
    genuine: np.ndarray  # sorted ascending; -inf where a photo had no face
    impostor: np.ndarray  # sorted ascending


def all_pair_scores(scores_of: Any, identities: np.ndarray, rows: np.ndarray | None = None) -> Scores:
    """Cosines of every pair of photos among `rows` (all by default), split by whether they show one person.
    `scores_of(a, b)` gives the score matrix of two index arrays."""
    rows = np.arange(len(identities)) if rows is None else rows
    genuine: list[np.ndarray] = []
    impostor: list[np.ndarray] = []
    block = 512
    for start in range(0, len(rows), block):
        top = rows[start : start + block]
        rest = rows[start:]
        matrix = scores_of(top, rest)
        # Only pairs (i, j) with j after i: the upper triangle of the full matrix.
        upper = np.arange(len(rest))[None, :] > np.arange(len(top))[:, None]
        same = identities[top][:, None] == identities[rest][None, :]
        genuine.append(matrix[upper & same])
        impostor.append(matrix[upper & ~same])
    return Scores(np.sort(np.concatenate(genuine)), np.sort(np.concatenate(impostor)))


def cosine_scores(vectors: np.ndarray, has_face: np.ndarray) -> Any:
    def scores_of(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        matrix = vectors[a] @ vectors[b].T
        matrix[~has_face[a], :] = -np.inf
        matrix[:, ~has_face[b]] = -np.inf
        return matrix

    return scores_of


def rate_at_or_above(sorted_scores: np.ndarray, threshold: float) -> float:
    if not len(sorted_scores):
        return float("nan")
    return float(len(sorted_scores) - np.searchsorted(sorted_scores, threshold, side="left")) / len(sorted_scores)


def tar_at_fmr(scores: Scores, fmr: float) -> float:
    """The share of genuine pairs above the lowest threshold that lets through at most `fmr` of impostors."""
    allowed = math.floor(fmr * len(scores.impostor))
    threshold = scores.impostor[-allowed - 1] if allowed < len(scores.impostor) else -np.inf
    # Strictly above: a genuine pair tied with the impostor that sets the threshold is not counted.
    return float(len(scores.genuine) - np.searchsorted(scores.genuine, threshold, side="right")) / len(scores.genuine)


def pair_accuracy(pair_scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(np.mean((pair_scores >= threshold) == same))


def best_threshold(pair_scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(accuracy, threshold) of the best cut-off over these pairs."""
    finite = np.unique(pair_scores[np.isfinite(pair_scores)])
    candidates = np.concatenate([[-np.inf], (finite[:-1] + finite[1:]) / 2, [np.inf]]) if len(finite) > 1 else finite
    accuracies = [(pair_accuracy(pair_scores, same, float(t)), float(t)) for t in candidates]
    return max(accuracies)


def cross_validated_accuracy(pair_scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> float:
    """Each fold scored at the threshold best on the other folds (LFW's protocol)."""
    correct = 0
    for fold in np.unique(folds):
        test = folds == fold
        _, threshold = best_threshold(pair_scores[~test], same[~test])
        correct += int(np.sum((pair_scores[test] >= threshold) == same[test]))
    return correct / len(same)


def verification_figures(
    scores: Scores,
    pair_scores: np.ndarray,
    same: np.ndarray,
    folds: np.ndarray,
    thresholds: dict[float, float],
) -> dict[str, Any]:
    """The figures of one matcher. `thresholds` maps a similarity (80, 90, 99) to the score it means."""
    result: dict[str, Any] = {}
    for similarity_value, threshold in thresholds.items():
        label = f"{similarity_value:g}"
        if similarity_value == 80.0:
            result["pairs_accuracy_at_80"] = round(pair_accuracy(pair_scores, same, threshold), 4)
        result[f"fmr_at_{label}"] = rate_at_or_above(scores.impostor, threshold)
        result[f"fnmr_at_{label}"] = 1.0 - rate_at_or_above(scores.genuine, threshold)
    best, _ = best_threshold(pair_scores, same)
    result["best_pairs_accuracy"] = round(best, 4)
    result["cv_pairs_accuracy"] = round(cross_validated_accuracy(pair_scores, same, folds), 4)
    for fmr in TAR_FMRS:
        result[f"tar_at_fmr_{fmr:.0e}".replace("e-0", "e-")] = round(tar_at_fmr(scores, fmr), 4)
    result["genuine_pairs"] = len(scores.genuine)
    result["impostor_pairs"] = len(scores.impostor)
    return result


# ------------------------------------------------------------------------------------------------ the scale


def calibration_check(
    vectors: np.ndarray, has_face: np.ndarray, identities: np.ndarray, model_version: str, counted: np.ndarray
) -> dict[str, Any]:
    """Fit the scale on half of the people and measure it on the other half (and the other way round):
    what the promised false-match rates are worth on people the fit never saw."""
    halves = np.array([int(hashlib.sha256(str(i).encode()).hexdigest(), 16) % 2 for i in identities])
    scores_of = cosine_scores(vectors, has_face)
    impostors = [
        all_pair_scores(scores_of, identities, np.flatnonzero((halves == h) & counted)).impostor for h in (0, 1)
    ]
    measured: dict[str, list[float]] = {f"{s:g}": [] for s in SIMILARITIES}
    for fit, test in ((0, 1), (1, 0)):
        scale = similarity.fit_calibration(impostors[fit], model_version)
        for s in SIMILARITIES:
            measured[f"{s:g}"].append(rate_at_or_above(impostors[test], scale.cosine_from_similarity(s)))
    return {
        "promised_fmr": {f"{s:g}": similarity.fmr_of_similarity(s) for s in SIMILARITIES},
        "measured_fmr_on_other_half": {label: values for label, values in measured.items()},
        "impostor_pairs_per_half": [len(v) for v in impostors],
    }


# ------------------------------------------------------------------------------------------------- the peer


def peer_subset(lfw: Lfw, photos: int, seed: int = PEER_SEED) -> list[int]:
    """Photo indices of randomly chosen pairs.txt pairs, about `photos` of them (seeded: the same each run)."""
    order = list(range(len(lfw.pairs)))
    random.Random(seed).shuffle(order)
    chosen: set[int] = set()
    for number in order:
        a, b, _, _ = lfw.pairs[number]
        if len(chosen) >= photos:
            break
        chosen.update((a, b))
    return sorted(chosen)


def run_peer(lfw: Lfw, subset: list[int]) -> tuple[np.ndarray, np.ndarray, float]:
    """face_recognition's encodings of the subset's photos (the face nearest the centre, as for Candor), and
    its seconds per photo."""
    from benchmarks.peer import run_peer as run_face_recognition

    run = run_face_recognition([lfw.photos[i] for i in subset], timeout_s=7200.0)
    encodings = np.zeros((len(lfw.photos), 128), dtype=np.float64)
    has_face = np.zeros(len(lfw.photos), dtype=bool)
    seconds = []
    for i in subset:
        peer_photo = run.photos[lfw.photos[i]]
        seconds.append(peer_photo.seconds)
        if peer_photo.boxes:
            with Image.open(lfw.photos[i]) as picture:
                width, height = picture.size
            boxes = [BoundingBox(*box) for box in peer_photo.boxes]
            nearest = min(range(len(boxes)), key=lambda k: _off_centre(boxes[k], width, height))
            encodings[i] = peer_photo.encodings[nearest]
            has_face[i] = True
    return encodings, has_face, float(np.mean(seconds))


def peer_scores(encodings: np.ndarray, has_face: np.ndarray) -> Any:
    """Scores for the peer: minus its Euclidean distance, so that higher means more alike."""

    def scores_of(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        diff = encodings[a][:, None, :] - encodings[b][None, :, :]
        matrix = -np.sqrt((diff**2).sum(axis=2))
        matrix[~has_face[a], :] = -np.inf
        matrix[:, ~has_face[b]] = -np.inf
        return matrix.astype(np.float32)

    return scores_of


# ------------------------------------------------------------------------------------------------- the run


def pairs_arrays(lfw: Lfw, keep: set[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rows = [p for p in lfw.pairs if keep is None or (p[0] in keep and p[1] in keep)]
    a = np.array([p[0] for p in rows])
    b = np.array([p[1] for p in rows])
    return a, b, np.array([p[2] for p in rows]), np.array([p[3] for p in rows])


def measure_model(
    lfw: Lfw,
    detections: Detections,
    model_dir: Path,
    version: str,
    min_confidence: float,
    threads: int,
    calibrate: bool,
    peer_rows: list[int] | None,
    cache: Path | None = None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    embedder = load_embedder_version(model_dir, version, threads)
    vectors, has_face, seconds = cached_embeddings(lfw.photos, detections, embedder, min_confidence, cache)
    scores = all_pair_scores(cosine_scores(vectors, has_face), lfw.identities, np.flatnonzero(lfw.counted))
    if calibrate:
        fitted = similarity.fit_calibration(scores.impostor, version)
        path = similarity.write_calibration(fitted, source=f"LFW development half, {len(lfw.photos)} photos")
        print(f"bench accuracy: wrote the similarity scale of {version} to {path}", file=sys.stderr)
    scale = similarity.calibration_for(version)
    thresholds = {s: scale.cosine_from_similarity(s) for s in SIMILARITIES}
    a, b, same, folds = pairs_arrays(lfw)
    pair_scores = np.where(has_face[a] & has_face[b], np.sum(vectors[a] * vectors[b], axis=1), -np.inf)
    result = verification_figures(scores, pair_scores, same, folds, thresholds)
    result["model"] = version
    result["detect_rate"] = round(float(has_face.mean()), 4)
    result["seconds"] = round(detections.seconds + seconds, 1)
    result["embed_ms_per_photo"] = round(1000 * seconds / len(lfw.photos), 2)
    result["calibration_check"] = calibration_check(vectors, has_face, lfw.identities, version, lfw.counted)
    if peer_rows is not None:
        keep = set(peer_rows)
        rows = np.asarray([i for i in peer_rows if lfw.counted[i]])
        sub_scores = all_pair_scores(cosine_scores(vectors, has_face), lfw.identities, rows)
        a, b, same, folds = pairs_arrays(lfw, keep)
        sub_pairs = np.where(has_face[a] & has_face[b], np.sum(vectors[a] * vectors[b], axis=1), -np.inf)
        result["on_peer_subset"] = verification_figures(sub_scores, sub_pairs, same, folds, thresholds)
    return result, vectors, has_face


# Crops tried for the default model with --variants: the template's scale about the crop's centre, and the
# crop's embedding averaged with its mirror image's (twice the embedding time).
VARIANTS = (("five-point 1.0 (the default)", 1.0, False), ("five-point 0.9", 0.9, False),
            ("five-point 1.1", 1.1, False), ("five-point 1.0 + mirror", 1.0, True))  # fmt: skip


def variant_figures(lfw: Lfw, detections: Detections, embedder: FaceEmbedder, min_confidence: float) -> dict[str, Any]:
    """The default model's figures with other crops, each on its own impostors' scale (fitted here)."""
    from candor.vision.align import FivePointAlignment, align_faces

    figures: dict[str, Any] = {}
    a, b, same, folds = pairs_arrays(lfw)
    for name, scale, mirror in VARIANTS:
        vectors = np.zeros((len(lfw.photos), embedder.embedding_size), dtype=np.float32)
        has_face = np.zeros(len(lfw.photos), dtype=bool)
        for i, image, face in labelled_faces(lfw.photos, detections, min_confidence, f"variant {name}"):
            crop = align_faces(image.pixels, [face.scaled(1.0 / image.scale)], FivePointAlignment(scale), 112)
            embedded = embedder.embed(np.concatenate([crop, crop[:, :, ::-1]]) if mirror else crop)
            vector = embedded.sum(axis=0)
            vectors[i], has_face[i] = vector / np.linalg.norm(vector), True
        scores = all_pair_scores(cosine_scores(vectors, has_face), lfw.identities, np.flatnonzero(lfw.counted))
        fitted = similarity.fit_calibration(scores.impostor, "variant")
        pair_scores = np.where(has_face[a] & has_face[b], np.sum(vectors[a] * vectors[b], axis=1), -np.inf)
        thresholds = {s: fitted.cosine_from_similarity(s) for s in SIMILARITIES}
        result = verification_figures(scores, pair_scores, same, folds, thresholds)
        keep = ("pairs_accuracy_at_80", "best_pairs_accuracy", "cv_pairs_accuracy", "fnmr_at_80", "fnmr_at_99",
                "tar_at_fmr_1e-3", "tar_at_fmr_1e-4", "tar_at_fmr_1e-5")  # fmt: skip
        figures[name] = {key: result[key] for key in keep}
    return figures


def detection_figures(
    detections: Detections, detector: FaceDetector, detect_dir: Path | None, no_face_dir: Path | None = None
) -> dict[str, Any]:
    """LFW detect rate per threshold; faces found on the photos of shared/data/faces/detect that no
    hand-drawn box covers (false positives), per threshold; and on the setup step's photos of animals and
    objects (faces found where there is none, and faces missed on its two photos of a person)."""
    per_threshold: dict[str, Any] = {}
    false_positives = _false_positives(detect_dir, detector) if detect_dir else {}
    scores = _sample_photo_scores(no_face_dir, detector) if no_face_dir and no_face_dir.is_dir() else {}
    for threshold in DETECTION_THRESHOLDS:
        found = np.mean([any(f.confidence >= threshold for f in faces) for faces in detections.faces])
        figures: dict[str, Any] = {"lfw_detect_rate": round(float(found), 4)}
        if false_positives:
            figures["false_positives_on_detect_photos"] = false_positives[threshold]
        if scores:
            counts = {name: sum(s >= threshold for s in boxes) for name, (_, _, boxes) in scores.items()}
            figures["faces_on_no_face_photos"] = sum(n for name, n in counts.items() if scores[name][1] == 0)
            figures["faces_missed_on_person_photos"] = sum(
                max(scores[name][1] - n, 0) for name, n in counts.items() if scores[name][1] > 0
            )
        per_threshold[f"{threshold:g}"] = figures
    result: dict[str, Any] = {"service_threshold": settings.MIN_DETECTION_CONFIDENCE, "by_threshold": per_threshold}
    if scores:
        result["sample_photos"] = {
            name: {"shows": shows, "faces": faces, "scores": [round(score, 3) for score in found]}
            for name, (shows, faces, found) in scores.items()
        }
    return result


def _false_positives(detect_dir: Path, detector: FaceDetector) -> dict[float, int]:
    from benchmarks.preprocessing import ground_truth, match  # training.xml's boxes, matched at IoU >= 0.5

    truth = ground_truth(detect_dir / "training.xml")
    counts = {threshold: 0 for threshold in DETECTION_THRESHOLDS}
    for name, boxes in truth.items():
        image = decode_image((detect_dir / name).read_bytes(), settings.MAX_OBJECT_IMAGE_BYTES)
        found = [
            image.to_original(face)
            for face in detector.detect(image.pixels, settings.MAX_FACES, min(DETECTION_THRESHOLDS))
        ]
        for threshold in DETECTION_THRESHOLDS:
            counts[threshold] += match(boxes, [face for face in found if face.confidence >= threshold])[1]
    return counts


def _sample_photo_scores(samples_dir: Path, detector: FaceDetector) -> dict[str, tuple[str, int, list[float]]]:
    """For each of the setup step's check photos: what it shows, its faces, and the detector's scores there
    (every box down to the lowest threshold measured)."""
    scores = {}
    for photo in NO_FACE_SAMPLES:
        image = decode_image(sample_photo_bytes(photo, samples_dir), settings.MAX_OBJECT_IMAGE_BYTES)
        found = detector.detect(image.pixels, settings.MAX_FACES, min(DETECTION_THRESHOLDS))
        scores[photo.name] = (photo.shows, photo.faces, sorted((face.confidence for face in found), reverse=True))
    return scores


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    lfw = load_lfw(args.lfw)
    if args.limit:
        keep = sorted(peer_subset(lfw, args.limit, seed=1))
        lfw = _restricted(lfw, keep)
    model_dir = settings.Settings.from_env().model_dir
    versions = args.models.split(",") if args.models else [settings.EMBEDDER_VERSION]
    unknown = [v for v in versions if v not in EMBEDDER_MODELS]
    if unknown:
        raise SystemExit(f"bench accuracy: unknown model {unknown}; known: {sorted(EMBEDDER_MODELS)}")
    print(
        f"bench accuracy: {len(lfw.photos)} photos of {len(lfw.names)} people, {len(lfw.pairs)} pairs", file=sys.stderr
    )
    detector = load_detector(model_dir, args.threads)
    detections = cached_detections(lfw.photos, detector, args.cache)
    peer_rows = peer_subset(lfw, args.peer_photos) if args.peer else None
    models = {}
    for version in versions:
        models[version], _, _ = measure_model(
            lfw,
            detections,
            model_dir,
            version,
            settings.MIN_DETECTION_CONFIDENCE,
            args.threads,
            args.calibrate,
            peer_rows,
            args.cache,
        )
    result: dict[str, Any] = dict(models[versions[0]])
    result["data"] = f"{args.lfw} ({len(lfw.photos)} photos, {len(lfw.names)} people, {len(lfw.pairs)} pairs)"
    result["models"] = models
    result["detection"] = detection_figures(detections, detector, args.detect_photos, args.no_face_photos)
    if args.variants:
        embedder = load_embedder_version(model_dir, settings.EMBEDDER_VERSION, args.threads)
        result["crop_variants"] = variant_figures(lfw, detections, embedder, settings.MIN_DETECTION_CONFIDENCE)
    result["scale"] = {f"{s:g}": similarity.fmr_of_similarity(s) for s in (50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0)}
    if peer_rows is not None:
        encodings, has_face, seconds_per_photo = run_peer(lfw, peer_rows)
        rows = np.asarray([i for i in peer_rows if lfw.counted[i]])
        scores = all_pair_scores(peer_scores(encodings, has_face), lfw.identities, rows)
        a, b, same, folds = pairs_arrays(lfw, set(peer_rows))
        pair_scores = np.where(
            has_face[a] & has_face[b], -np.linalg.norm(encodings[a] - encodings[b], axis=1), -np.inf
        ).astype(np.float32)
        # At 80 the peer is taken at its own default (distance 0.6); at 90 and 99, at the distances that
        # give the false-match rates Candor's scale promises there, measured on the peer's own impostors.
        peer_thresholds = {80.0: -0.6}
        for s in (90.0, 99.0):
            allowed = int(similarity.fmr_of_similarity(s) * len(scores.impostor))
            peer_thresholds[s] = float(np.nextafter(scores.impostor[-allowed - 1], np.inf))
        peer = verification_figures(scores, pair_scores, same, folds, peer_thresholds)
        peer["detect_rate"] = round(float(has_face[peer_rows].mean()), 4)
        peer["seconds_per_photo"] = round(seconds_per_photo, 3)
        peer["photos"] = len(peer_rows)
        peer["subset"] = f"photos of randomly chosen pairs.txt pairs (seed {PEER_SEED}), {len(peer_rows)} photos"
        result["peer"] = peer
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    result["date"] = date.today().isoformat()
    return result


def _restricted(lfw: Lfw, keep: list[int]) -> Lfw:
    """The same set limited to some photos (for a quick run): pairs with both photos kept."""
    renumber = {old: new for new, old in enumerate(keep)}
    pairs = [
        (renumber[a], renumber[b], same, fold) for a, b, same, fold in lfw.pairs if a in renumber and b in renumber
    ]
    return Lfw([lfw.photos[i] for i in keep], lfw.identities[keep], lfw.names, pairs, lfw.counted[keep])


# ------------------------------------------------------------------------------------------------ reporting


def _rate(value: float) -> str:
    if value != value:  # nan
        return "-"
    return "0" if value == 0 else f"{value:.2e}"


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [
        f"Measured {result['date']} on {result['machine']}, with `{command}`.",
        f"Data: {result['data']}: the development half of LFW, the only half Candor is tuned on; the other",
        "half is kept aside and is expected to confirm these figures within noise.",
        "",
        "FMR and FNMR are over every pair of photos: same person (genuine) and different people (impostor).",
        "A photo where no face is found counts as a non-match. TAR is the share of genuine pairs matched at",
        "the threshold that lets through the given false-match rate. Pair accuracy is on pairs.txt's 3,000",
        "pairs; cross-validated: each fold at the threshold best on the other four.",
        "",
    ]
    header = ["measure", *result["models"].keys()]
    keys = [
        "pairs_accuracy_at_80", "best_pairs_accuracy", "cv_pairs_accuracy",
        "fmr_at_80", "fnmr_at_80", "fmr_at_90", "fnmr_at_90", "fmr_at_99", "fnmr_at_99",
        "tar_at_fmr_1e-3", "tar_at_fmr_1e-4", "tar_at_fmr_1e-5", "detect_rate", "embed_ms_per_photo",
    ]  # fmt: skip
    rows = []
    for key in keys:
        row = [key]
        for figures in result["models"].values():
            value = figures[key]
            row.append(_rate(value) if key.startswith(("fmr", "fnmr")) else value)
        rows.append(row)
    lines += [table(header, rows), ""]
    lines += [
        "The scale (candor/core/similarity.py): each similarity and the false-match rate it stands for, and what",
        "the default model measured here (by construction on the photos its scale was fitted on):",
        "",
    ]
    main = result["models"].get(settings.EMBEDDER_VERSION, result)
    scale_rows = [
        [s, _rate(similarity.fmr_of_similarity(float(s))), _rate(main.get(f"fmr_at_{s}", float("nan"))),
         _rate(main.get(f"fnmr_at_{s}", float("nan")))]
        for s in ("80", "90", "99")
    ]  # fmt: skip
    lines += [table(["similarity", "promised FMR", "FMR here", "FNMR here"], scale_rows), ""]
    check = main["calibration_check"]
    lines += [
        "Calibration check: the scale fitted on half of the people, measured on the other half (both ways):",
        "",
        table(
            ["similarity", "promised FMR", "measured on the unseen half"],
            [
                [
                    s,
                    _rate(check["promised_fmr"][s]),
                    " / ".join(_rate(v) for v in check["measured_fmr_on_other_half"][s]),
                ]
                for s in check["promised_fmr"]
            ],
        ),
        "",
    ]
    unseen = [v for v in check["measured_fmr_on_other_half"]["80"]]
    promised_at_80 = similarity.fmr_of_similarity(80.0)
    within = all(0.5 <= v / promised_at_80 <= 2.0 for v in unseen)
    target_rows = [
        [
            "accuracy at 80 on pairs.txt",
            ">= 0.99",
            main["pairs_accuracy_at_80"],
            _met(main["pairs_accuracy_at_80"] >= 0.99),
        ],
        ["TAR at FMR 1e-4", ">= 0.95", main["tar_at_fmr_1e-4"], _met(main["tar_at_fmr_1e-4"] >= 0.95)],
        [
            "FMR at 80 on unseen people",
            f"{_rate(promised_at_80)}, within a factor 2",
            " / ".join(_rate(v) for v in unseen),
            _met(within),
        ],
        ["FNMR at 99", "stated", _rate(main["fnmr_at_99"]), "stated"],
    ]
    lines += ["Against the targets:", "", table(["target", "wanted", "measured", ""], target_rows), ""]
    detection = result["detection"]
    lines += [f"Detection (the service uses {detection['service_threshold']}):", ""]
    det_rows = [
        [
            t,
            v["lfw_detect_rate"],
            v.get("false_positives_on_detect_photos", "-"),
            v.get("faces_on_no_face_photos", "-"),
            v.get("faces_missed_on_person_photos", "-"),
        ]
        for t, v in detection["by_threshold"].items()
    ]
    det_header = ["YuNet score threshold", "LFW photos with a face", "false positives on detect/ photos"]
    det_header += ["faces on photos of animals and objects", "faces missed on their two photos of a person"]
    lines += [table(det_header, det_rows), ""]
    if "sample_photos" in detection:
        sample_rows = [
            [f"`{name}`", v["shows"], v["faces"], ", ".join(f"{s:.3f}" for s in v["scores"]) or "none"]
            for name, v in detection["sample_photos"].items()
        ]
        lines += [
            "The photos of animals and objects are images scikit-image 0.26.0, imgaug 0.4.0 and scipy 1.9.3 ship",
            "(fetched by the setup step), none chosen or tuned on; every box the detector gives at "
            f"{min(DETECTION_THRESHOLDS)} or more:",
            "",
            table(["photo", "shows", "faces in it", "detector scores"], sample_rows),
            "",
        ]
    if "crop_variants" in result:
        names = list(result["crop_variants"])
        variant_keys = list(result["crop_variants"][names[0]])
        lines += [
            "Crops for the default model (each on a scale fitted to its own impostors; a mirror image's embedding",
            "averaged in costs a second embedding per face):",
            "",
            table(
                ["measure", *names], [[k, *(_fmt(result["crop_variants"][n][k]) for n in names)] for k in variant_keys]
            ),
            "",
        ]
    if "peer" in result:
        peer = result["peer"]
        ours = main["on_peer_subset"]
        lines += [
            f"Side by side with face_recognition 1.3.0 (defaults: HOG, distance 0.6) on {peer['subset']}; its",
            "'80' is its own default threshold, its 90 and 99 the distances with the FMR Candor promises there:",
            "",
            table(
                ["measure", "Candor", "face_recognition"],
                [[k, _fmt(ours.get(k)), _fmt(peer.get(k))] for k in keys if k in peer or k in ours],
            ),
            "",
            f"face_recognition: {peer['seconds_per_photo']} s per photo.",
            "",
        ]
    lines += ["The JSON (`--json`):", "", "```json", json.dumps(_summary(result), indent=1), "```"]
    return "\n".join(lines)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value < 0.01:
        return _rate(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in result.items() if key not in ("models",)}


def register(bench_subparsers: Any) -> None:
    parser = bench_subparsers.add_parser(
        "accuracy", help="verification accuracy and false-match rates on LFW; updates docs/benchmarks.md"
    )
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW, help="LFW folder: images/<Name>/*.jpg and pairs.txt")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    parser.add_argument("--peer", action="store_true", help="also run face_recognition on a random subset")
    parser.add_argument("--peer-photos", type=int, default=PEER_DEFAULT_PHOTOS, help="photos in the peer's subset")
    parser.add_argument(
        "--models", default="", help=f"model versions, comma-separated (default: {settings.EMBEDDER_VERSION})"
    )
    parser.add_argument("--calibrate", action="store_true", help="fit each model's similarity scale here and save it")
    parser.add_argument("--variants", action="store_true", help="also measure other crops for the default model")
    parser.add_argument("--limit", type=int, default=0, help="only about this many photos (a quick run)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: every core)")
    parser.add_argument(
        "--cache", type=Path, help="keep detections and embeddings here and reuse them while the photos are the same"
    )
    parser.add_argument(
        "--detect-photos", type=Path, default=REPO.parent / "shared" / "data" / "faces" / "detect",
        help="photos with hand-drawn boxes (training.xml) for detector false positives",
    )  # fmt: skip
    parser.add_argument(
        "--no-face-photos", type=Path, default=NO_FACE_SAMPLES_DIR,
        help="the setup step's photos of animals and objects (and two of a person) for detector false positives",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the Markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="leave the Markdown file alone")
    parser.set_defaults(run=cmd_accuracy)


def cmd_accuracy(args: argparse.Namespace) -> int:
    result = run(args)
    command = "candor bench accuracy --lfw ../shared/data/lfw" + (" --peer" if args.peer else "")
    command += " --calibrate" if args.calibrate else ""
    command += " --variants" if args.variants else ""
    if args.models:
        command += f" --models {args.models}"
    if not args.no_write and not args.limit:
        existing = args.output.read_text() if args.output.exists() else None
        args.output.write_text(replace_section(existing, SECTION_TITLE, markdown(result, command)))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(markdown(result, command))
    return 0
