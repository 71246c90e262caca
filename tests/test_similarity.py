"""The similarity scale as a user reads it: each similarity names a false-match rate, each shipped model's
calibration maps cosines onto it both ways, and the risk of a search grows with the collection."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from candor.core import similarity
from candor.core.settings import EMBEDDER_VERSION, FACENET_VERSION, SFACE_VERSION
from candor.core.similarity import (
    Calibration,
    cosine_from_similarity,
    fit_calibration,
    fmr_of_similarity,
    lowest_threshold_for_risk,
    risk_of_false_match,
    similarity_from_cosine,
    similarity_from_fmr,
)


@pytest.mark.parametrize(
    ("similarity_value", "fmr"), [(0, 1.0), (20, 1e-1), (60, 1e-3), (80, 1e-4), (90, 1e-5), (99, 1e-6), (99.9, 1e-7)]
)
def test_published_points_of_the_scale(similarity_value: float, fmr: float) -> None:
    assert fmr_of_similarity(similarity_value) == pytest.approx(fmr, rel=1e-9)
    assert similarity_from_fmr(fmr) == pytest.approx(similarity_value, abs=1e-9)


def test_the_scale_round_trips_and_is_monotonic() -> None:
    values = np.concatenate([np.linspace(0, 99, 397), 99 + np.logspace(-6, 0, 40, endpoint=False)])
    rates = [fmr_of_similarity(v) for v in values]
    assert all(a > b for a, b in itertools.pairwise(rates))
    for value, rate in zip(values, rates, strict=True):
        assert similarity_from_fmr(rate) == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("version", [SFACE_VERSION, FACENET_VERSION])
def test_each_shipped_calibration_maps_cosines_both_ways(version: str) -> None:
    calibration = similarity.calibration_for(version)
    assert calibration.impostor_pairs > 20_000_000 and "LFW" in calibration.source
    cosines = np.linspace(-1, 1, 401)
    similarities = similarity_from_cosine(cosines, version)
    assert np.all(np.diff(similarities) >= 0) and similarities[0] == 0 and similarities[-1] <= 100
    for value in (10, 50, 80, 85, 90, 95, 99, 99.5, 99.9):
        cosine = cosine_from_similarity(value, version)
        assert float(similarity_from_cosine(cosine, version)) == pytest.approx(value, abs=1e-6)
        # And the cut-off means what the scale says: FMR at that cosine is the promised one.
        assert calibration.fmr_at_cosine(cosine) == pytest.approx(fmr_of_similarity(value), rel=1e-6)


def test_the_default_model_is_calibrated() -> None:
    assert similarity.calibration_for().model_version == EMBEDDER_VERSION == SFACE_VERSION


def test_a_fitted_calibration_measures_the_impostors_it_was_fitted_on() -> None:
    impostors = np.random.default_rng(7).normal(0.0, 0.1, 2_000_000)
    fitted = fit_calibration(impostors, "test-model")
    for value in (40.0, 60.0, 80.0):
        cut = fitted.cosine_from_similarity(value)
        measured = float(np.mean(impostors >= cut))
        assert measured == pytest.approx(fmr_of_similarity(value), rel=0.15)
    # Past the data the line in log FMR overstates a Gaussian tail: the scale stays conservative there.
    cut = fitted.cosine_from_similarity(99.0)
    true_fmr = 0.5 * math.erfc(cut / 0.1 / math.sqrt(2))
    assert true_fmr <= fmr_of_similarity(99.0)
    again = Calibration.from_json(fitted.to_json())
    assert again.cosine_from_similarity(90) == pytest.approx(fitted.cosine_from_similarity(90), abs=1e-5)


def test_too_few_impostors_are_refused() -> None:
    with pytest.raises(ValueError, match="too few"):
        fit_calibration(np.zeros(500), "test-model")


def test_risk_grows_with_the_collection_and_the_lowest_passing_threshold_with_it() -> None:
    assert risk_of_false_match(1e-4, 1) == pytest.approx(1e-4)
    assert risk_of_false_match(1e-6, 1_000_000) == pytest.approx(1 - math.exp(-1), rel=1e-6)
    assert risk_of_false_match(1e-4, 0) == 0.0
    previous = 0.0
    for faces in (1, 100, 10_000, 1_000_000, 100_000_000):
        lowest = lowest_threshold_for_risk(0.01, faces)
        assert risk_of_false_match(fmr_of_similarity(lowest), faces) <= 0.01
        assert risk_of_false_match(fmr_of_similarity(lowest - 0.01), faces) > 0.01 or lowest == 0.0
        assert lowest >= previous
        previous = lowest
    # 1% at a million faces needs a false-match rate near 1e-8: similarity 99.99.
    assert lowest_threshold_for_risk(0.01, 1_000_000) == pytest.approx(99.99, abs=0.01)
