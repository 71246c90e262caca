"""The pure parts of `candor bench all`: which pairs and probes count, and how a system's answers score.

No models and no I/O beyond reading expected.csv, so tests/test_bench.py checks them on hand-made inputs.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Pair:
    first: int
    second: int
    same: bool


def labelled_pairs(names: Sequence[str], labels: Sequence[str], same_source: Iterable[set[str]] = ()) -> list[Pair]:
    """Every pair of faces, same person or not; pairs cut from one source photo (resized or cropped copies)
    are left out: they say nothing about recognising a person across photos."""
    groups = list(same_source)
    pairs = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if any(names[i] in group and names[j] in group for group in groups):
                continue
            pairs.append(Pair(i, j, labels[i] == labels[j]))
    return pairs


def pair_accuracy(pairs: Sequence[Pair], decide: Callable[[int, int], bool]) -> float:
    """Share of pairs where `decide(i, j)` (same person?) agrees with the labels; a face a system did not
    find is its own answer: the caller's `decide` says "different" for it."""
    if not pairs:
        return math.nan
    return sum(decide(pair.first, pair.second) == pair.same for pair in pairs) / len(pairs)


def read_expected(path: Path) -> dict[str, set[str]]:
    """probe/expected.csv: file -> the set of enrolled identities in it (empty: must match nobody)."""
    with path.open(newline="") as handle:
        return {
            row["file"]: {name for name in row["expected_identities"].split(";") if name}
            for row in csv.DictReader(handle)
        }


@dataclass(frozen=True)
class IdentificationScore:
    correct: int
    total: int
    failures: list[str]

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else math.nan


def score_identification(found: dict[str, set[str]], expected: dict[str, set[str]]) -> IdentificationScore:
    """A probe is right when the identities found equal the expected set exactly (a probe with nobody
    enrolled is right only when nothing matches); a probe the system never answered is wrong."""
    failures = []
    for name, wanted in expected.items():
        got = found.get(name)
        if got != wanted:
            shown = "no answer" if got is None else ", ".join(sorted(got)) or "nobody"
            failures.append(f"{name}: found {shown}, expected {', '.join(sorted(wanted)) or 'nobody'}")
    return IdentificationScore(len(expected) - len(failures), len(expected), failures)


def nearest_identities(
    probe: np.ndarray, gallery: np.ndarray, labels: Sequence[str], accept: Callable[[float], bool], *, distance: bool
) -> set[str]:
    """The identity of each probe face's nearest gallery face, kept when `accept(score)`; score is cosine
    similarity (vectors L2-normalised) or, with `distance`, Euclidean distance."""
    found: set[str] = set()
    if probe.size == 0 or gallery.size == 0:
        return found
    if distance:
        scores = np.linalg.norm(probe[:, None, :] - gallery[None, :, :], axis=2)
        nearest = scores.argmin(axis=1)
    else:
        scores = probe @ gallery.T
        nearest = scores.argmax(axis=1)
    for row, column in enumerate(nearest):
        if accept(float(scores[row, column])):
            found.add(labels[int(column)])
    return found


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation; NaN for no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else math.nan


_REPORT = re.compile(r"^REPORT RequestId: \S+\tDuration: ([0-9.]+) ms", re.MULTILINE)


def report_durations_ms(log_text: str) -> list[float]:
    """Durations of the invocations in a function's log, from Lambda's REPORT lines."""
    return [float(match) for match in _REPORT.findall(log_text)]
