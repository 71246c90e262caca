"""Tracking the faces of the shared sample clips into persons, whole and split into segments
(sample videos by Intel Corporation, CC BY 4.0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from candor.core.faces import BoundingBox
from candor.video.frames import sample_frames
from candor.video.tracking import FaceTracker, Person, Track, merge

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "video"
TWO_PEOPLE = VIDEOS / "head-pose-face-detection-female-and-male.gif"


def track_segment(models, path: Path, start_ms: int = 0, end_ms: int | None = None, first_id: int = 0) -> list[Track]:  # type: ignore[no-untyped-def]
    detector, embedder = models
    tracker = FaceTracker(first_track_id=first_id)
    for frame in sample_frames(path, start_ms=start_ms, end_ms=end_ms):
        faces = detector.detect(frame.image)
        embeddings = embedder.embed_faces(frame.image, faces)
        tracker.update(
            frame.timestamp_ms,
            [
                (face.bounding_box, embedding, face.confidence)
                for face, embedding in zip(faces, embeddings, strict=True)
            ],
        )
    return tracker.tracks


def centres(person: Person) -> np.ndarray:
    return np.array([face.box.left + face.box.width / 2 for face in person.faces])


@pytest.mark.parametrize(
    ("clip", "people"),
    [
        ("head-pose-face-detection-female-and-male.gif", 2),
        ("head-pose-face-detection-female.gif", 1),
        ("again.mkv", 1),
        ("book.mkv", 1),
    ],
)
def test_a_whole_clip_gives_one_person_per_person_present(models, clip: str, people: int) -> None:  # type: ignore[no-untyped-def]
    persons = merge(track_segment(models, VIDEOS / clip))
    assert len(persons) == people
    samples = len(list(sample_frames(VIDEOS / clip)))
    # Every person is seen in (nearly) every sample, while turning their head, under one Index.
    assert all(len(person.faces) >= samples - 1 for person in persons)
    assert [person.index for person in persons] == list(range(people))


def test_two_people_side_by_side_never_swap_indexes(models) -> None:  # type: ignore[no-untyped-def]
    persons = merge(track_segment(models, TWO_PEOPLE))
    assert len(persons) == 2
    # Each sits on one side of the frame the whole clip: an Index switch would put a face on the other side.
    left, right = sorted(persons, key=lambda person: centres(person).mean())
    assert centres(left).max() < 240 < centres(right).min()
    for person in persons:
        stamps = [face.timestamp_ms for face in person.faces]
        assert len(stamps) == len(set(stamps))  # one face per sample


def test_a_segment_border_mid_appearance_gives_the_same_persons(models) -> None:  # type: ignore[no-untyped-def]
    whole = merge(track_segment(models, TWO_PEOPLE))
    first = track_segment(models, TWO_PEOPLE, end_ms=2400)
    second = track_segment(models, TWO_PEOPLE, start_ms=2400, first_id=1000)
    split = merge(first + second)
    assert len(first) == len(second) == 2  # both people are on screen across the border
    assert len(split) == len(whole) == 2

    def appearances(persons: list[Person]) -> list[list[tuple[int, float]]]:
        return sorted([(face.timestamp_ms, round(face.box.left)) for face in person.faces] for person in persons)

    assert appearances(split) == appearances(whole)


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_a_face_hidden_for_a_few_samples_keeps_its_track_and_strangers_get_their_own() -> None:
    tracker = FaceTracker(max_missed=3)
    alice, bob = unit(1, 0.1, 0), unit(0, 1, 0.1)
    box = BoundingBox(100, 100, 50, 50)
    first = tracker.update(0, [(box, alice, 0.9)])
    for timestamp in (200, 400, 600):  # hidden
        tracker.update(timestamp, [])
    # Back a little to the side, turned (a weaker likeness), and a stranger where she was.
    back = tracker.update(800, [(BoundingBox(110, 102, 50, 50), unit(1, 0.5, 0.6), 0.9), (box, bob, 0.9)])
    assert back[0] == first[0]
    assert back[1] != first[0]
    assert len(merge(tracker.tracks)) == 2


def test_merge_never_joins_two_faces_seen_at_the_same_time() -> None:
    twin = unit(1, 0, 0)
    tracker = FaceTracker()
    tracker.update(0, [(BoundingBox(0, 0, 40, 40), twin, 0.9), (BoundingBox(300, 0, 40, 40), twin, 0.9)])
    assert len(merge(tracker.tracks)) == 2


def test_a_face_the_caller_links_to_a_track_joins_it_whatever_its_embedding() -> None:
    tracker = FaceTracker()
    box = BoundingBox(100, 100, 50, 50)
    (first,) = tracker.update(0, [(box, unit(1, 0, 0), 0.9)])
    # Turned away (an unlike embedding) but where she was: the tracker alone starts a new track.
    turned = unit(0, 0, 1)
    (alone,) = _copy(tracker).update(200, [(BoundingBox(102, 100, 50, 50), turned, 0.9)])
    assert alone != first
    (linked,) = tracker.update(200, [(BoundingBox(102, 100, 50, 50), turned, 0.9)], continuing={0: first})
    assert linked == first


def _copy(tracker: FaceTracker) -> FaceTracker:
    copy = FaceTracker(first_track_id=tracker.next_track_id)
    for track in tracker.active_tracks:
        copy.restore(Track(track.track_id, list(track.faces), track.missed))
    return copy
