"""`candor audit verify|list` and `candor report`: check the audit log's hash chains, read its entries, and
write the accountability report for a period.

The audit table is the deployed stack's `AuditTable` (found like `candor dlq` finds its queues: the stack on
AWS_ENDPOINT_URL, or the one `candor up` runs, or AWS itself). Reading it needs only Query and Scan; nothing
here writes to it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from candor.accountability.audit import AuditRecord, ChainVerification, verify_chain
from candor.accountability.digests import DigestVerification, SignedDigest, verify_digests
from candor.adapters.aws import DynamoAuditStore, KmsDigestSigner, S3DigestStore
from candor_local.cli.connection import is_loopback, physical_ids, stack_session
from candor_local.cli.report import build_report, entry_time, parse_when, readable_fields, render_html, summarize

AUDIT_TABLE = "AuditTable"  # the table's logical id in template.yaml
DIGEST_BUCKET, DIGEST_KEY, DIGEST_FUNCTION = "AuditDigestBucket", "AuditDigestKey", "DigestFunction"
DEFAULT_REPORT_DAYS = 30

VERIFY_HELP = """\
Walks every chain from its first entry: each entry's hash must match its content, each entry must link to
the one before it, and the sequence must run without a gap. Prints one line per chain (entries, head seq
and the head hash's first 12 hex digits, then "intact" or each problem found) and exits 1 if any chain has
a problem, so a tampered log fails a script.

A chain alone cannot show what was cut from its end, re-hashed to its head, or deleted whole, so the chains
are also checked against the signed digests (DigestFunction, hourly and on `candor audit digest`): each
digest's signature must match the KMS key's public half, each must name the signature of the one before
it, no number may be missing, and every chain a digest signed must still hold that entry with that hash.
Entries newer than the newest digest are covered by their chain only until the next digest.
"""


def register(subparsers: Any) -> None:
    """Adds `audit` (verify, list) and `report` to the CLI's subcommands."""
    audit = subparsers.add_parser("audit", help="verify and read the tamper-evident audit log")
    actions = audit.add_subparsers(title="actions", required=True)

    verify = actions.add_parser(
        "verify",
        help="check every hash chain of the audit log; exit 1 if any entry was altered, removed or moved",
        description=VERIFY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _chain_option(verify)
    verify.add_argument("--json", action="store_true", help="one JSON object per chain")
    _stack_option(verify)
    verify.set_defaults(run=cmd_verify)

    digest = actions.add_parser(
        "digest",
        help="sign the heads of every chain now (DigestFunction runs this hourly on its own)",
        description="Runs DigestFunction once: it signs the head of every chain and the previous digest's "
        "signature with the stack's KMS key and stores the digest under S3 Object Lock. Exits 1 if a chain an "
        "earlier digest signed has no entries any more.",
    )
    digest.add_argument("--json", action="store_true", help="the digest's summary as one JSON object")
    _stack_option(digest)
    digest.set_defaults(run=cmd_digest)

    entries = actions.add_parser("list", help="the audit entries, one line each, oldest first")
    _chain_option(entries)
    entries.add_argument("--since", help="from this ISO date or time (UTC unless it says otherwise)")
    entries.add_argument("--until", help="up to this ISO date or time (a bare date: the whole of that day)")
    entries.add_argument("--json", action="store_true", help="one JSON object per entry, with its hashes")
    _stack_option(entries)
    entries.set_defaults(run=cmd_list)

    report = subparsers.add_parser(
        "report",
        help="write the accountability report (HTML and JSON) for a period: searches, refusals, erasures",
        description="Counts what the audit log records for a period (searches by purpose and caller, match "
        "rates, refusals by reason and caller, enrolments, deletions, erasures, per collection) and verifies "
        "the log's chains. Writes a self-contained HTML page and a JSON file beside it; nothing biometric is "
        "in either. Exits 1, after writing, if the log failed verification.",
    )
    report.add_argument("--since", help=f"first day (ISO date or time; default: {DEFAULT_REPORT_DAYS} days ago)")
    report.add_argument("--until", help="last day, taken in whole (ISO date or time; default: now)")
    report.add_argument(
        "--out", type=Path, help="the HTML file (default: candor-report-<since>-to-<until>.html); JSON beside it"
    )
    _stack_option(report)
    report.set_defaults(run=cmd_report)


def _chain_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chain", action="append", help="one chain: a collection id, or :account (repeat for more; default: all)"
    )


def _stack_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack-name", default=os.environ.get("CANDOR_STACK", "candor"))


# ------------------------------------------------------------------------------------------------ commands


def cmd_verify(args: argparse.Namespace) -> int:
    results, digests = verify_log(audit_store(args.stack_name), digest_source(args.stack_name), args.chain)
    for result in results:
        print(json.dumps(_verification_dict(result, digests)) if args.json else format_verification(result, digests))
    if args.json:
        print(json.dumps({"digests": _digests_dict(digests)}))
    else:
        print(format_digests(digests))
        print(verification_summary(results, digests))
    intact = all(result.intact for result in results) and (digests is None or digests.intact)
    return 0 if intact else 1


def cmd_digest(args: argparse.Namespace) -> int:
    """Runs DigestFunction once: locally in a process of its own, on AWS through Lambda."""
    session, endpoint = stack_session()
    if endpoint and is_loopback(endpoint):  # the local runtime plays the functions: run it as Lambda would
        from candor_local.emulator.runtime import LocalEnvironment

        environment = LocalEnvironment.attach(args.stack_name, endpoint)
        try:
            summary = environment.invoke(DIGEST_FUNCTION, {"source": "candor audit digest"})
        finally:
            environment.stop()
    else:
        resources = physical_ids(session.client("cloudformation", endpoint_url=endpoint), args.stack_name)
        if DIGEST_FUNCTION not in resources:
            raise ValueError(f"stack {args.stack_name!r} has no {DIGEST_FUNCTION}: deploy the current template.yaml")
        response = session.client("lambda", endpoint_url=endpoint).invoke(
            FunctionName=resources[DIGEST_FUNCTION], Payload=json.dumps({"source": "candor audit digest"}).encode()
        )
        summary = json.loads(response["Payload"].read())
        if response.get("FunctionError"):
            raise RuntimeError(f"{DIGEST_FUNCTION} failed: {summary}")
    if args.json:
        print(json.dumps(summary))
    else:
        missing = summary.get("missing_chains") or []
        print(f"digest {summary['number']} signed the heads of {summary['chains']} chain(s) at {summary['time']}")
        if missing:
            print(f"  chains signed before that have no entries now: {', '.join(map(_plain, missing))}")
    return 1 if summary.get("missing_chains") else 0


def verify_log(
    store: DynamoAuditStore, digests: tuple[S3DigestStore, KmsDigestSigner] | None, only: list[str] | None = None
) -> tuple[list[ChainVerification], DigestVerification | None]:
    """Every chain on its own, then (where the stack signs digests) every chain against the digests."""
    if digests is None:
        chains = {name: list(store.entries(name)) for name in sorted(only or store.chains())}
        return [verify_chain(name, records) for name, records in chains.items()], None
    digest_store, signer = digests
    stored = digest_store.stored()
    # A chain deleted whole is in no listing of the table, only in the digests that signed it.
    names = set(only) if only else set(store.chains()) | _signed_chains(stored)
    chains = {name: list(store.entries(name)) for name in sorted(names)}
    checked = verify_digests(stored, signature_check(signer.public_key()), chains)
    checked.problems += [
        f"{key}: deleted (a delete marker hides it; its locked version remains)" for key in digest_store.deleted()
    ]
    checked.chain_problems = {name: found for name, found in checked.chain_problems.items() if name in names}
    return [verify_chain(name, records) for name, records in chains.items()], checked


def _signed_chains(stored: list[tuple[str, bytes]]) -> set[str]:
    signed: set[str] = set()
    for _, raw in stored:
        try:
            signed |= set(SignedDigest.from_json(raw).heads)
        except (ValueError, KeyError, TypeError):
            continue  # verify_digests reports it
    return signed


def signature_check(public_key_der: bytes) -> Callable[[bytes, bytes], bool]:
    """Checks an ECDSA P-256 / SHA-256 signature (KMS's DER form) with the key's public half, without KMS."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    key = load_der_public_key(public_key_der)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the audit digest key is not an elliptic-curve key")

    def valid(message: bytes, signature: bytes) -> bool:
        try:
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    return valid


def cmd_list(args: argparse.Namespace) -> int:
    since = parse_when(args.since) if args.since else None
    until = parse_when(args.until, end_of_day=True) if args.until else None
    store = audit_store(args.stack_name)
    listed = []
    for chain in args.chain or store.chains():
        for record in store.entries(chain):
            fields = readable_fields(record) or {}
            when = entry_time(fields)
            if (since or until) and (when is None or (since and when < since) or (until and when >= until)):
                continue
            listed.append((when or datetime.min.replace(tzinfo=UTC), record, fields))
    listed.sort(key=lambda item: (item[0], item[1].chain, item[1].seq))
    for _, record, fields in listed:
        if args.json:
            print(json.dumps({**fields, "chain": record.chain, "seq": record.seq, "hash": record.hash}))
        else:
            print(format_entry(record, fields))
    if not listed and not args.json:
        print("no audit entries")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    until = parse_when(args.until, end_of_day=True) if args.until else datetime.now(UTC)
    since = parse_when(args.since) if args.since else until - timedelta(days=DEFAULT_REPORT_DAYS)
    if since >= until:
        raise ValueError(f"--since ({since.isoformat()}) must come before --until ({until.isoformat()})")
    out = args.out or Path(f"candor-report-{since:%Y-%m-%d}-to-{until:%Y-%m-%d}.html")
    json_out = out.with_suffix(".json")
    if json_out == out:
        raise ValueError("--out names the HTML file; the JSON is written beside it")

    store = audit_store(args.stack_name)
    # One read of every chain serves both the verification and the counts.
    chains = {chain: list(store.entries(chain)) for chain in store.chains()}
    verification = [verify_chain(chain, records) for chain, records in chains.items()]
    report = build_report(itertools.chain.from_iterable(chains.values()), since, until, verification)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(report), encoding="utf-8")
    json_out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(summarize(report))
    print(f"wrote {out}")
    print(f"wrote {json_out}")
    return 0 if report["log"]["intact"] else 1


# ---------------------------------------------------------------------------------------------- formatting


def _all_problems(result: ChainVerification, digests: DigestVerification | None) -> list[str]:
    return result.problems + (digests.chain_problems.get(result.chain, []) if digests else [])


def format_verification(result: ChainVerification, digests: DigestVerification | None = None) -> str:
    problems = _all_problems(result, digests)
    signed = digests.signed_heads.get(result.chain) if digests else None
    if not result.entries:
        head = f"{_plain(result.chain)}: no entries"
    else:
        head = f"{_plain(result.chain)}: {result.entries} entries, head {result.head_seq} {result.head_hash[:12]}"
        if signed is not None:
            head += f", signed up to {signed.seq}"
    if not problems:
        return head if not result.entries else f"{head}, intact"
    return "\n".join([f"{head}, {len(problems)} problem(s):", *(f"  {_plain(p)}" for p in problems)])


def format_digests(digests: DigestVerification | None) -> str:
    if digests is None:
        return "signed digests: this stack has none (deploy the current template.yaml)"
    if not digests.digests and not digests.problems:
        return "signed digests: none yet (the first comes within the hour, or run `candor audit digest`)"
    lines = [f"signed digests: {digests.digests}, newest {digests.newest} at {digests.newest_time}"]
    lines[0] += ", signatures valid, none missing" if not digests.problems else f", {len(digests.problems)} problem(s):"
    lines += [f"  {_plain(problem)}" for problem in digests.problems]
    return "\n".join(lines)


def verification_summary(results: list[ChainVerification], digests: DigestVerification | None = None) -> str:
    entries = sum(result.entries for result in results)
    if not results and not (digests and digests.problems):
        return "no audit entries"
    broken = [result for result in results if _all_problems(result, digests)]
    problems = sum(len(_all_problems(result, digests)) for result in broken)
    problems += len(digests.problems) if digests else 0
    if not problems:
        return f"{len(results)} chain(s), {entries} entries: all intact"
    return (
        f"{len(results)} chain(s), {entries} entries: {problems} problem(s) in {len(broken)} chain(s) and the "
        "digests; the audit log has been altered or damaged"
    )


def format_entry(record: AuditRecord, fields: dict[str, Any]) -> str:
    """time, chain, seq, event, operation, caller, purpose, outcome (or the refusal's reason), matches."""
    if not fields:
        return f"{'?':<29}  {_plain(record.chain)} #{record.seq}  (unreadable: not a JSON object)"
    outcome = str(fields.get("outcome") or "-")
    if fields.get("reason"):
        outcome = f"{outcome} {fields['reason']}"
    matches = fields.get("matches")
    matched = sum(len(face) for face in matches if isinstance(face, list)) if isinstance(matches, list) else None
    columns = [
        f"{fields.get('time', '?')!s:<29}",
        f"{record.chain} #{record.seq}",
        fields.get("event") or "-",
        fields.get("operation") or "-",
        f"caller={fields.get('caller') or '-'}",
        f"purpose={fields.get('purpose') or '-'}",
        outcome,
    ]
    if matched is not None:
        columns.append(f"matches={matched}")
    return _plain("  ".join(str(column) for column in columns))


def _verification_dict(result: ChainVerification, digests: DigestVerification | None = None) -> dict[str, Any]:
    return {
        "chain": result.chain,
        "entries": result.entries,
        "head_seq": result.head_seq,
        "head_hash": result.head_hash,
        "intact": not _all_problems(result, digests),
        "problems": _all_problems(result, digests),
        "signed_seq": signed.seq if (signed := digests.signed_heads.get(result.chain) if digests else None) else None,
    }


def _digests_dict(digests: DigestVerification | None) -> dict[str, Any] | None:
    if digests is None:
        return None
    return {
        "count": digests.digests,
        "newest": digests.newest or None,
        "newest_time": digests.newest_time or None,
        "intact": not digests.problems,
        "problems": digests.problems,
    }


def _plain(text: str) -> str:
    """Control characters from the log are not sent to the terminal (a caller name could carry escapes)."""
    return "".join(c if c.isprintable() else "?" for c in text)


# ---------------------------------------------------------------------------------------------- connection


def audit_store(stack_name: str) -> DynamoAuditStore:
    """The stack's audit table: on AWS_ENDPOINT_URL, or the stack `candor up` runs, or AWS itself."""
    session, endpoint = stack_session()
    resources = physical_ids(session.client("cloudformation", endpoint_url=endpoint), stack_name)
    if AUDIT_TABLE not in resources:
        raise ValueError(f"stack {stack_name!r} has no {AUDIT_TABLE}: deploy the current template.yaml first")
    return DynamoAuditStore(resources[AUDIT_TABLE], session.resource("dynamodb", endpoint_url=endpoint))


def digest_source(stack_name: str) -> tuple[S3DigestStore, KmsDigestSigner] | None:
    """The stack's digest bucket and signing key (read only: listing, reading, the public key); None for a
    stack deployed from a template without them."""
    session, endpoint = stack_session()
    resources = physical_ids(session.client("cloudformation", endpoint_url=endpoint), stack_name)
    if DIGEST_BUCKET not in resources or DIGEST_KEY not in resources:
        return None
    return (
        S3DigestStore(resources[DIGEST_BUCKET], session.client("s3", endpoint_url=endpoint)),
        KmsDigestSigner(resources[DIGEST_KEY], session.client("kms", endpoint_url=endpoint)),
    )
