"""The rules every enrolment and search passes, and the audit entry each one leaves.

A search is allowed only for a purpose its collection declares (with a case reference unless the purpose
is `general`), at a threshold no lower than the collection's floor, at a threshold whose risk of matching a
stranger among the collection's faces is within its MaxFalseMatchRisk, and within its quotas; a refusal is
audited before it is returned. An allowed search is audited with what it returned before the caller sees
it: if the audit log cannot be written, the search fails.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from candor.accountability.audit import AuditEvent, AuditLog, sha256_hex
from candor.accountability.policy import GENERAL_PURPOSE, Caller, CollectionPolicy
from candor.core.errors import (
    CandorError,
    ConsentRequiredError,
    FalseMatchRiskTooHighError,
    PurposeNotDeclaredError,
    QuotaExceededError,
    ThresholdBelowFloorError,
)
from candor.core.similarity import fmr_of_similarity, lowest_threshold_for_risk, risk_of_false_match

QUOTA_WINDOW_S = 60


class QuotaCounter(Protocol):
    def consume(self, key: str, limit: int, expires_at: int, amount: int = 1) -> bool:
        """Counts `amount` uses of `key`; False (and nothing counted) when that would pass `limit`."""
        ...

    def release(self, key: str, amount: int) -> None:
        """Gives back `amount` uses counted before and not used."""
        ...


@dataclass
class QuotaReservation:
    """Identifications counted against the quotas before a search: the most it can name. What the search
    did not name is given back when it is recorded."""

    keys: tuple[str, ...] = ()
    reserved: int = 0


@dataclass(frozen=True)
class SearchAuthorization:
    """An allowed search: its threshold, the false-match rate that threshold stands for, the chance that
    one searched face matches a stranger among the collection's `faces` faces, and its quota reservation."""

    threshold: float
    faces: int
    false_match_rate: float
    false_match_risk: float
    reservation: QuotaReservation = field(default_factory=QuotaReservation)
    collection_id: str = ""
    policy: CollectionPolicy | None = None


@dataclass(frozen=True)
class Returned:
    """What the audit log keeps of a match: which stored face (or user), how similar. Never a vector."""

    id: str
    similarity: float


def subject_hash(collection_id: str, person: str) -> str:
    """Names the enrolled or erased person in the audit log without writing their name."""
    return sha256_hex(f"{collection_id}/{person}".encode())


class Accountability:
    def __init__(
        self, audit: AuditLog, quotas: QuotaCounter | None = None, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.audit = audit
        self._quotas = quotas
        self._clock = clock or (lambda: datetime.now(UTC))

    # --- searches ---------------------------------------------------------------------------------------

    def authorize_search(
        self,
        collection_id: str,
        policy: CollectionPolicy,
        caller: Caller,
        operation: str,
        threshold: float | None,
        probe: bytes | None = None,
        faces: int = 0,
        identifications: int = 1,
    ) -> SearchAuthorization:
        """The threshold the search runs at (the floor when none was given) and its false-match risk against
        the collection's `faces` faces, with `identifications` (the most people the search can name)
        counted against the quotas; refusals are audited, then raised. A search that learns how many it
        can name only later (every face of a photo) passes 0 here and calls `reserve` when it knows."""
        stored, policy = policy, policy.in_force(self._clock())
        try:
            if not policy.purposes and stored.pending is not None:
                raise PurposeNotDeclaredError(
                    f"collection {collection_id!r} may be searched for no purpose until its policy change "
                    f"takes effect at {stored.pending.effective_at.isoformat()}"
                )
            if caller.purpose not in policy.purposes:
                raise PurposeNotDeclaredError(
                    f"collection {collection_id!r} may be searched for {', '.join(policy.purposes)} only, "
                    f"not for {caller.purpose!r} (state the purpose in the X-Candor-Purpose header)"
                )
            if caller.purpose != GENERAL_PURPOSE and not caller.case_reference:
                raise PurposeNotDeclaredError(
                    f"a search for {caller.purpose!r} needs a case reference in the X-Candor-Case header"
                )
            effective = policy.floor if threshold is None else threshold
            if effective < policy.floor:
                use = "identification" if policy.identification else "search"
                raise ThresholdBelowFloorError(
                    f"collection {collection_id!r} is used for {use}: a match threshold below "
                    f"{policy.floor:g} is refused (asked for {effective:g})"
                )
            rate = fmr_of_similarity(effective)
            risk = risk_of_false_match(rate, faces)
            limit = policy.max_risk
            if limit is not None and risk > limit:
                lowest = max(policy.floor, lowest_threshold_for_risk(limit, faces))
                raise FalseMatchRiskTooHighError(
                    f"at threshold {effective:g}, a search of {collection_id!r} ({faces:,} faces) matches a stranger "
                    f"with probability {risk:.2%}; its MaxFalseMatchRisk is {limit:.2%}. The lowest threshold "
                    f"that passes is {lowest:.2f}"
                )
            reservation = self._reserve(collection_id, policy, caller, identifications, QuotaReservation())
        except CandorError as error:
            self.refuse(collection_id, caller, operation, error, probe=probe, threshold=threshold, faces=faces)
            raise
        return SearchAuthorization(effective, faces, rate, risk, reservation, collection_id, policy)

    def reserve(
        self, authorization: SearchAuthorization, caller: Caller, operation: str, count: int, probe: bytes | None
    ) -> None:
        """Counts `count` more identifications for an allowed search before it matches (refused, audited,
        when that passes a quota: the search then returns nothing rather than part of its answer)."""
        if authorization.policy is None:
            raise RuntimeError("reserve() takes an authorization from authorize_search()")
        try:
            self._reserve(authorization.collection_id, authorization.policy, caller, count, authorization.reservation)
        except CandorError as error:
            self.refuse(
                authorization.collection_id,
                caller,
                operation,
                error,
                probe=probe,
                threshold=authorization.threshold,
                faces=authorization.faces,
            )
            raise

    def record_search(
        self,
        collection_id: str,
        caller: Caller,
        operation: str,
        *,
        threshold: float,
        matches: Sequence[Sequence[Returned]],
        probe: bytes | None = None,
        searched: str | None = None,
        error: CandorError | None = None,
        authorization: SearchAuthorization | None = None,
    ) -> None:
        """One entry per search: `matches` holds, per searched face, what was returned; a search that
        failed after it was allowed (no face in the photo) is recorded with its reason. The false-match
        risk is recorded per searched face and for all the faces the search compared."""
        risk: dict[str, Any] = {}
        if authorization is not None:
            self._settle(authorization.reservation, identified=sum(1 for face in matches if face))
            risk = {
                "collection_faces": authorization.faces,
                "false_match_rate": authorization.false_match_rate,
                "false_match_risk": authorization.false_match_risk,
                "false_match_risk_all_faces": risk_of_false_match(
                    authorization.false_match_rate, authorization.faces * max(1, len(matches))
                ),
            }
        self.audit.append(
            collection_id,
            AuditEvent.SEARCH,
            operation=operation,
            outcome="failed" if error else "allowed",
            **_caller_fields(caller),
            threshold=threshold,
            probe_sha256=sha256_hex(probe) if probe is not None else None,
            searched=searched,
            faces_searched=len(matches),
            faces_matched=sum(1 for face in matches if face),
            matches=[[{"id": m.id, "similarity": m.similarity} for m in face] for face in matches],
            reason=error.code if error else None,
            **risk,
        )

    def _reserve(
        self, collection_id: str, policy: CollectionPolicy, caller: Caller, count: int, reservation: QuotaReservation
    ) -> QuotaReservation:
        """Counts `count` identifications against the caller's and the collection's quota of this minute."""
        if self._quotas is None:
            raise RuntimeError("searches are authorized only where quotas are counted (the face API)")
        if count <= 0:
            return reservation
        now = int(self._clock().timestamp())
        window = now - now % QUOTA_WINDOW_S
        expires_at = window + 2 * QUOTA_WINDOW_S
        caller_key, collection_key = (
            f"{collection_id}|caller|{caller.identity}|{window}",
            f"{collection_id}|all|{window}",
        )
        if not self._quotas.consume(caller_key, policy.searches_per_caller_per_minute, expires_at, count):
            raise QuotaExceededError(
                f"this search could name {count} {'person' if count == 1 else 'people'}, which would pass your "
                f"{policy.searches_per_caller_per_minute} identifications of {collection_id!r} a minute; "
                "try again in the next minute"
            )
        if not self._quotas.consume(collection_key, policy.searches_per_minute, expires_at, count):
            self._quotas.release(caller_key, count)
            raise QuotaExceededError(
                f"this search could name {count} {'person' if count == 1 else 'people'}, which would pass the "
                f"{policy.searches_per_minute} identifications a minute {collection_id!r} allows; "
                "try again in the next minute"
            )
        reservation.keys, reservation.reserved = (caller_key, collection_key), reservation.reserved + count
        return reservation

    def _settle(self, reservation: QuotaReservation, identified: int) -> None:
        """Gives back what a recorded search reserved and did not name (once)."""
        unused = reservation.reserved - identified
        if self._quotas is not None and unused > 0:
            for key in reservation.keys:
                self._quotas.release(key, unused)
        reservation.reserved = min(reservation.reserved, identified)

    # --- enrolment, deletion, erasure, refusals ----------------------------------------------------------

    def require_consent(self, collection_id: str, caller: Caller, operation: str) -> str:
        if not caller.consent_reference:
            error = ConsentRequiredError(
                f"{operation} into {collection_id!r} needs the enrolled person's consent reference: "
                "send it in the X-Candor-Consent header"
            )
            self.refuse(collection_id, caller, operation, error)
            raise error
        return caller.consent_reference

    def record_enrolment(
        self,
        collection_id: str,
        caller: Caller,
        operation: str,
        *,
        face_ids: Sequence[str],
        person: str | None,
        consent_reference: str,
    ) -> None:
        self._allowed(
            collection_id,
            AuditEvent.ENROLMENT,
            caller,
            operation,
            consent_reference=consent_reference,
            subject=subject_hash(collection_id, person) if person else None,
            face_ids=list(face_ids),
        )

    def record_deletion(self, collection_id: str, caller: Caller, operation: str, **details: Any) -> None:
        self._allowed(collection_id, AuditEvent.DELETION, caller, operation, **details)

    def record_collection(
        self, collection_id: str, caller: Caller, operation: str, policy: CollectionPolicy, loosens: Sequence[str] = ()
    ) -> None:
        """A policy set or changed (`policy` as stored: with its pending loosening, if any, and when that takes
        effect), with what it loosens."""
        self._allowed(
            collection_id,
            AuditEvent.COLLECTION,
            caller,
            operation,
            policy=policy.to_dict(),
            loosens=list(loosens) or None,
        )

    def record_reindex(self, collection_id: str, caller: Caller, operation: str, **details: Any) -> None:
        self._allowed(collection_id, AuditEvent.COLLECTION, caller, operation, **details)

    def record_erasure(self, collection_id: str, caller: Caller, operation: str, person: str, **details: Any) -> None:
        subject = subject_hash(collection_id, person)
        self._allowed(collection_id, AuditEvent.ERASURE, caller, operation, subject=subject, **details)

    def _allowed(self, chain: str, event: AuditEvent, caller: Caller, operation: str, **fields: Any) -> None:
        self.audit.append(chain, event, operation=operation, outcome="allowed", caller=caller.identity, **fields)

    def refuse(
        self,
        chain: str,
        caller: Caller,
        operation: str,
        error: CandorError,
        *,
        probe: bytes | None = None,
        threshold: float | None = None,
        faces: int | None = None,
    ) -> None:
        self.audit.append(
            chain,
            AuditEvent.REFUSAL,
            operation=operation,
            outcome="refused",
            **_caller_fields(caller),
            threshold=threshold,
            **({"collection_faces": faces} if faces is not None else {}),
            probe_sha256=sha256_hex(probe) if probe is not None else None,
            reason=error.code,
            message=error.message,
        )


def _caller_fields(caller: Caller) -> dict[str, Any]:
    return {"caller": caller.identity, "purpose": caller.purpose, "case_reference": caller.case_reference}
