"""The rules every enrolment and search passes, and the audit entry each one leaves.

A search is allowed only for a purpose its collection declares (with a case reference unless the purpose
is `general`), at a threshold no lower than the collection's floor, at a threshold whose risk of matching a
stranger among the collection's faces is within its MaxFalseMatchRisk, and within its quotas; a refusal is
audited before it is returned. An allowed search is audited with what it returned before the caller sees
it: if the audit log cannot be written, the search fails.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    def consume(self, key: str, limit: int, expires_at: int) -> bool:
        """Counts one use of `key`; False (and nothing counted) when `limit` uses were already counted."""
        ...


@dataclass(frozen=True)
class SearchAuthorization:
    """An allowed search: its threshold, the false-match rate that threshold stands for, and the chance
    that one searched face matches a stranger among the collection's `faces` faces."""

    threshold: float
    faces: int
    false_match_rate: float
    false_match_risk: float


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
    ) -> SearchAuthorization:
        """The threshold the search runs at (the floor when none was given) and its false-match risk against
        the collection's `faces` faces; refusals are audited, then raised."""
        try:
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
            self._consume_quotas(collection_id, policy, caller)
        except CandorError as error:
            self.refuse(collection_id, caller, operation, error, probe=probe, threshold=threshold, faces=faces)
            raise
        return SearchAuthorization(effective, faces, rate, risk)

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

    def _consume_quotas(self, collection_id: str, policy: CollectionPolicy, caller: Caller) -> None:
        if self._quotas is None:
            raise RuntimeError("searches are authorized only where quotas are counted (the face API)")
        now = int(self._clock().timestamp())
        window = now - now % QUOTA_WINDOW_S
        expires_at = window + 2 * QUOTA_WINDOW_S
        if not self._quotas.consume(
            f"{collection_id}|caller|{caller.identity}|{window}", policy.searches_per_caller_per_minute, expires_at
        ):
            raise QuotaExceededError(
                f"you have made {policy.searches_per_caller_per_minute} searches of {collection_id!r} this minute, "
                "its limit per caller; try again in the next minute"
            )
        if not self._quotas.consume(f"{collection_id}|all|{window}", policy.searches_per_minute, expires_at):
            raise QuotaExceededError(
                f"collection {collection_id!r} has been searched {policy.searches_per_minute} times this minute, "
                "its limit; try again in the next minute"
            )

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

    def record_collection(self, collection_id: str, caller: Caller, operation: str, policy: CollectionPolicy) -> None:
        self._allowed(collection_id, AuditEvent.COLLECTION, caller, operation, policy=policy.to_dict())

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
