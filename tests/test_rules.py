"""The pipeline's rules in plain Python: enrolment by key or metadata, event parsing, similarity, the index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from candor.adapters.s3_events import photo_refs_from_notification
from candor.core.enrolment import enrolment_for, face_id_for, photo_id_for
from candor.core.errors import InvalidParameterError, MalformedEventError
from candor.core.faces import Enrolment
from candor.core.settings import EMBEDDING_SIZE
from candor.core.similarity import cosine_from_similarity, fmr_of_similarity, similarity_from_cosine
from candor.index.vectors import ExactVectorIndex


def test_key_under_enroll_prefix_enrols_the_named_person() -> None:
    assert enrolment_for("enroll/staff/ada_l/2024.jpg", {}) == Enrolment("staff", "ada_l", None)


def test_metadata_wins_over_key_and_records_consent() -> None:
    metadata = {"candor-collection": "visitors", "candor-person": "bob", "candor-consent": "form-17"}
    assert enrolment_for("enroll/staff/ada/1.jpg", metadata) == Enrolment("visitors", "bob", "form-17")


def test_other_keys_are_not_enrolled() -> None:
    assert enrolment_for("photos/holiday.jpg", {}) is None


@pytest.mark.parametrize(
    ("key", "metadata"),
    [
        ("enroll/staff/ada.jpg", {}),  # no person folder
        ("enroll/bad collection/ada/1.jpg", {}),  # space in the collection id
        ("photos/x.jpg", {"candor-collection": "staff"}),  # metadata without a person
        ("enroll/staff/../etc/passwd", {}),
    ],
)
def test_malformed_enrolment_is_refused_with_a_reason(key: str, metadata: dict[str, str]) -> None:
    with pytest.raises(InvalidParameterError):
        enrolment_for(key, metadata)


def test_ids_are_stable_so_redelivery_updates_the_same_records() -> None:
    assert photo_id_for("b", "k.jpg") == photo_id_for("b", "k.jpg") != photo_id_for("b", "k2.jpg")
    photo_id = photo_id_for("b", "k.jpg")
    assert face_id_for(photo_id, 0) == face_id_for(photo_id, 0) != face_id_for(photo_id, 1)


def _notification(key: str, event: str = "ObjectCreated:Put") -> str:
    return json.dumps({"Records": [{"eventName": event, "s3": {"bucket": {"name": "b"}, "object": {"key": key}}}]})


def test_notification_keys_are_url_decoded() -> None:
    (ref,) = photo_refs_from_notification(_notification("photos/two+people%2Bmore%2Fcaf%C3%A9.jpg"))
    assert (ref.bucket, ref.key) == ("b", "photos/two people+more/café.jpg")


def test_s3_test_event_names_no_photo() -> None:
    assert photo_refs_from_notification(json.dumps({"Event": "s3:TestEvent", "Bucket": "b"})) == []


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[]",
        json.dumps({"Records": "x"}),
        _notification("a.jpg", "ObjectRemoved:Delete"),
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {}}]}),
    ],
)
def test_malformed_notifications_raise_a_clear_error(body: str) -> None:
    with pytest.raises(MalformedEventError):
        photo_refs_from_notification(body)


def test_similarity_scale_is_monotonic_and_the_default_threshold_means_one_in_ten_thousand() -> None:
    cosines = np.linspace(-1, 1, 201)
    similarities = similarity_from_cosine(cosines)
    assert np.all(np.diff(similarities) >= 0)
    assert similarities[0] == 0 and similarities[-1] == pytest.approx(100, abs=1e-3)
    assert fmr_of_similarity(80) == pytest.approx(1e-4)
    for similarity in (0.5, 30, 80, 95, 99):
        assert float(similarity_from_cosine(cosine_from_similarity(similarity))) == pytest.approx(similarity)


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, EMBEDDING_SIZE)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_index_returns_nearest_first_and_nothing_below_the_cut_off() -> None:
    rng = np.random.default_rng(1)
    vectors = _unit(rng, 50)
    index = ExactVectorIndex()
    index.add([f"f{i}" for i in range(50)], vectors)
    (hits,) = index.search(vectors[7:8], k=3, min_cosine=0.5)
    assert [hit.face_id for hit in hits] == ["f7"]  # random vectors in this many dimensions are near-orthogonal
    (hits,) = index.search(vectors[7:8], k=3, min_cosine=-1.0)
    assert hits[0].face_id == "f7" and hits[0].cosine == pytest.approx(1.0)
    assert hits[0].cosine >= hits[1].cosine >= hits[2].cosine


def test_index_remove_and_re_add_replace_faces() -> None:
    rng = np.random.default_rng(2)
    vectors = _unit(rng, 3)
    index = ExactVectorIndex()
    index.add(["a", "b", "c"], vectors)
    index.add(["b"], vectors[1:2])  # delivered twice: still one entry
    assert len(index) == 3
    index.remove(["a"])
    assert len(index) == 2
    (hits,) = index.search(vectors[0:1], k=5, min_cosine=0.9)
    assert hits == []
