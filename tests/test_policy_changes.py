"""Loosening a collection's policy waits for the stack's delay, tightening does not: what is in force, what
is pending, and cancelling, as the stored policy says them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from candor.accountability.policy import (
    CollectionPolicy,
    cancel_pending,
    change_policy,
    tightest,
)
from candor.core.errors import InvalidParameterError

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
DAY = timedelta(hours=24)
MISSING_PERSONS = CollectionPolicy(purposes=("missing-persons",), identification=True)


def test_the_loosening_in_the_repro_waits_a_day_and_the_old_rules_hold_meanwhile() -> None:
    loosened = CollectionPolicy(
        purposes=("missing-persons", "general"),
        identification=False,
        searches_per_caller_per_minute=1_000_000,
        searches_per_minute=1_000_000,
    )
    assert MISSING_PERSONS.loosenings(loosened) == [
        "adds the purpose(s) general",
        "drops identification",
        "lowers the match threshold floor from 99 to 80",
        "raises the quota per caller from 60 to 1000000 a minute",
        "raises the collection's quota from 600 to 1000000",
        "removes the false-match risk limit of 1.00%",
    ]
    stored = change_policy(MISSING_PERSONS, loosened, NOW, DAY, "admin")

    in_force = stored.in_force(NOW + DAY - timedelta(seconds=1))
    assert in_force.purposes == ("missing-persons",) and in_force.identification and in_force.floor == 99
    assert in_force.searches_per_caller_per_minute == 60 and in_force.max_risk == 0.01
    assert stored.pending is not None and stored.pending.effective_at == NOW + DAY
    assert stored.pending.requested_by == "admin"
    assert stored.in_force(NOW + DAY) == loosened


def test_tightening_is_immediate_and_drops_a_pending_loosening() -> None:
    pending = change_policy(MISSING_PERSONS, replace(MISSING_PERSONS, searches_per_minute=5_000), NOW, DAY, "admin")
    assert pending.pending is not None
    tighter = replace(MISSING_PERSONS, searches_per_caller_per_minute=10)
    stored = change_policy(pending, tighter, NOW + timedelta(hours=1), DAY, "admin")
    assert stored == tighter and stored.pending is None


def test_a_change_both_tighter_and_looser_tightens_now_and_loosens_later() -> None:
    old = CollectionPolicy(purposes=("general", "investigation"), searches_per_caller_per_minute=60)
    new = CollectionPolicy(purposes=("investigation", "missing-persons"), searches_per_caller_per_minute=10)
    stored = change_policy(old, new, NOW, DAY, "admin")
    assert stored.in_force(NOW).purposes == ("investigation",)  # general withdrawn now, missing-persons later
    assert stored.in_force(NOW).searches_per_caller_per_minute == 10
    assert stored.in_force(NOW + DAY) == new


def test_a_pending_change_survives_storage_and_can_be_cancelled_until_it_is_in_force() -> None:
    stored = change_policy(MISSING_PERSONS, CollectionPolicy(purposes=("general",)), NOW, DAY, "admin")
    assert stored.in_force(NOW).purposes == ()  # no purpose in common: nobody may search until then
    round_tripped = CollectionPolicy.from_dict(stored.to_dict())
    assert round_tripped == stored

    assert cancel_pending(round_tripped, NOW + timedelta(hours=23)) == replace(stored, pending=None)
    with pytest.raises(InvalidParameterError, match="already in force"):
        cancel_pending(round_tripped, NOW + DAY)
    with pytest.raises(InvalidParameterError, match="no pending policy change"):
        cancel_pending(MISSING_PERSONS, NOW)


def test_no_delay_means_every_change_is_immediate() -> None:
    assert change_policy(MISSING_PERSONS, CollectionPolicy(), NOW, timedelta(0), "admin") == CollectionPolicy()


def test_tightest_keeps_the_stricter_of_each_rule() -> None:
    a = CollectionPolicy(purposes=("a", "b"), min_match_threshold=90, max_false_match_risk=0.05)
    b = CollectionPolicy(purposes=("b",), identification=True, searches_per_minute=100)
    both = tightest(a, b)
    assert (both.purposes, both.identification, both.floor, both.searches_per_minute) == (("b",), True, 99, 100)
    assert both.max_risk == 0.01
