"""Tracking faces across sampled frames, SORT/ByteTrack style, and merging tracks into persons.

A face joins the track whose last box it overlaps and whose embedding it resembles, both together: overlap
alone swaps two people who cross, the embedding alone loses a head that turns. A track that misses a few
samples (a turned or hidden head) waits; a face that returns later, or in the next segment, starts a new
track that `merge` joins to its person by embedding. No I/O: plain records in, plain records out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from candor.core import settings
from candor.core.faces import BoundingBox


@dataclass(frozen=True)
class TrackedFace:
    timestamp_ms: int
    box: BoundingBox
    embedding: np.ndarray  # unit vector
    confidence: float = 1.0


@dataclass
class Track:
    track_id: int
    faces: list[TrackedFace] = field(default_factory=list)
    missed: int = 0

    @property
    def first_ms(self) -> int:
        return self.faces[0].timestamp_ms

    @property
    def last_ms(self) -> int:
        return self.faces[-1].timestamp_ms

    @property
    def embedding(self) -> np.ndarray:
        return _unit(np.sum([face.embedding * face.confidence for face in self.faces], axis=0))


@dataclass(frozen=True)
class Person:
    """One person of a whole video: `index` is Rekognition's Person.Index, numbered by first appearance."""

    index: int
    faces: tuple[TrackedFace, ...]

    @property
    def first_ms(self) -> int:
        return self.faces[0].timestamp_ms

    @property
    def last_ms(self) -> int:
        return self.faces[-1].timestamp_ms


class FaceTracker:
    def __init__(
        self,
        min_iou: float = settings.TRACK_MIN_IOU,
        min_cosine: float = settings.TRACK_MIN_COSINE,
        reidentify_cosine: float = settings.TRACK_REIDENTIFY_COSINE,
        max_missed: int = settings.TRACK_MAX_MISSED_SAMPLES,
        first_track_id: int = 0,
    ) -> None:
        self.min_iou = min_iou
        self.min_cosine = min_cosine
        self.reidentify_cosine = reidentify_cosine
        self.max_missed = max_missed
        self._next_id = first_track_id
        self._active: list[Track] = []
        self._ended: list[Track] = []

    def update(
        self,
        timestamp_ms: int,
        faces: Sequence[tuple[BoundingBox, np.ndarray, float]],
        continuing: Mapping[int, int] | None = None,
    ) -> list[int]:
        """Link one sample's faces (box, unit embedding, confidence) to tracks; returns each face's track id.
        `continuing` names faces (by position) the caller has linked to a track (by id) already."""
        pairs: list[tuple[float, int, int]] = []
        position = {track.track_id: t for t, track in enumerate(self._active)}
        for f, track_id in (continuing or {}).items():
            if track_id in position:
                pairs.append((float("inf"), position[track_id], f))
        for t, track in enumerate(self._active):
            last = track.faces[-1]
            reference = track.embedding
            for f, (box, embedding, _) in enumerate(faces):
                iou = box_overlap(last.box, box)
                cosine = float(np.dot(reference, embedding))
                # Overlap with some likeness (a turning head), or a clear likeness after the box moved.
                if (iou >= self.min_iou and cosine >= self.min_cosine) or cosine >= self.reidentify_cosine:
                    pairs.append((iou + cosine, t, f))
        assigned: dict[int, int] = {}
        used_tracks: set[int] = set()
        for _, t, f in sorted(pairs, reverse=True):  # greedy: best pairs first
            if t not in used_tracks and f not in assigned:
                assigned[f] = t
                used_tracks.add(t)
        ids: list[int] = []
        for f, (box, embedding, confidence) in enumerate(faces):
            face = TrackedFace(timestamp_ms, box, _unit(embedding), confidence)
            if f in assigned:
                track = self._active[assigned[f]]
                track.missed = 0
            else:
                track = Track(self._next_id)
                self._next_id += 1
                self._active.append(track)
                used_tracks.add(len(self._active) - 1)
            track.faces.append(face)
            ids.append(track.track_id)
        still: list[Track] = []
        for t, track in enumerate(self._active):
            if t not in used_tracks:
                track.missed += 1
            (self._ended if track.missed > self.max_missed else still).append(track)
        self._active = still
        return ids

    @property
    def active_tracks(self) -> list[Track]:
        """The tracks the next sample's faces can still join."""
        return list(self._active)

    @property
    def next_track_id(self) -> int:
        return self._next_id

    def restore(self, track: Track) -> None:
        """Takes back an active track saved between invocations (a live stream's tracker state)."""
        self._active.append(track)
        self._next_id = max(self._next_id, track.track_id + 1)

    @property
    def tracks(self) -> list[Track]:
        """Every track so far, ended and active, by first appearance."""
        return sorted(self._ended + self._active, key=lambda track: (track.first_ms, track.track_id))


def merge(tracks: Iterable[Track], min_cosine: float = settings.TRACK_MERGE_MIN_COSINE) -> list[Person]:
    """Join tracks (of one video's segments, or one person's reappearances) into persons: repeatedly the two
    groups with the most similar mean embeddings, at least `min_cosine`, that never share a sample."""
    groups = [([track], {face.timestamp_ms for face in track.faces}) for track in tracks if track.faces]
    while True:
        best: tuple[float, int, int] | None = None
        embeddings = [_group_embedding(members) for members, _ in groups]
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                if groups[i][1] & groups[j][1]:
                    continue
                cosine = float(np.dot(embeddings[i], embeddings[j]))
                if cosine >= min_cosine and (best is None or cosine > best[0]):
                    best = (cosine, i, j)
        if best is None:
            break
        _, i, j = best
        groups[i] = (groups[i][0] + groups[j][0], groups[i][1] | groups[j][1])
        del groups[j]
    persons = [sorted((face for track in members for face in track.faces), key=_time) for members, _ in groups]
    persons.sort(key=lambda faces: faces[0].timestamp_ms)
    return [Person(index, tuple(faces)) for index, faces in enumerate(persons)]


def _time(face: TrackedFace) -> int:
    return face.timestamp_ms


def _group_embedding(members: list[Track]) -> np.ndarray:
    return _unit(np.sum([face.embedding * face.confidence for track in members for face in track.faces], axis=0))


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def box_overlap(a: BoundingBox, b: BoundingBox) -> float:
    """Intersection over union."""
    left, top = max(a.left, b.left), max(a.top, b.top)
    right, bottom = min(a.left + a.width, b.left + b.width), min(a.top + a.height, b.top + b.height)
    inter = max(right - left, 0.0) * max(bottom - top, 0.0)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0
