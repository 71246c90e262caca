"""The pure parts of `candor bench all`, on hand-made inputs: box matching, pair accuracy, probe scoring,
REPORT parsing and the Markdown section it rewrites."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.preprocessing import match
from benchmarks.report import FILE_HEADER, replace_section
from benchmarks.scoring import (
    Pair,
    labelled_pairs,
    nearest_identities,
    pair_accuracy,
    percentile,
    read_expected,
    report_durations_ms,
    score_identification,
)
from candor.core.faces import BoundingBox, DetectedFace


def face(left: float, top: float, size: float, confidence: float = 0.9) -> DetectedFace:
    return DetectedFace(BoundingBox(left, top, size, size), (), confidence)


def test_a_box_matches_one_truth_box_at_iou_half_and_the_rest_are_false_positives() -> None:
    truth = [BoundingBox(0, 0, 10, 10), BoundingBox(100, 100, 10, 10)]
    found = [
        face(0, 0, 10, 0.9),  # exact
        face(1, 1, 10, 0.8),  # same face again: the truth box is taken, so a false positive
        face(103, 103, 10, 0.7),  # IoU 49/151 < 0.5: a miss and a false positive
        face(50, 50, 10, 0.6),  # nothing there
    ]
    assert match(truth, found) == (1, 3)
    assert match(truth, [face(102, 100, 10)]) == (1, 0)  # IoU 80/120 >= 0.5
    assert match(truth, []) == (0, 0)


def test_pairs_leave_out_copies_of_one_photo_and_accuracy_counts_agreement() -> None:
    names = ["a1", "a2", "a2-small", "b1"]
    labels = ["a", "a", "a", "b"]
    pairs = labelled_pairs(names, labels, [{"a2", "a2-small"}])
    assert [(p.first, p.second, p.same) for p in pairs] == [
        (0, 1, True),
        (0, 2, True),
        (0, 3, False),
        (1, 3, False),
        (2, 3, False),
    ]
    # Says "same" for everything: right on the 2 same-person pairs only.
    assert pair_accuracy(pairs, lambda i, j: True) == pytest.approx(2 / 5)
    # A face the system did not find (index 2) answers "different" to everything.
    assert pair_accuracy(pairs, lambda i, j: 2 not in (i, j) and labels[i] == labels[j]) == pytest.approx(4 / 5)
    assert math.isnan(pair_accuracy([], lambda i, j: True))
    assert Pair(0, 1, True).same


def test_expected_csv_scoring_needs_the_exact_set_and_nobody_for_the_last_row(tmp_path: Path) -> None:
    csv_file = tmp_path / "expected.csv"
    csv_file.write_text(
        "file,expected_identities,notes\n"
        "one.jpg,obama,\n"
        "two.jpg,obama;biden,two people\n"
        "stranger.png,,nobody enrolled\n"
    )
    expected = read_expected(csv_file)
    assert expected == {"one.jpg": {"obama"}, "two.jpg": {"obama", "biden"}, "stranger.png": set()}
    perfect = score_identification(
        {"one.jpg": {"obama"}, "two.jpg": {"biden", "obama"}, "stranger.png": set()}, expected
    )
    assert (perfect.correct, perfect.total, perfect.accuracy) == (3, 3, 1.0)
    wrong = score_identification(
        {"one.jpg": {"obama", "biden"}, "two.jpg": {"obama"}, "stranger.png": {"obama"}}, expected
    )
    assert wrong.correct == 0 and len(wrong.failures) == 3
    assert "expected nobody" in wrong.failures[2]
    unanswered = score_identification({"one.jpg": {"obama"}}, expected)
    assert unanswered.correct == 1 and "no answer" in unanswered.failures[0]


def test_nearest_identities_by_cosine_and_by_distance() -> None:
    gallery = np.array([[1.0, 0.0], [0.0, 1.0]])
    probe = np.array([[0.8, 0.6], [0.1, -0.995]])
    assert nearest_identities(probe, gallery, ["a", "b"], lambda s: s >= 0.5, distance=False) == {"a"}
    assert nearest_identities(probe, gallery, ["a", "b"], lambda d: d <= 0.7, distance=True) == {"a"}
    assert nearest_identities(np.zeros((0, 2)), gallery, ["a", "b"], lambda s: True, distance=False) == set()


def test_report_lines_and_percentiles() -> None:
    log = (
        "START RequestId: 1 Version: $LATEST\n"
        '{"level":"INFO","message":"faces detected"}\n'
        "REPORT RequestId: 1\tDuration: 12.50 ms\tBilled Duration: 13 ms\tMemory Size: 1536 MB\n"
        "REPORT RequestId: 2\tDuration: 7.25 ms\tBilled Duration: 8 ms\tMemory Size: 1536 MB\n"
    )
    assert report_durations_ms(log) == [12.5, 7.25]
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert math.isnan(percentile([], 99))


def test_only_its_own_section_of_the_notes_is_rewritten() -> None:
    created = replace_section(None, "Speed", "new figures")
    assert created.startswith(FILE_HEADER) and created.endswith("## Speed\n\nnew figures\n")
    document = (
        "# Benchmarks\n\n## Search index\n\nkept\n\n## Speed\n\nold\n\n### detail\n\nold too\n\n## Later\n\nkept\n"
    )
    updated = replace_section(document, "Speed", "new")
    assert updated == "# Benchmarks\n\n## Search index\n\nkept\n\n## Speed\n\nnew\n\n## Later\n\nkept\n"
    appended = replace_section("# Benchmarks\n\n## Search index\n\nkept\n", "Speed", "new")
    assert appended == "# Benchmarks\n\n## Search index\n\nkept\n\n## Speed\n\nnew\n"
