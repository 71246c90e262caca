"""Which detection threshold and which face crop to use: measured on the labelled photos in shared/data/faces.

    .venv/bin/python benchmarks/preprocessing.py [--data ../shared/data/faces]
        [--output docs/benchmarks-preprocessing.md] [--threads N]

Detection: recall at IoU >= 0.5 and false positives per photo on detect/*.jpg (boxes in training.xml), and
extra detections on the enrol and probe photos, whose face counts were checked by eye.
Preprocessing: for each crop variant, verification over all pairs of the enrol photos (best accuracy,
ROC AUC, and the cosine of the closest same-person and different-person pairs: with 4 same-person
pairs the margin between them says more than accuracy), the same over a larger pool (enrol photos plus
single-person probes, pairs cut from the same source photo left out), and identification on the
probes (expected identities all found, no wrong identity above the threshold).
Speed: ms per photo to decode and detect, ms per face to align and embed.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import statistics
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from candor.core import settings
from candor.core.faces import BoundingBox, DetectedFace
from candor.vision.align import (
    DEFAULT_ALIGNMENT,
    Alignment,
    BoxCrop,
    FivePointAlignment,
    StretchedBoxCrop,
    align_faces,
)
from candor.vision.detector import FaceDetector, box_iou
from candor.vision.embedder import FaceEmbedder
from candor.vision.images import DecodedImage, decode_image
from candor.vision.models import load_models

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "faces"
T = TypeVar("T")

DEFAULT_OUTPUT = REPO / "docs" / "benchmarks-preprocessing.md"

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9)
TILING_TRIAL_THRESHOLD = 0.6

# Faces a person counts in each enrol and probe photo (checked by eye on a contact sheet; a sliver of a
# face cut by the border is not counted). Photos not listed have one face.
FACE_COUNTS = {"kit_with_rose.jpg": 2, "two_people.jpg": 2, "obama_and_biden.jpg": 3}

# Probes cut from the same photo as another photo in the pool (resized, cropped or re-encoded copies):
# a pair within a group says nothing about recognising a person across photos.
SAME_SOURCE = (
    {
        "enroll/obama/obama.jpg",
        "probe/obama-240p.jpg",
        "probe/obama-480p.jpg",
        "probe/obama_small.jpg",
        "probe/obama_partial_face.jpg",
        "probe/obama_partial_face2.jpg",
    },
    {"enroll/obama/obama2.jpg", "probe/32bit.png"},
)

# (crop, antialias): the square crop at a few margins, FaceNet's own stretched crop on a grid of margins,
# the five-point similarity alignment at a few template scales, and the default without antialiasing.
VARIANTS: tuple[tuple[Alignment, bool], ...] = (
    *((BoxCrop(margin=m), True) for m in (0.0, 0.1, 0.2, 0.3)),
    *(
        (StretchedBoxCrop(margin_x=x, margin_y=y), True)
        for x, y in (
            (0.0, 0.0),
            (0.05, 0.05),
            (0.1, 0.0),
            (0.1, 0.05),
            (0.1, 0.1),
            (0.15, 0.05),
            (0.2, 0.1),
            (0.3, 0.2),
        )
    ),
    *((FivePointAlignment(face_scale=s), True) for s in (0.7, 0.8, 0.9, 1.0, 1.1)),
    (FivePointAlignment(face_scale=1.0, shift_y=0.03), True),
    (DEFAULT_ALIGNMENT, False),
)


@dataclass
class Photo:
    path: Path
    name: str  # relative to the data folder
    image: DecodedImage
    faces: list[DetectedFace]
    decode_ms: float
    detect_ms: float


@dataclass
class PairStats:
    same: int
    different: int
    auc: float
    best_accuracy: float
    best_threshold: float
    min_same: float
    max_different: float
    same_values: list[float] = field(default_factory=list)
    different_values: list[float] = field(default_factory=list)

    @property
    def margin(self) -> float:
        return self.min_same - self.max_different

    @property
    def d_prime(self) -> float:
        """Separation of the two cosine distributions in pooled standard deviations."""
        same, different = np.array(self.same_values), np.array(self.different_values)
        return float((same.mean() - different.mean()) / np.sqrt((same.var() + different.var()) / 2))

    @property
    def midpoint(self) -> float:
        return (self.min_same + self.max_different) / 2


@dataclass
class IdentificationStats:
    passed: int
    total: int
    window: tuple[float, float] | None  # thresholds at which every probe passes
    failures: list[str]


@dataclass
class VariantResult:
    name: str
    enrol: PairStats
    pool: PairStats
    identification: IdentificationStats
    align_ms: float


def timed(function: Callable[[], T], repeat: int = 1) -> tuple[T, float]:
    """Result and best wall time in ms (best of `repeat`: the least disturbed run)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, (time.perf_counter() - start) * 1000)
    return result, best


def load_photos(paths: Sequence[Path], root: Path, detector: FaceDetector, min_confidence: float) -> list[Photo]:
    photos = []
    for path in paths:
        data = path.read_bytes()
        image, decode_ms = timed(partial(decode_image, data, settings.MAX_OBJECT_IMAGE_BYTES), 5)
        faces, detect_ms = timed(partial(detector.detect, image.pixels, min_confidence=min_confidence), 5)
        photos.append(Photo(path, path.relative_to(root).as_posix(), image, faces, decode_ms, detect_ms))
    return photos


# --- detection ---------------------------------------------------------------------------------------


def ground_truth(xml_path: Path) -> dict[str, list[BoundingBox]]:
    boxes: dict[str, list[BoundingBox]] = {}
    for image in ElementTree.parse(xml_path).getroot().iter("image"):
        boxes[image.attrib["file"]] = [
            BoundingBox(
                float(b.attrib["left"]),
                float(b.attrib["top"]),
                float(b.attrib["width"]),
                float(b.attrib["height"]),
            )
            for b in image.iter("box")
        ]
    return boxes


def corners(box: BoundingBox) -> np.ndarray:
    return np.array([box.left, box.top, box.left + box.width, box.top + box.height])


def match(truth: list[BoundingBox], found: list[DetectedFace], iou: float = 0.5) -> tuple[int, int]:
    """(true positives, false positives); each truth box matched once at most, best score first."""
    unmatched = [corners(box) for box in truth]
    hits = 0
    for face in sorted(found, key=lambda f: -f.confidence):
        if not unmatched:
            break
        overlaps = box_iou(corners(face.bounding_box), np.stack(unmatched))
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou:
            hits += 1
            unmatched.pop(best)
    return hits, len(found) - hits


def detection_table(
    detector: FaceDetector, detect_dir: Path, others: list[Photo]
) -> tuple[list[list[str]], dict[float, tuple[float, float, int]]]:
    truth = ground_truth(detect_dir / "training.xml")
    images = {name: decode_image((detect_dir / name).read_bytes(), settings.MAX_OBJECT_IMAGE_BYTES) for name in truth}
    raw = {name: detector.detect(image.pixels, min_confidence=min(THRESHOLDS)) for name, image in images.items()}
    total = sum(len(boxes) for boxes in truth.values())
    rows = []
    summary = {}
    for threshold in THRESHOLDS:
        hits = false = 0
        for name, boxes in truth.items():
            found = [face for face in raw[name] if face.confidence >= threshold]
            h, f = match(boxes, found)
            hits += h
            false += f
        extra = missed = 0
        for photo in others:
            expected = FACE_COUNTS.get(photo.path.name, 1)
            count = sum(1 for face in photo.faces if face.confidence >= threshold)
            extra += max(0, count - expected)
            missed += max(0, expected - count)
        summary[threshold] = (hits / total, false / len(truth), extra)
        rows.append(
            [
                f"{threshold:.2f}",
                f"{hits}/{total} ({hits / total:.0%})",
                f"{false / len(truth):.2f}",
                f"{extra}",
                f"{missed}",
            ]
        )
    return rows, summary


def score_extremes(detector: FaceDetector, detect_dir: Path, others: list[Photo]) -> tuple[float, float]:
    """(lowest score of a real face, highest score of a false detection) over all labelled photos. On the
    enrol and probe photos, the top-scoring `expected count` detections are taken as the real faces
    (true of every one of them, checked by eye)."""
    truth = ground_truth(detect_dir / "training.xml")
    real: list[float] = []
    false: list[float] = []
    for name, boxes in truth.items():
        image = decode_image((detect_dir / name).read_bytes(), settings.MAX_OBJECT_IMAGE_BYTES)
        faces = detector.detect(image.pixels, min_confidence=min(THRESHOLDS))
        for face in faces:
            overlaps = box_iou(corners(face.bounding_box), np.stack([corners(box) for box in boxes]))
            (real if overlaps.max() >= 0.5 else false).append(face.confidence)
    for photo in others:
        scores = sorted((face.confidence for face in photo.faces), reverse=True)
        expected = FACE_COUNTS.get(photo.path.name, 1)
        real += scores[:expected]
        false += scores[expected:]
    return min(real), max(false, default=0.0)


def tiling_trial(detector: FaceDetector, photos: list[Photo], threshold: float) -> list[str]:
    """Faces that overlapping 640-pixel tiles at native resolution find and the single letterbox does not,
    on photos larger than 1280 pixels."""
    notes = []
    for photo in photos:
        pixels = photo.image.pixels
        height, width = pixels.shape[:2]
        if max(height, width) <= 1280:
            continue
        single = [corners(face.bounding_box) for face in photo.faces if face.confidence >= threshold]
        extra = []
        for top in range(0, max(1, height - 160), 480):
            for left in range(0, max(1, width - 160), 480):
                tile = pixels[top : top + 640, left : left + 640]
                canvas = np.zeros((640, 640, 3), dtype=np.uint8)
                canvas[: tile.shape[0], : tile.shape[1]] = tile
                for face in detector.detect(canvas, min_confidence=threshold):
                    box = corners(face.bounding_box) + np.array([left, top, left, top])
                    if not single or box_iou(box, np.stack(single)).max() < 0.3:
                        extra.append(f"{int(box[2] - box[0])}x{int(box[3] - box[1])}px@{face.confidence:.2f}")
        notes.append(
            f"{photo.name} ({width}x{height}): {len(single)} single-pass, "
            f"extra from tiles: {', '.join(extra) or 'none'}"
        )
    return notes


# --- preprocessing -----------------------------------------------------------------------------------


def pair_stats(embeddings: np.ndarray, labels: list[str], names: list[str]) -> PairStats:
    same_values: list[float] = []
    different_values: list[float] = []
    similarity = embeddings @ embeddings.T
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if any(names[i] in group and names[j] in group for group in SAME_SOURCE):
                continue
            (same_values if labels[i] == labels[j] else different_values).append(float(similarity[i, j]))
    same = np.array(same_values)
    different = np.array(different_values)
    # AUC as the probability that a same-person pair outscores a different-person pair (ties count half).
    auc = float(
        ((same[:, None] > different[None, :]).sum() + 0.5 * (same[:, None] == different[None, :]).sum())
        / (same.size * different.size)
    )
    candidates = np.concatenate([same, different])
    best_accuracy, best_threshold = 0.0, 0.0
    for threshold in np.sort(candidates):
        accuracy = float(((same >= threshold).sum() + (different < threshold).sum()) / candidates.size)
        if accuracy > best_accuracy:
            best_accuracy, best_threshold = accuracy, float(threshold)
    return PairStats(
        same=same.size,
        different=different.size,
        auc=auc,
        best_accuracy=best_accuracy,
        best_threshold=best_threshold,
        min_same=float(same.min()),
        max_different=float(different.max()),
        same_values=same_values,
        different_values=different_values,
    )


def identification(
    probes: list[Photo],
    probe_embeddings: list[np.ndarray],
    expected: dict[str, set[str]],
    gallery: np.ndarray,
    gallery_labels: list[str],
) -> IdentificationStats:
    """Each probe face's nearest enrolled face; a probe passes at threshold t when every expected identity
    is some face's nearest at cosine >= t and no other identity is."""
    grid = np.round(np.arange(0.0, 1.0001, 0.01), 2)
    passing = np.ones(grid.size, dtype=bool)
    failures = []
    for photo, embeddings in zip(probes, probe_embeddings, strict=True):
        wanted = expected[photo.path.name]
        best_right = {identity: -1.0 for identity in wanted}
        worst_wrong = -1.0
        if embeddings.size:
            similarity = embeddings @ gallery.T
            for row in similarity:
                nearest = int(np.argmax(row))
                identity, score = gallery_labels[nearest], float(row[nearest])
                if identity in wanted:
                    best_right[identity] = max(best_right[identity], score)
                else:
                    worst_wrong = max(worst_wrong, score)
        # Passing needs t <= every expected identity's best score and t > the best wrong score.
        low = worst_wrong
        high = min(best_right.values(), default=1.0)
        ok = (grid > low) & (grid <= high)
        passing &= ok
        if not ok.any():
            failures.append(f"{photo.path.name} (right {high:.2f}, wrong {low:.2f})")
    window = (float(grid[passing].min()), float(grid[passing].max())) if passing.any() else None
    passed_at_best = len(probes) - len(failures)
    return IdentificationStats(passed=passed_at_best, total=len(probes), window=window, failures=failures)


def evaluate_variant(
    alignment: Alignment,
    antialias: bool,
    embedder: FaceEmbedder,
    enrol: list[Photo],
    pool: list[tuple[Photo, str]],
    probes: list[Photo],
    expected: dict[str, set[str]],
) -> VariantResult:
    def embed(photo: Photo, faces: list[DetectedFace]) -> np.ndarray:
        return embedder.embed(align_faces(photo.image.pixels, faces, alignment, antialias=antialias))

    align_times = []
    for photo in enrol:
        _, ms = timed(partial(align_faces, photo.image.pixels, photo.faces[:1], alignment, antialias=antialias), 3)
        align_times.append(ms)
    enrol_embeddings = np.concatenate([embed(photo, photo.faces[:1]) for photo in enrol])
    enrol_labels = [photo.path.parent.name for photo in enrol]
    enrol_names = [photo.name for photo in enrol]
    pool_embeddings = np.concatenate([embed(photo, photo.faces[:1]) for photo, _ in pool])
    pool_labels = [label for _, label in pool]
    pool_names = [photo.name for photo, _ in pool]
    probe_embeddings = [embed(photo, photo.faces) for photo in probes]
    name = alignment.name + ("" if antialias else " (no antialias)")
    return VariantResult(
        name=name,
        enrol=pair_stats(enrol_embeddings, enrol_labels, enrol_names),
        pool=pair_stats(pool_embeddings, pool_labels, pool_names),
        identification=identification(probes, probe_embeddings, expected, enrol_embeddings, enrol_labels),
        align_ms=statistics.median(align_times),
    )


# --- speed -------------------------------------------------------------------------------------------


def draft_trial(detector: FaceDetector, photo: Photo) -> list[str]:
    """A very large JPEG (the photo upscaled to about 50 megapixels): decode time and the face box with
    and without Image.draft, in original pixels."""
    source = Image.fromarray(photo.image.pixels)
    factor = 8400 / max(source.size)
    big = source.resize((round(source.width * factor), round(source.height * factor)), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    notes = [f"{photo.name} upscaled to {big.width}x{big.height} ({len(data) / 1e6:.1f} MB JPEG)"]
    for label, long_side in (("draft", settings.DECODE_MIN_LONG_SIDE), ("full decode", None)):
        image, ms = timed(partial(decode_image, data, 10**9, draft_long_side=long_side), 2)
        faces, detect_ms = timed(partial(detector.detect, image.pixels), 2)
        box = image.to_original(faces[0]).bounding_box if faces else None
        where = f"box {box.left:.0f},{box.top:.0f} {box.width:.0f}x{box.height:.0f}" if box else "no face"
        notes.append(
            f"{label}: decoded {image.pixels.shape[1]}x{image.pixels.shape[0]} (scale {image.scale:g}) "
            f"in {ms:.0f} ms, "
            f"{image.pixels.nbytes / 1e6:.0f} MB of pixels; detection {detect_ms:.0f} ms; {where}"
        )
    return notes


# --- report ------------------------------------------------------------------------------------------


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    return f"{os.cpu_count()}-core {platform.machine()}, Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("FACES_DATA_DIR", DEFAULT_DATA)))
    parser.add_argument(
        "--model-dir", type=Path, default=Path(os.environ.get("MODEL_DIR") or settings.DEFAULT_MODEL_DIR)
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    args = parser.parse_args()
    root: Path = args.data
    detector, embedder = load_models(args.model_dir, args.threads)
    threshold = settings.MIN_DETECTION_CONFIDENCE

    with (root / "probe" / "expected.csv").open(newline="") as handle:
        expected = {
            row["file"]: {name for name in row["expected_identities"].split(";") if name}
            for row in csv.DictReader(handle)
        }
    enrol_paths = sorted(path for path in (root / "enroll").glob("*/*") if path.is_file())
    probe_paths = [root / "probe" / name for name in expected]
    # Warm both sessions up: the first run of an onnxruntime session allocates and is not typical.
    warm = decode_image(enrol_paths[0].read_bytes(), settings.MAX_OBJECT_IMAGE_BYTES)
    embedder.embed_faces(warm.pixels, detector.detect(warm.pixels))

    enrol = load_photos(enrol_paths, root, detector, min(THRESHOLDS))
    probes = load_photos(probe_paths, root, detector, min(THRESHOLDS))
    detection_rows, detection_summary = detection_table(detector, root / "detect", enrol + probes)
    lowest_real, highest_false = score_extremes(detector, root / "detect", enrol + probes)
    tiling_notes = tiling_trial(detector, enrol + probes, TILING_TRIAL_THRESHOLD)
    # From here on, faces as the service sees them: at the default threshold.
    for photo in enrol + probes:
        photo.faces = [face for face in photo.faces if face.confidence >= threshold]
    pool = [(photo, photo.path.parent.name) for photo in enrol] + [
        (photo, next(iter(expected[photo.path.name])) if expected[photo.path.name] else photo.path.stem)
        for photo in probes
        if len(expected[photo.path.name]) <= 1
    ]
    results = [
        evaluate_variant(alignment, antialias, embedder, enrol, pool, probes, expected)
        for alignment, antialias in VARIANTS
    ]

    # Embedding speed per face: a batch of one (a single-face photo) and a batch of 16.
    crops = align_faces(enrol[0].image.pixels, enrol[0].faces[:1])
    _, embed_one_ms = timed(lambda: embedder.embed(crops), 5)
    batch = np.repeat(crops, 16, axis=0)
    _, embed_batch_ms = timed(lambda: embedder.embed(batch), 5)
    draft_notes = draft_trial(detector, enrol[0])

    rows = []
    for r in results:
        window = (
            f"{r.identification.window[0]:.2f}-{r.identification.window[1]:.2f}" if r.identification.window else "none"
        )
        rows.append(
            [
                r.name,
                f"{r.enrol.best_accuracy:.3f}",
                f"{r.enrol.auc:.3f}",
                f"{r.enrol.min_same:.3f}",
                f"{r.enrol.max_different:.3f}",
                f"{r.enrol.margin:+.3f}",
                f"{r.pool.best_accuracy:.3f}",
                f"{r.pool.auc:.4f}",
                f"{r.pool.d_prime:.2f}",
                f"{np.mean(r.pool.same_values):.3f} / {np.mean(r.pool.different_values):.3f}",
                f"{r.pool.min_same:.3f}",
                f"{r.pool.max_different:.3f}",
                f"{r.pool.margin:+.3f}",
                f"{r.identification.passed}/{r.identification.total}",
                window,
                f"{r.align_ms:.1f}",
            ]
        )
    header = [
        "crop",
        "enrol acc",
        "enrol AUC",
        "enrol min same",
        "enrol max diff",
        "enrol margin",
        "pool acc",
        "pool AUC",
        "pool d'",
        "pool mean same / diff",
        "pool min same",
        "pool max diff",
        "pool margin",
        "probes ok (any t)",
        "t where all probes ok",
        "align ms/face",
    ]
    best = max(results, key=lambda r: (round(r.pool.auc, 4), r.pool.d_prime))
    default = next(r for r in results if r.name == DEFAULT_ALIGNMENT.name)
    decode_ms = statistics.median(photo.decode_ms for photo in enrol + probes)
    detect_ms = statistics.median(photo.detect_ms for photo in enrol + probes)
    enrol_stats, pool_stats, found = default.enrol, default.pool, default.identification
    # The cosine cut-off: the middle of the range that separates every pair (enrol and pool) and gets
    # every probe right.
    low = max(enrol_stats.max_different, pool_stats.max_different, found.window[0] if found.window else 0.0)
    high = min(enrol_stats.min_same, pool_stats.min_same, found.window[1] if found.window else 1.0)
    recommended = round((low + high) / 2, 2)
    window = f"{found.window[0]:.2f} to {found.window[1]:.2f}" if found.window else "none"
    detected = detection_summary[threshold]

    def best_of(prefix: str) -> float:
        return max(r.pool.d_prime for r in results if r.name.startswith(prefix))

    report = "\n".join(
        [
            "# Preprocessing and detection benchmark",
            "",
            f"Run {date.today().isoformat()} on {machine()}; "
            f"onnxruntime intra-op threads: {args.threads or 'all cores'}.",
            f"Reproduce: `.venv/bin/python benchmarks/preprocessing.py` (data: `shared/data/faces`, "
            f"{len(enrol)} enrol photos, {len(probes)} probes; about a minute).",
            "",
            "## Conclusions",
            "",
            f"- Face crop: **{default.name}** (`candor.vision.align.DEFAULT_ALIGNMENT`): the detector's box "
            "plus 10% of its width left and right and 5% of its height above and below, resized to 160x160 "
            "without keeping the aspect ratio, as FaceNet's own MTCNN pipeline did. Pool AUC "
            f"{pool_stats.auc:.4f}, d' {pool_stats.d_prime:.2f}, every same-person pair above every "
            f"different-person pair (margin {pool_stats.margin:+.3f}); the best square crop reaches d' "
            f"{best_of('box-'):.2f} and the best five-point alignment {best_of('five-point'):.2f}, "
            "both with overlapping pairs.",
            f"- Same person at cosine >= **{recommended:.2f}**: the middle of {low:.3f} "
            "(highest different-person cosine, or lowest cut that gets every probe right) to "
            f"{high:.3f} (lowest same-person cosine, or highest cut that still finds every "
            "expected identity).",
            f"- `MIN_DETECTION_CONFIDENCE` = **{threshold}**: recall {detected[0]:.0%} and "
            f"{detected[1]:.2f} false positives per photo on detect/, {detected[2]} extra faces on the enrol "
            f"and probe photos; real faces score >= {lowest_real:.3f}, "
            f"everything else <= {highest_false:.3f}.",
            "- One 640x640 letterbox, no tiling: on these photos tiles found only false positives "
            "(the same face again, cut by a tile border) and one 18x23-pixel background face, below "
            "the 40-pixels-in-1920 that Rekognition documents as its own minimum face size.",
            "- Very large JPEGs are decoded at 1/2, 1/4 or 1/8 size with the longest side kept >= "
            f"{settings.DECODE_MIN_LONG_SIDE}: same face box in original pixels, several times less time "
            "and memory (below).",
            "- The sample is tiny (9 enrol photos, 21 faces in the pool, 15 probes): read margins and "
            "cosine distributions rather than accuracies, and re-run this benchmark on more labelled photos "
            "before tightening anything.",
            "",
            "## Detection (YuNet 2023mar, one 640x640 letterbox)",
            "",
            "detect/: 4 PASCAL VOC photos with 18 boxes in training.xml, matched at IoU >= 0.5. "
            "Enrol and probe photos: faces counted by eye (24 photos, 28 faces).",
            "",
            markdown_table(
                [
                    "min confidence",
                    "detect/ recall",
                    "detect/ false positives per photo",
                    "enrol+probe extra",
                    "enrol+probe missed",
                ],
                detection_rows,
            ),
            "",
            f"Tiling trial: overlapping 640-pixel tiles at native resolution on photos over 1280 pixels, "
            f"at confidence >= {TILING_TRIAL_THRESHOLD} (below the default, to give tiles every chance); "
            "detections the single pass does not have:",
            "",
            *(f"- {note}" for note in tiling_notes),
            "",
            "## Preprocessing (crop fed to FaceNet 20180408)",
            "",
            "enrol: all pairs of the enrol photos (largest face each): "
            f"{enrol_stats.same} same-person and {enrol_stats.different} different-person pairs. "
            f"pool: enrol photos plus single-person probes ({len(pool)} faces; lin-manuel-miranda is a "
            f"person of its own), pairs cut from one source photo left out: {pool_stats.same} same and "
            f"{pool_stats.different} different. "
            "d' = (mean same - mean different) / pooled standard deviation. "
            "margin = min same - max different (positive: one threshold separates every pair). "
            "probes: each face's nearest enrolled face; a probe is ok when all its expected identities and "
            "no other are found at cosine >= t.",
            "",
            markdown_table(header, rows),
            "",
            f"Best by pool AUC, then d': **{best.name}**. Default (`DEFAULT_ALIGNMENT`): **{default.name}**.",
            "",
            f"Cosine distribution with the default crop. Same person (pool, {pool_stats.same} pairs): "
            f"{', '.join(f'{v:.2f}' for v in sorted(pool_stats.same_values))}. "
            f"Different people ({pool_stats.different} pairs): "
            f"mean {np.mean(pool_stats.different_values):.3f}, "
            f"the 8 highest {', '.join(f'{v:.2f}' for v in sorted(pool_stats.different_values)[-8:])}. "
            f"Enrol pairs only: min same {enrol_stats.min_same:.3f}, max different "
            f"{enrol_stats.max_different:.3f}. Thresholds at which all {found.total} probes are right: "
            f"{window}.",
            "",
            "## Speed",
            "",
            "Best of 5 on a shared machine: other work running at the same time can double these.",
            "",
            markdown_table(
                ["step", "ms"],
                [
                    ["decode, per photo (median of 24, 240p to 3.3 MP)", f"{decode_ms:.1f}"],
                    ["detect, per photo (letterbox + YuNet + NMS, median)", f"{detect_ms:.1f}"],
                    [f"align, per face ({default.name})", f"{default.align_ms:.1f}"],
                    ["embed, per face, batch of 1", f"{embed_one_ms:.1f}"],
                    ["embed, per face, batch of 16", f"{embed_batch_ms / 16:.1f}"],
                ],
            ),
            "",
            "Very large JPEGs (Image.draft):",
            "",
            *(f"- {note}" for note in draft_notes),
            "",
        ]
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
