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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from candor.accountability.audit import AuditRecord, ChainVerification, verify_all, verify_chain
from candor.adapters.aws import DynamoAuditStore
from candor_local.cli.connection import physical_ids, stack_session
from candor_local.cli.report import build_report, entry_time, parse_when, readable_fields, render_html, summarize

AUDIT_TABLE = "AuditTable"  # the table's logical id in template.yaml
DEFAULT_REPORT_DAYS = 30

VERIFY_HELP = """\
Walks every chain from its first entry: each entry's hash must match its content, each entry must link to
the one before it, and the sequence must run without a gap. Prints one line per chain (entries, head seq
and the head hash's first 12 hex digits, then "intact" or each problem found) and exits 1 if any chain has
a problem, so a tampered log fails a script.

The chains can only show what is still in the table: entries cut from the end leave a shorter chain that
verifies. Every function logs the hash of each entry it appends (log line "audit entry appended", with its
chain and seq); compare a chain's head here with the newest such line to catch a truncated tail.
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
    results = verify_all(audit_store(args.stack_name), args.chain)
    for result in results:
        print(json.dumps(_verification_dict(result)) if args.json else format_verification(result))
    if not args.json:
        print(verification_summary(results))
    return 0 if all(result.intact for result in results) else 1


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


def format_verification(result: ChainVerification) -> str:
    if not result.entries:
        return f"{_plain(result.chain)}: no entries"
    head = f"{_plain(result.chain)}: {result.entries} entries, head {result.head_seq} {result.head_hash[:12]}"
    if result.intact:
        return f"{head}, intact"
    return "\n".join([f"{head}, {len(result.problems)} problem(s):", *(f"  {p}" for p in result.problems)])


def verification_summary(results: list[ChainVerification]) -> str:
    entries = sum(result.entries for result in results)
    if not results:
        return "no audit entries"
    broken = [result for result in results if not result.intact]
    if not broken:
        return f"{len(results)} chain(s), {entries} entries: all intact"
    problems = sum(len(result.problems) for result in broken)
    return (
        f"{len(results)} chain(s), {entries} entries: {problems} problem(s) in {len(broken)} chain(s); "
        "the audit log has been altered or damaged"
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


def _verification_dict(result: ChainVerification) -> dict[str, Any]:
    return {
        "chain": result.chain,
        "entries": result.entries,
        "head_seq": result.head_seq,
        "head_hash": result.head_hash,
        "intact": result.intact,
        "problems": result.problems,
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
