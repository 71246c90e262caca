"""The rules a collection is searched and enrolled under: its declared purposes, whether it is used for
identification (and so its threshold floor), and its search quotas. Safe by default: a collection created
without a policy may be searched for the purpose `general` only, at similarity 80 or more, at most
DEFAULT_SEARCHES_PER_CALLER identifications a minute per caller.

A change that tightens a policy is in force at once. One that loosens it (a purpose added, identification
dropped, a floor lowered, a quota or the false-match risk limit raised) waits for the stack's delay
(default 24 h): until then the tightest of the old and the new policy is in force and the new one is
visible as pending, so that a loosening can be seen, questioned and cancelled before it lets anyone search
more.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from candor.core.errors import InvalidParameterError

GENERAL_PURPOSE = "general"
# Amazon's own advice: act on a person because of a match only at similarity 99 or more.
IDENTIFICATION_FLOOR = 99.0
DEFAULT_FLOOR = 80.0
# Quotas per minute against bulk scanning: a person searching case by case stays far below them.
DEFAULT_SEARCHES_PER_CALLER = 60
DEFAULT_SEARCHES_PER_COLLECTION = 600
MAX_QUOTA = 1_000_000
# The highest probability that one searched face matches a stranger somewhere in an identification
# collection, at the search's threshold and the collection's size (candor/core/similarity.py,
# risk_of_false_match): the threshold a search needs rises with the collection.
DEFAULT_IDENTIFICATION_MAX_RISK = 0.01
PURPOSE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,63}$")
# A case reference or consent reference: printable, short, no line breaks (it is written to the audit log).
REFERENCE_PATTERN = re.compile(r"^[\x20-\x7e]{1,256}$")


@dataclass(frozen=True)
class CollectionPolicy:
    purposes: tuple[str, ...] = (GENERAL_PURPOSE,)
    # Acting on a person because of a match: the floor rises to IDENTIFICATION_FLOOR.
    identification: bool = False
    # A collection may raise its floor, never lower it below the rule's.
    min_match_threshold: float = DEFAULT_FLOOR
    searches_per_caller_per_minute: int = DEFAULT_SEARCHES_PER_CALLER
    searches_per_minute: int = DEFAULT_SEARCHES_PER_COLLECTION
    # MaxFalseMatchRisk; None: DEFAULT_IDENTIFICATION_MAX_RISK for identification, no limit otherwise.
    max_false_match_risk: float | None = None
    # A loosening waiting for its delay; in force from its effective_at on (see in_force).
    pending: PendingPolicy | None = None

    @property
    def floor(self) -> float:
        return max(self.min_match_threshold, IDENTIFICATION_FLOOR if self.identification else DEFAULT_FLOOR)

    @property
    def max_risk(self) -> float | None:
        """The risk limit in force: the one set, else the identification default, else none."""
        if self.max_false_match_risk is not None:
            return self.max_false_match_risk
        return DEFAULT_IDENTIFICATION_MAX_RISK if self.identification else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, pending=None))
        data["purposes"] = list(self.purposes)
        del data["pending"]
        if self.pending is not None:
            data["pending"] = {
                "policy": self.pending.policy.to_dict(),
                "effective_at": self.pending.effective_at.isoformat(),
                "requested_by": self.pending.requested_by,
            }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CollectionPolicy:
        if not data:
            return cls()
        fields = {name: value for name, value in data.items() if name != "pending"}
        # Stored: an empty list is a policy whose purposes were all withdrawn while a loosening waits.
        policy = parse_policy(fields, api_names=False) if fields.get("purposes") != [] else _without_purposes(fields)
        pending = data.get("pending")
        if not pending:
            return policy
        return replace(
            policy,
            pending=PendingPolicy(
                CollectionPolicy.from_dict(pending["policy"]),
                datetime.fromisoformat(pending["effective_at"]),
                str(pending.get("requested_by", "")),
            ),
        )

    def in_force(self, now: datetime) -> CollectionPolicy:
        """The policy searches follow at `now`: the pending one once its time has come."""
        if self.pending is not None and now >= self.pending.effective_at:
            return self.pending.policy
        return self

    def loosenings(self, new: CollectionPolicy) -> list[str]:
        """What `new` allows that this policy does not, one phrase each; empty when it only tightens."""
        found = []
        added = [purpose for purpose in new.purposes if purpose not in self.purposes]
        if added:
            found.append(f"adds the purpose(s) {', '.join(added)}")
        if self.identification and not new.identification:
            found.append("drops identification")
        if new.floor < self.floor:
            found.append(f"lowers the match threshold floor from {self.floor:g} to {new.floor:g}")
        if new.searches_per_caller_per_minute > self.searches_per_caller_per_minute:
            found.append(
                f"raises the quota per caller from {self.searches_per_caller_per_minute} to "
                f"{new.searches_per_caller_per_minute} a minute"
            )
        if new.searches_per_minute > self.searches_per_minute:
            found.append(f"raises the collection's quota from {self.searches_per_minute} to {new.searches_per_minute}")
        old_risk, new_risk = self.max_risk, new.max_risk
        if old_risk is not None and (new_risk is None or new_risk > old_risk):
            limit = "removes" if new_risk is None else f"raises it to {new_risk:.2%}, from"
            found.append(f"{limit} the false-match risk limit of {old_risk:.2%}")
        return found


@dataclass(frozen=True)
class PendingPolicy:
    """A loosening asked for, in force from `effective_at` (UTC) unless cancelled before then."""

    policy: CollectionPolicy
    effective_at: datetime
    requested_by: str


def tightest(a: CollectionPolicy, b: CollectionPolicy) -> CollectionPolicy:
    """What both policies allow, and no more: the policy in force while a loosening waits."""
    risks = [risk for risk in (a.max_risk, b.max_risk) if risk is not None]
    return CollectionPolicy(
        purposes=tuple(purpose for purpose in a.purposes if purpose in b.purposes),
        identification=a.identification or b.identification,
        min_match_threshold=max(a.min_match_threshold, b.min_match_threshold),
        searches_per_caller_per_minute=min(a.searches_per_caller_per_minute, b.searches_per_caller_per_minute),
        searches_per_minute=min(a.searches_per_minute, b.searches_per_minute),
        max_false_match_risk=min(risks) if risks else None,
    )


def change_policy(
    stored: CollectionPolicy, new: CollectionPolicy, now: datetime, delay: timedelta, requested_by: str
) -> CollectionPolicy:
    """The policy to store when `new` is asked for at `now`: `new` itself when it only tightens what is in
    force (a pending loosening is then dropped too), else the tightest of both with `new` pending for
    `delay`."""
    current = replace(stored.in_force(now), pending=None)
    if not current.loosenings(new) or delay <= timedelta(0):
        return replace(new, pending=None)
    return replace(tightest(current, new), pending=PendingPolicy(replace(new, pending=None), now + delay, requested_by))


def cancel_pending(stored: CollectionPolicy, now: datetime) -> CollectionPolicy:
    """The stored policy without its pending loosening; refused once that is in force."""
    if stored.pending is None:
        raise InvalidParameterError("the collection has no pending policy change to cancel")
    if now >= stored.pending.effective_at:
        raise InvalidParameterError(
            f"the policy change of {stored.pending.effective_at.isoformat()} is already in force; "
            "tighten the policy instead"
        )
    return replace(stored, pending=None)


def _without_purposes(fields: dict[str, Any]) -> CollectionPolicy:
    return replace(parse_policy({**fields, "purposes": [GENERAL_PURPOSE]}, api_names=False), purposes=())


def parse_policy(data: Any, *, api_names: bool = True) -> CollectionPolicy:
    """A policy from the API's shape (Purposes, Identification, MinFaceMatchThreshold, SearchesPerCallerPerMinute,
    SearchesPerMinute, MaxFalseMatchRisk) or the stored one (snake_case). Missing fields take the safe defaults."""
    if not isinstance(data, dict):
        raise InvalidParameterError("Policy must be an object")
    names = (
        (
            "Purposes",
            "Identification",
            "MinFaceMatchThreshold",
            "SearchesPerCallerPerMinute",
            "SearchesPerMinute",
            "MaxFalseMatchRisk",
        )
        if api_names
        else (
            "purposes",
            "identification",
            "min_match_threshold",
            "searches_per_caller_per_minute",
            "searches_per_minute",
            "max_false_match_risk",
        )
    )
    unknown = set(data) - set(names)
    if unknown:
        raise InvalidParameterError(f"Policy has unknown fields {sorted(unknown)}; it takes {list(names)}")
    purposes_field, identification_field, floor_field, caller_field, collection_field, risk_field = names
    purposes = data.get(purposes_field, [GENERAL_PURPOSE])
    if not isinstance(purposes, list) or not 1 <= len(purposes) <= 20:
        raise InvalidParameterError(f"{purposes_field} must list 1 to 20 purposes")
    for purpose in purposes:
        validate_purpose(purpose)
    identification = data.get(identification_field, False)
    if not isinstance(identification, bool):
        raise InvalidParameterError(f"{identification_field} must be true or false")
    floor = data.get(floor_field, DEFAULT_FLOOR)
    if isinstance(floor, bool) or not isinstance(floor, int | float) or not DEFAULT_FLOOR <= floor <= 100:
        raise InvalidParameterError(f"{floor_field} must be a number from {DEFAULT_FLOOR:g} to 100")
    return CollectionPolicy(
        purposes=tuple(dict.fromkeys(purposes)),
        identification=identification,
        min_match_threshold=float(floor),
        searches_per_caller_per_minute=_quota(data, caller_field, DEFAULT_SEARCHES_PER_CALLER),
        searches_per_minute=_quota(data, collection_field, DEFAULT_SEARCHES_PER_COLLECTION),
        max_false_match_risk=_risk(data.get(risk_field), risk_field),
    )


def _risk(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise InvalidParameterError(f"{name} must be a probability above 0 and at most 1 (0.01 is 1%)")
    return float(value)


def _quota(data: dict[str, Any], name: str, default: int) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_QUOTA:
        raise InvalidParameterError(f"{name} must be an integer from 1 to {MAX_QUOTA}")
    return value


def validate_purpose(purpose: Any) -> str:
    if not isinstance(purpose, str) or not PURPOSE_PATTERN.match(purpose):
        raise InvalidParameterError(
            f"purpose {purpose!r} must be 1-64 of a-z, 0-9, '_', '.', '-', starting with a letter or digit"
        )
    return purpose


def validate_reference(name: str, value: Any) -> str:
    if not isinstance(value, str) or not REFERENCE_PATTERN.match(value):
        raise InvalidParameterError(f"{name} must be 1-256 printable ASCII characters")
    return value


@dataclass(frozen=True)
class Caller:
    """Who asks, and what they state about the request (from the X-Candor-* headers)."""

    identity: str
    purpose: str = GENERAL_PURPOSE
    case_reference: str | None = None
    consent_reference: str | None = None
