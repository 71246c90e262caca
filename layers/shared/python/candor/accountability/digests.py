"""Signed digests of the audit chains: what the chains held at a moment, signed, kept where no one can edit it.

A hash chain alone shows an edited or removed entry in the middle, but whoever can write the audit table can
also re-hash a chain up to its head, cut its newest entries, or delete a chain: the chain then verifies. A
digest closes that gap the way CloudTrail's digest files do. Every so often (and on demand) the digest
function writes one: the head (seq, hash) of every chain, the signature of the digest before it, signed
with an asymmetric KMS key whose private half never leaves KMS. Digests go to a bucket under S3 Object Lock
in compliance mode, so not even the account's root can change or delete one before its retention ends.

`verify_digests` checks the digests among themselves (each signature against the public key, each links to
the one before it, no number missing) and the chains against them: every chain a digest names must still
hold, at the digest's seq, the entry with the digest's hash. A re-hashed chain, a truncated one and a
deleted one all fail that, and say where.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from candor.accountability.audit import ACCOUNT_CHAIN, AuditRecord, AuditStore

DIGEST_FORMAT = "candor-audit-digest/1"
SIGNING_ALGORITHM = "ECDSA_SHA_256"


@dataclass(frozen=True)
class ChainHead:
    chain: str
    seq: int
    hash: str


@dataclass(frozen=True)
class SignedDigest:
    """A digest as stored: the exact bytes signed (canonical JSON) and the signature over them."""

    body: str
    signature: bytes

    @property
    def fields(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def number(self) -> int:
        return int(self.fields["number"])

    @property
    def heads(self) -> dict[str, ChainHead]:
        return {
            item["chain"]: ChainHead(item["chain"], int(item["seq"]), item["hash"]) for item in self.fields["chains"]
        }

    def to_json(self) -> bytes:
        document = {"digest": self.body, "signature": _b64(self.signature)}
        return json.dumps(document, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SignedDigest:
        document = json.loads(data)
        return cls(str(document["digest"]), base64.b64decode(document["signature"]))


class DigestSigner(Protocol):
    """Signs with a key whose private half it never reveals (KMS: candor.adapters.aws.KmsDigestSigner)."""

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


class DigestStore(Protocol):
    """Write-once storage of the digests (S3 with Object Lock: candor.adapters.aws.S3DigestStore)."""

    def latest(self) -> SignedDigest | None:
        """The digest with the highest number, or None before the first."""
        ...

    def put_new(self, digest: SignedDigest) -> bool:
        """Stores the digest unless its number is taken; False when it is (another writer won)."""
        ...


class DigestRaceError(RuntimeError):
    """Another digest took this digest's number first; the next run digests again."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def canonical(fields: Mapping[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def write_digest(
    audit: AuditStore,
    digests: DigestStore,
    signer: DigestSigner,
    chains: Iterable[str],
    clock: Callable[[], datetime] | None = None,
) -> SignedDigest:
    """Signs and stores the next digest: the heads of `chains` (the collections that exist), of
    ACCOUNT_CHAIN, and of every chain the previous digest named. A chain the previous digest named that
    has no entries now keeps its previous head here and is listed under `missing_chains`: signing the
    deletion over would hide it."""
    previous = digests.latest()
    carried = previous.heads if previous else {}
    heads: dict[str, ChainHead] = {}
    missing = []
    for chain in sorted({*chains, ACCOUNT_CHAIN, *carried}):
        head = audit.head(chain)
        if head is not None:
            heads[chain] = ChainHead(chain, head.seq, head.hash)
        elif chain in carried:
            heads[chain] = carried[chain]
            missing.append(chain)
    now = (clock or (lambda: datetime.now(UTC)))().astimezone(UTC)
    body = canonical(
        {
            "format": DIGEST_FORMAT,
            "number": previous.number + 1 if previous else 1,
            "time": now.isoformat(timespec="milliseconds"),
            "chains": [{"chain": h.chain, "seq": h.seq, "hash": h.hash} for h in heads.values()],
            "missing_chains": missing,
            "previous_signature": _b64(previous.signature) if previous else None,
            "key_id": signer.key_id,
            "algorithm": SIGNING_ALGORITHM,
        }
    )
    digest = SignedDigest(body, signer.sign(body.encode()))
    if not digests.put_new(digest):
        raise DigestRaceError(f"digest {digest.number} was written by another run first")
    return digest


@dataclass
class DigestVerification:
    """What the digests say about the audit log: each problem names the digest or chain, and where."""

    digests: int = 0
    newest: int = 0
    newest_time: str = ""
    signed_heads: dict[str, ChainHead] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    chain_problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def intact(self) -> bool:
        return not self.problems and not any(self.chain_problems.values())


def verify_digests(
    stored: Sequence[tuple[str, bytes]],
    signature_valid: Callable[[bytes, bytes], bool],
    chains: Mapping[str, Sequence[AuditRecord]],
) -> DigestVerification:
    """`stored`: (where, raw object) for every digest object kept, in any order; `signature_valid(message,
    signature)` checks against the public key; `chains`: every chain's entries as the table holds them."""
    result = DigestVerification()
    parsed: dict[int, tuple[str, SignedDigest]] = {}
    for where, raw in stored:
        try:
            digest = SignedDigest.from_json(raw)
            number = digest.number
        except (ValueError, KeyError, TypeError) as error:
            result.problems.append(f"{where}: not a digest ({error})")
            continue
        if not signature_valid(digest.body.encode(), digest.signature):
            result.problems.append(f"digest {number} ({where}): the signature does not match the public key")
            continue
        if number in parsed:
            result.problems.append(f"digest {number} is stored twice ({parsed[number][0]} and {where})")
            continue
        parsed[number] = (where, digest)
    result.digests = len(parsed)
    if not parsed:
        return result

    numbers = sorted(parsed)
    if numbers[0] != 1:
        gap = "digest 1" if numbers[0] == 2 else f"digests 1-{numbers[0] - 1}"
        result.problems.append(f"{gap} missing: the first kept is {numbers[0]}")
    for before, after in itertools.pairwise(numbers):
        if after != before + 1:
            gap = f"{before + 1}" if after == before + 2 else f"{before + 1}-{after - 1}"
            result.problems.append(f"digest {gap} missing: digest {before} is followed by {after}")
        elif parsed[after][1].fields.get("previous_signature") != _b64(parsed[before][1].signature):
            result.problems.append(f"digest {after} does not link to digest {before}: its previous signature differs")

    for number in numbers:
        digest = parsed[number][1]
        for head in digest.heads.values():
            problem = _check_head(head, number, chains.get(head.chain, ()))
            if problem:
                found = result.chain_problems.setdefault(head.chain, [])
                if problem not in found:
                    found.append(problem)
    newest = parsed[numbers[-1]][1]
    result.newest, result.newest_time = newest.number, str(newest.fields.get("time", ""))
    result.signed_heads = newest.heads
    return result


def _check_head(head: ChainHead, number: int, records: Sequence[AuditRecord]) -> str | None:
    """Whether the chain still holds what digest `number` signed for it."""
    if not records:
        return f"chain deleted: digest {number} signed {head.seq} entries up to hash {head.hash[:12]}"
    last = records[-1].seq
    if last < head.seq:
        cut = f"entry {head.seq}" if last + 1 == head.seq else f"entries {last + 1}-{head.seq}"
        return f"{cut} cut from the end: digest {number} signed up to {head.seq}, the chain ends at {last}"
    at = next((record for record in records if record.seq == head.seq), None)
    if at is None:
        return f"entry {head.seq}, which digest {number} signed as the head, is gone"
    if at.hash != head.hash:
        return f"chain rewritten: entry {head.seq} is not the one digest {number} signed (hash {head.hash[:12]})"
    return None
