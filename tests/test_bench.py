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


def _pipeline_figures(cpu_s: float | None) -> tuple[dict[str, object], dict[str, object]]:
    summary = {
        "pipeline_efficiency": 0.6,
        "pipeline_photos_per_s": 9.0,
        "compute_photos_per_s": 15.0,
        "candor_cpu_s_per_photo": 0.08,
        "load_average": [0.3, 0.4],
    }
    stage = {"invocations": 8, "busy_s": 9.0, "instances": 2, "cpu_s": cpu_s}
    pipe = {
        "wall_s": 6.0,
        "photos": 56,
        "rounds": 2,
        "embed_photos": 48,
        "calls_ms": {
            name: 3.0
            for name in (
                "S3 GetObject",
                "DynamoDB PutItem",
                "DynamoDB GetItem",
                "SQS SendMessage",
                "SQS ReceiveMessage",
            )
        },
        "stages": {"DetectFunction": stage, "EmbedFunction": {**stage, "busy_s": 10.0}},
        "compute_detect_s": 1.5,
        "compute_embed_s": 2.5,
        "load": 1.0,
        "runtime_cpu_s": 3.0 if cpu_s is not None else None,
        "cores": 2,
    }
    return summary, pipe


def test_the_pipeline_section_names_the_instances_and_where_the_cpu_went() -> None:
    from benchmarks.side_by_side import _pipeline_section

    summary, pipe = _pipeline_figures(cpu_s=2.5)
    text = "\n".join(_pipeline_section(summary, pipe))

    assert "DetectFunction x2, EmbedFunction x2 worker processes" in text
    assert "| EmbedFunction | 2 | 48 / 8 | 10.00 s (83%) | 2.50 s |" in text
    # 2.5 + 2.5 + 3.0 s of CPU for 56 photos: 143 ms each, so 2 cores make at most 14.0 photos a second.
    assert "143 ms of CPU" in text and "at most 14.0 photos per second here (0.93 of the compute limit" in text
    assert "What holds it back: with every core busy" in text and "The machine was shared" not in text


def test_the_pipeline_section_says_so_when_the_cpu_time_cannot_be_read() -> None:
    from benchmarks.side_by_side import _pipeline_section

    summary, pipe = _pipeline_figures(cpu_s=None)
    text = "\n".join(_pipeline_section(summary, pipe))

    assert "The CPU time of the processes could not be read here" in text
