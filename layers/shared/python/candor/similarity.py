"""Rekognition reports similarity on a 0-100 scale; FaceNet gives cosine similarity in -1..1.

The map is monotonic and piecewise linear: cosine 0 (or less) -> 0, the calibrated "same person" cosine
-> 80 (Rekognition's default FaceMatchThreshold), cosine 1 -> 100. So the default threshold of 80 means
exactly the operating point measured on the labelled photos (docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np

from candor.settings import COSINE_AT_DEFAULT_THRESHOLD, DEFAULT_FACE_MATCH_THRESHOLD


def similarity_from_cosine(cosine: np.ndarray | float) -> np.ndarray:
    c = np.clip(np.asarray(cosine, dtype=np.float64), 0.0, 1.0)
    knee, at_knee = COSINE_AT_DEFAULT_THRESHOLD, DEFAULT_FACE_MATCH_THRESHOLD
    below = c / knee * at_knee
    above = at_knee + (c - knee) / (1.0 - knee) * (100.0 - at_knee)
    return np.where(c < knee, below, above)


def cosine_from_similarity(similarity: float) -> float:
    """The inverse map, used to turn a FaceMatchThreshold into a cosine cut-off for the index."""
    s = min(max(float(similarity), 0.0), 100.0)
    knee, at_knee = COSINE_AT_DEFAULT_THRESHOLD, DEFAULT_FACE_MATCH_THRESHOLD
    if s < at_knee:
        return s / at_knee * knee
    return knee + (s - at_knee) / (100.0 - at_knee) * (1.0 - knee)
