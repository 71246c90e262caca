"""The audit log: every enrolment, search, refusal, deletion and erasure, appended to a hash chain.

There is one chain per collection (and one, ACCOUNT_CHAIN, for what concerns no collection). An entry's
body is canonical JSON; its hash is sha256(previous entry's hash + body). An altered entry no longer
matches its hash, a removed one breaks the sequence or the next entry's link, and `verify_chain` names
which. The functions may only append (template.yaml grants PutItem and Query, never Update or Delete),
and each append is also written to the function's log with its hash, so the newest head is anchored
outside the table too (a truncated tail shows as a head older than the logged one).

Nothing biometric is written: a probe is recorded as the sha256 of its bytes, a match as face id and
similarity, an erased person as a salted hash of their id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

GENESIS_HASH = "0" * 64
# The chain of events that concern no collection (CompareFaces). ':' is not allowed in a collection id.
ACCOUNT_CHAIN = ":account"
# An append that lost the race for a sequence number reads the new head and tries again, this many times.
MAX_APPEND_ATTEMPTS = 20


class AuditEvent(StrEnum):
    COLLECTION = "collection"  # created, deleted, policy changed
    ENROLMENT = "enrolment"
    SEARCH = "search"
    REFUSAL = "refusal"
    DELETION = "deletion"
    ERASURE = "erasure"


@dataclass(frozen=True)
class AuditRecord:
    """One stored entry: its place in the chain, its body (canonical JSON) and the hashes that chain it."""

    chain: str
    seq: int
    body: str
    prev_hash: str
    hash: str

    @property
    def fields(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class AuditStore(Protocol):
    """Append-only storage of the chains (DynamoDB on AWS: candor.adapters.aws.DynamoAuditStore)."""

    def head(self, chain: str) -> AuditRecord | None:
        """The newest entry of the chain, read consistently; None for an empty chain."""
        ...

    def put_new(self, record: AuditRecord) -> bool:
        """Stores the record unless its (chain, seq) is taken; False when it is (another writer won)."""
        ...

    def entries(self, chain: str) -> Iterable[AuditRecord]:
        """The chain's entries in sequence order."""
        ...

    def chains(self) -> list[str]:
        """Every chain's name (a full read: for verification and reports, not for the functions)."""
        ...


def canonical(fields: dict[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def log_anchor(log: Callable[..., None]) -> Callable[[AuditRecord], None]:
    """An `on_append` that writes each entry's place and hash to the function's log, outside the table."""

    def anchor(record: AuditRecord) -> None:
        log("audit entry appended", extra={"chain": record.chain, "seq": record.seq, "hash": record.hash})

    return anchor


class AuditLog:
    """Appends entries; `on_append` sees each stored record (the functions log its hash as an anchor)."""

    def __init__(
        self,
        store: AuditStore,
        clock: Callable[[], datetime] | None = None,
        on_append: Callable[[AuditRecord], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock or (lambda: datetime.now(UTC))
        self._on_append = on_append

    def append(self, chain: str, event: AuditEvent, **fields: Any) -> AuditRecord:
        """Appends one entry at the chain's head. `fields` must be JSON values; None values are left out."""
        content = {name: value for name, value in fields.items() if value is not None}
        time = self._clock().astimezone(UTC).isoformat(timespec="milliseconds")
        for _ in range(MAX_APPEND_ATTEMPTS):
            head = self._store.head(chain)
            seq = head.seq + 1 if head else 1
            prev_hash = head.hash if head else GENESIS_HASH
            body = canonical({**content, "chain": chain, "seq": seq, "time": time, "event": str(event)})
            record = AuditRecord(chain, seq, body, prev_hash, chain_hash(prev_hash, body))
            if self._store.put_new(record):
                if self._on_append is not None:
                    self._on_append(record)
                return record
        raise RuntimeError(f"audit chain {chain!r}: no free sequence number after {MAX_APPEND_ATTEMPTS} attempts")


@dataclass
class ChainVerification:
    chain: str
    entries: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


def verify_chain(chain: str, records: Iterable[AuditRecord]) -> ChainVerification:
    """Walks the chain from its first entry: every hash must match its body, every link its predecessor,
    and the sequence must run 1, 2, 3... without a gap."""
    result = ChainVerification(chain)
    expected_seq, prev_hash = 1, GENESIS_HASH
    for record in records:
        result.entries += 1
        if record.seq != expected_seq:
            missing = f"{expected_seq}" if record.seq == expected_seq + 1 else f"{expected_seq}-{record.seq - 1}"
            if record.seq > expected_seq:
                result.problems.append(f"entry {missing} removed: the sequence jumps to {record.seq}")
            else:
                result.problems.append(f"entry {record.seq} repeated or out of order")
        if chain_hash(record.prev_hash, record.body) != record.hash:
            result.problems.append(f"entry {record.seq} altered: its content no longer matches its hash")
        if record.prev_hash != prev_hash:
            result.problems.append(f"entry {record.seq} does not link to the entry before it")
        try:
            stated = record.fields
        except json.JSONDecodeError:
            result.problems.append(f"entry {record.seq} altered: its body is not JSON")
            stated = {}
        if stated and (stated.get("seq") != record.seq or stated.get("chain") != chain):
            result.problems.append(f"entry {record.seq} altered: it was moved from its place in the chain")
        expected_seq, prev_hash = record.seq + 1, record.hash
        result.head_seq, result.head_hash = record.seq, record.hash
    return result


def verify_all(store: AuditStore, chains: Sequence[str] | None = None) -> list[ChainVerification]:
    return [verify_chain(chain, store.entries(chain)) for chain in (chains or store.chains())]
