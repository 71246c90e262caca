"""Similarity on Rekognition's 0-100 scale, defined by the false-match rate (FMR) it stands for.

The scale is published and the same for every model: a similarity names how often two photos of
different people score that high. With L = -log10(FMR):

    L 0..4  -> similarity 20 * L          (FMR 1 in 10 -> 20, 1 in 1,000 -> 60, 1 in 10,000 -> 80)
    L 4..5  -> 80 + 10 * (L - 4)          (1 in 100,000 -> 90)
    L 5..6  -> 90 + 9 * (L - 5)           (1 in 1,000,000 -> 99)
    L > 6   -> 100 - 10 ** -(L - 6)       (1 in 10 million -> 99.9, 1 in 100 million -> 99.99)

What differs per model is where a cosine falls on it: each model's calibration (candor/core/calibration/*.json)
maps cosines to measured FMRs, fitted on the impostor pairs of LFW's development half by
`candor bench accuracy --calibrate`. The map is the measured one as far as the data reaches (a cosine with
at least MIN_TAIL_COUNT impostor pairs above it: about 1 in 1.2 million with LFW's 24 million pairs); past
that, log FMR is extended as a straight line in the cosine fitted to the last measured decades. That line
is an extrapolation: it overstates a Gaussian tail, but a real tail may be heavier (look-alikes, twins,
mislabelled photos), so figures above similarity 99 are estimates, and docs/benchmarks.md says how they
held on people the fit never saw.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from candor.core import settings

CALIBRATION_DIR = Path(__file__).with_name("calibration")
# (L, similarity) knots of the published scale up to L = 6; above it the scale approaches 100.
_SCALE_KNOTS = ((0.0, 0.0), (4.0, 80.0), (5.0, 90.0), (6.0, 99.0))
# Fit grid and tail: knots every quarter decade; the straight-line tail is fitted to the last _TAIL_DECADES
# decades measured, up to the last point, which needs MIN_TAIL_COUNT impostor pairs above it (20: a relative
# error of about a quarter there).
_GRID_STEP = 0.25
_TAIL_DECADES = 1.5
MIN_TAIL_COUNT = 20
_MAX_L = 12.0


def similarity_from_fmr(fmr: float) -> float:
    """The published scale: a false-match rate to a similarity (monotonic, 0..100)."""
    if fmr >= 1.0:
        return 0.0
    if fmr <= 0.0:
        return 100.0
    level = -math.log10(fmr)
    if level > 6.0:
        return 100.0 - 10.0 ** -(level - 6.0)
    return float(np.interp(level, [k[0] for k in _SCALE_KNOTS], [k[1] for k in _SCALE_KNOTS]))


def fmr_of_similarity(similarity: float) -> float:
    """The inverse of similarity_from_fmr: the false-match rate a similarity promises."""
    s = min(max(float(similarity), 0.0), 100.0)
    if s >= 100.0:
        return 0.0
    if s > 99.0:
        level = 6.0 - math.log10(100.0 - s)
    else:
        level = float(np.interp(s, [k[1] for k in _SCALE_KNOTS], [k[0] for k in _SCALE_KNOTS]))
    return 10.0**-level


def risk_of_false_match(fmr: float, faces: int) -> float:
    """The probability that a search against `faces` faces returns at least one stranger at a threshold
    whose false-match rate is `fmr`: 1 - (1 - fmr) ** faces, computed without losing small values."""
    if faces <= 0 or fmr <= 0.0:
        return 0.0
    if fmr >= 1.0:
        return 1.0
    return float(-math.expm1(faces * math.log1p(-fmr)))


def lowest_threshold_for_risk(max_risk: float, faces: int) -> float:
    """The lowest similarity threshold (rounded up to 0.01) at which a search against `faces` faces
    matches a stranger with probability at most `max_risk`."""
    if faces <= 0 or max_risk >= 1.0:
        return 0.0
    fmr = -math.expm1(math.log1p(-max_risk) / faces)  # solves 1 - (1 - fmr) ** faces = max_risk
    threshold = math.ceil(similarity_from_fmr(fmr) * 100.0 - 1e-9) / 100.0
    while threshold < 100.0 and risk_of_false_match(fmr_of_similarity(threshold), faces) > max_risk:
        threshold = round(threshold + 0.01, 2)
    return min(threshold, 100.0)


@dataclass(frozen=True)
class Calibration:
    """One model's cosines against -log10(FMR) on its impostor pairs: increasing knots, then a line."""

    model_version: str
    cosines: tuple[float, ...]
    levels: tuple[float, ...]
    tail_slope: float  # decades of FMR per unit of cosine past the last knot
    source: str = ""
    impostor_pairs: int = 0

    def level_at(self, cosine: float) -> float:
        """-log10(FMR) at a cosine."""
        if cosine <= self.cosines[0]:
            return self.levels[0]
        if cosine >= self.cosines[-1]:
            return min(_MAX_L, self.levels[-1] + (cosine - self.cosines[-1]) * self.tail_slope)
        return float(np.interp(cosine, self.cosines, self.levels))

    def cosine_at(self, level: float) -> float:
        """The cosine at which -log10(FMR) reaches `level` (the inverse of level_at)."""
        if level <= self.levels[0]:
            return self.cosines[0]
        if level >= self.levels[-1]:
            return self.cosines[-1] + (min(level, _MAX_L) - self.levels[-1]) / self.tail_slope
        return float(np.interp(level, self.levels, self.cosines))

    def fmr_at_cosine(self, cosine: float) -> float:
        return 10.0 ** -self.level_at(cosine)

    def similarity_from_cosine(self, cosine: float) -> float:
        return similarity_from_fmr(self.fmr_at_cosine(cosine))

    def cosine_from_similarity(self, similarity: float) -> float:
        """The cosine cut-off a FaceMatchThreshold means for this model."""
        fmr = fmr_of_similarity(similarity)
        return self.cosine_at(_MAX_L if fmr <= 0.0 else -math.log10(fmr))

    def to_json(self) -> dict[str, object]:
        return {
            "model_version": self.model_version,
            "source": self.source,
            "impostor_pairs": self.impostor_pairs,
            "tail_slope": self.tail_slope,
            "knots": [[round(c, 6), round(level, 4)] for c, level in zip(self.cosines, self.levels, strict=True)],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Calibration:
        knots = data["knots"]
        assert isinstance(knots, list)
        return cls(
            model_version=str(data["model_version"]),
            cosines=tuple(float(k[0]) for k in knots),
            levels=tuple(float(k[1]) for k in knots),
            tail_slope=float(data["tail_slope"]),  # type: ignore[arg-type]
            source=str(data.get("source", "")),
            impostor_pairs=int(data.get("impostor_pairs", 0)),  # type: ignore[call-overload]
        )


def fit_calibration(impostor_cosines: np.ndarray, model_version: str, source: str = "") -> Calibration:
    """Fit a model's calibration to its impostor cosines (any order): empirical FMR on a grid of levels as
    far as MIN_TAIL_COUNT impostors reach, then a straight line in log FMR fitted to the tail."""
    scores = np.sort(np.asarray(impostor_cosines, dtype=np.float64))[::-1]
    scores = scores[np.isfinite(scores)]
    count = len(scores)
    if count < MIN_TAIL_COUNT * 100:
        raise ValueError(f"{count} impostor pairs are too few to calibrate a similarity scale")
    last_level = math.log10(count / MIN_TAIL_COUNT)
    cosines, levels = [float(scores[-1])], [0.0]
    for level in np.arange(_GRID_STEP, last_level + 1e-9, _GRID_STEP):
        above = max(1, round(count * 10.0**-level))
        cosine = float(scores[above - 1])
        if cosine > cosines[-1]:
            cosines.append(cosine)
            levels.append(float(-math.log10(above / count)))
    tail = [(c, v) for c, v in zip(cosines, levels, strict=True) if v >= levels[-1] - _TAIL_DECADES]
    slope = float(np.polyfit([c for c, _ in tail], [v for _, v in tail], 1)[0]) if len(tail) >= 3 else 0.0
    if slope <= 0.0:
        raise ValueError("the impostor tail does not fall: cannot extend the scale past the data")
    return Calibration(model_version, tuple(cosines), tuple(levels), slope, source, count)


def calibration_file(model_version: str) -> Path:
    return CALIBRATION_DIR / f"{model_version.split('+')[0]}.json"


def write_calibration(calibration: Calibration, source: str = "") -> Path:
    path = calibration_file(calibration.model_version)
    data = calibration.to_json()
    data["source"] = source or calibration.source
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    calibration_for.cache_clear()
    return path


@lru_cache(maxsize=8)
def calibration_for(model_version: str = settings.EMBEDDER_VERSION) -> Calibration:
    """The shipped calibration of a model version."""
    path = calibration_file(model_version)
    if not path.is_file():
        raise LookupError(f"no similarity calibration for face model {model_version!r} ({path} is missing)")
    calibration = Calibration.from_json(json.loads(path.read_text()))
    if calibration.model_version != model_version:
        raise LookupError(f"{path} calibrates {calibration.model_version!r}, not {model_version!r}")
    return calibration


def similarity_from_cosine(cosine: np.ndarray | float, model_version: str = settings.EMBEDDER_VERSION) -> np.ndarray:
    """Cosines of one model to similarities on the published scale (elementwise)."""
    calibration = calibration_for(model_version)
    values = np.asarray(cosine, dtype=np.float64)
    return np.vectorize(calibration.similarity_from_cosine, otypes=[np.float64])(values)


def cosine_from_similarity(similarity: float, model_version: str = settings.EMBEDDER_VERSION) -> float:
    """A FaceMatchThreshold as the cosine cut-off the index searches with."""
    return calibration_for(model_version).cosine_from_similarity(similarity)
