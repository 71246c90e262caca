"""The audit log's hash chains (in memory and in DynamoDB under moto), the accountability report built from
them, and `candor audit verify|list` and `candor report` run against a stack's audit table."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from candor.accountability.audit import (
    GENESIS_HASH,
    AuditEvent,
    AuditLog,
    AuditRecord,
    chain_hash,
    verify_all,
    verify_chain,
)
from candor.adapters.aws import DynamoAuditStore
from candor.adapters.memory import MemoryAuditStore
from candor_local.cli import connection
from candor_local.cli import main as cli
from candor_local.cli.report import build_report, render_html
from candor_local.emulator.template import load_yaml

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
FACE_ID = "4f8c2a6e-0d1b-4c55-9e0e-7d3b2f1a9c01"
OTHER_FACE_ID = "b7a1e3d2-5c4f-4a86-8b9d-0e2f1c3a4b5d"
PROBE_SHA = "9b74c9897bac770ffc029102a200c5de" * 2
SUBJECT = "c3ab8ff13720e8ad9047dd39466b3c89" * 2
CONSENT = "consent-form-2026-0042"
CASE = "CASE-7781"
SCRIPT_CALLER = "<script>alert('x')</script>"

ROOT = Path(__file__).resolve().parents[1]


def ticking_clock(start: datetime = START, step: timedelta = timedelta(minutes=1)) -> Callable[[], datetime]:
    """A fixed clock that moves on by `step` at every reading, so entries have distinct, known times."""
    ticks = itertools.count()
    return lambda: start + step * next(ticks)


def _appended(log: AuditLog, chain: str, count: int) -> list[AuditRecord]:
    return [
        log.append(chain, AuditEvent.SEARCH, operation="SearchFacesByImage", caller="alice", faces_matched=n % 2)
        for n in range(count)
    ]


def _altered(record: AuditRecord, **changes: Any) -> AuditRecord:
    return replace(record, body=json.dumps({**record.fields, **changes}, sort_keys=True, separators=(",", ":")))


# --- the chain ---------------------------------------------------------------------------------------------


def test_appended_entries_form_an_intact_chain() -> None:
    store, anchors = MemoryAuditStore(), list[AuditRecord]()
    log = AuditLog(store, clock=ticking_clock(), on_append=anchors.append)
    appended = _appended(log, "staff", 5)

    (result,) = verify_all(store)
    assert result.chain == "staff"
    assert result.intact and result.problems == []
    assert (result.entries, result.head_seq, result.head_hash) == (5, 5, appended[-1].hash)
    assert [r.seq for r in appended] == [1, 2, 3, 4, 5]
    assert appended[0].prev_hash == GENESIS_HASH
    assert all(later.prev_hash == earlier.hash for earlier, later in itertools.pairwise(appended))
    assert appended[1].fields["time"] == "2026-11-02T09:01:00.000+00:00"
    assert anchors == appended  # what the functions log as the anchor of each append


def test_an_altered_entry_is_named() -> None:
    store = MemoryAuditStore()
    _appended(AuditLog(store, clock=ticking_clock()), "staff", 4)
    store.records["staff"][2] = _altered(store.records["staff"][2], caller="mallory")  # the old hash kept

    result = verify_chain("staff", store.entries("staff"))
    assert not result.intact
    assert result.problems == ["entry 2 altered: its content no longer matches its hash"]


def test_a_removed_entry_is_named() -> None:
    store = MemoryAuditStore()
    _appended(AuditLog(store, clock=ticking_clock()), "staff", 4)
    del store.records["staff"][2]

    result = verify_chain("staff", store.entries("staff"))
    assert not result.intact
    assert "entry 2 removed: the sequence jumps to 3" in result.problems
    assert "entry 3 does not link to the entry before it" in result.problems


def test_an_altered_entry_with_a_recomputed_hash_breaks_the_next_link() -> None:
    store = MemoryAuditStore()
    _appended(AuditLog(store, clock=ticking_clock()), "staff", 4)
    forged = _altered(store.records["staff"][2], faces_matched=0)
    store.records["staff"][2] = replace(forged, hash=chain_hash(forged.prev_hash, forged.body))

    result = verify_chain("staff", store.entries("staff"))
    assert result.problems == ["entry 3 does not link to the entry before it"]


def test_a_truncated_tail_verifies_but_no_longer_matches_the_logged_head() -> None:
    store, anchors = MemoryAuditStore(), list[AuditRecord]()
    _appended(AuditLog(store, clock=ticking_clock(), on_append=anchors.append), "staff", 4)
    del store.records["staff"][4]

    result = verify_chain("staff", store.entries("staff"))
    assert result.intact  # the table alone cannot show it...
    assert (result.head_seq, result.head_hash) != (anchors[-1].seq, anchors[-1].hash)  # ...the logged head does


def test_concurrent_appenders_leave_a_gapless_chain() -> None:
    store = MemoryAuditStore()
    log = AuditLog(store, clock=ticking_clock(step=timedelta(milliseconds=1)))
    appended: list[AuditRecord] = []
    start = threading.Barrier(8)

    def appender(name: str) -> None:
        start.wait()
        for n in range(25):
            appended.append(log.append("staff", AuditEvent.SEARCH, caller=name, n=n))

    threads = [threading.Thread(target=appender, args=(f"caller-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    result = verify_chain("staff", store.entries("staff"))
    assert result.intact, result.problems
    assert result.entries == len(appended) == 200
    assert sorted(record.seq for record in appended) == list(range(1, 201))


# --- DynamoDB -----------------------------------------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setattr(connection, "STATE_FILE", tmp_path / "no-stack-running.json")  # AWS (moto), not `candor up`
    with mock_aws():
        yield


@pytest.fixture
def audit_table(aws: None) -> str:
    """A stack "candor" holding only the audit table, as template.yaml describes it; returns its physical name."""
    table = load_yaml(ROOT / "template.yaml")["Resources"]["AuditTable"]
    template = {"Resources": {"AuditTable": {"Type": table["Type"], "Properties": table["Properties"]}}}
    cloudformation = boto3.client("cloudformation")
    cloudformation.create_stack(StackName="candor", TemplateBody=json.dumps(template))
    (resource,) = cloudformation.describe_stack_resources(StackName="candor")["StackResources"]
    return str(resource["PhysicalResourceId"])


def test_dynamo_store_round_trips_and_catches_an_overwritten_item(audit_table: str) -> None:
    store = DynamoAuditStore(audit_table)
    log = AuditLog(store, clock=ticking_clock())
    appended = _appended(log, "staff", 3) + _appended(log, ":account", 2)

    assert store.chains() == [":account", "staff"]
    assert list(store.entries("staff")) == appended[:3]
    assert store.head(":account") == appended[-1]
    assert not store.put_new(appended[0])  # a taken (chain, seq) is never overwritten by an append
    assert all(result.intact for result in verify_all(store))

    forged = _altered(appended[1], caller="mallory")
    boto3.resource("dynamodb").Table(audit_table).put_item(
        Item={"chain": "staff", "seq": 2, "body": forged.body, "prev_hash": forged.prev_hash, "hash": forged.hash}
    )
    by_chain = {result.chain: result for result in verify_all(store)}
    assert by_chain[":account"].intact
    assert by_chain["staff"].problems == ["entry 2 altered: its content no longer matches its hash"]


# --- the report ---------------------------------------------------------------------------------------------


def _hand_made_log() -> MemoryAuditStore:
    store = MemoryAuditStore()
    log = AuditLog(store, clock=ticking_clock())
    investigator = {"caller": "alice", "purpose": "investigation", "case_reference": CASE}

    def search(chain: str, matched: bool, **caller: Any) -> None:
        matches = [[{"face_id": FACE_ID, "similarity": 99.2}]] if matched else [[]]
        log.append(
            chain,
            AuditEvent.SEARCH,
            operation="SearchFacesByImage",
            outcome="allowed",
            threshold=95.0,
            probe_sha256=PROBE_SHA,
            faces_searched=1,
            faces_matched=int(matched),
            matches=matches,
            **caller,
        )

    def refusal(chain: str, reason: str, **caller: Any) -> None:
        log.append(
            chain, AuditEvent.REFUSAL, operation="SearchFacesByImage", outcome="refused", reason=reason, **caller
        )

    log.append("staff", AuditEvent.COLLECTION, operation="CreateCollection", outcome="allowed", caller="admin")
    log.append(
        "staff",
        AuditEvent.ENROLMENT,
        operation="IndexFaces",
        outcome="allowed",
        caller="admin",
        consent_reference=CONSENT,
        subject=SUBJECT,
        face_ids=[FACE_ID, OTHER_FACE_ID],
    )
    search("staff", True, **investigator)
    search("staff", False, **{**investigator, "case_reference": "CASE-7782"})
    search("staff", True, caller=SCRIPT_CALLER, purpose="general")
    search("visitors", False, caller="bob", purpose="general")
    refusal("staff", "ThresholdBelowFloor", **investigator)
    refusal("staff", "PurposeNotDeclared", caller="bob", purpose="marketing")
    refusal(":account", "QuotaExceeded", caller=SCRIPT_CALLER, purpose="general")
    log.append("staff", AuditEvent.ERASURE, operation="ErasePerson", outcome="allowed", caller="dpo", subject=SUBJECT)
    log.append(
        "visitors", AuditEvent.DELETION, operation="DeleteFaces", outcome="allowed", caller="admin", face_ids=[FACE_ID]
    )
    return store


def _report(store: MemoryAuditStore, since: datetime = START, until: datetime = START + timedelta(days=1)) -> Any:
    records = [record for chain in store.chains() for record in store.entries(chain)]
    return build_report(records, since, until, verify_all(store))


def test_report_counts_what_the_log_records() -> None:
    report = _report(_hand_made_log())

    assert report["searches_by_purpose"] == {"general": 2, "investigation": 2}
    assert report["searches_by_caller"] == {"alice": 2, "bob": 1, SCRIPT_CALLER: 1}
    assert report["match_rate"] == {"overall": 0.5, "by_purpose": {"general": 0.5, "investigation": 0.5}}
    assert report["refusals_by_reason"] == {"PurposeNotDeclared": 1, "QuotaExceeded": 1, "ThresholdBelowFloor": 1}
    assert report["refusals_by_caller"] == {"alice": 1, "bob": 1, SCRIPT_CALLER: 1}
    totals = report["totals"]
    assert (totals["searches"], totals["matched_searches"], totals["refusals"]) == (4, 2, 3)
    assert (totals["enrolments"], totals["faces_enrolled"], totals["deletions"], totals["erasures"]) == (1, 2, 1, 1)
    assert totals["distinct_case_references"] == 2
    staff = next(row for row in report["collections"] if row["collection"] == "staff")
    assert (staff["searches"], staff["match_rate"], staff["refusals"], staff["erasures"]) == (3, 0.6667, 2, 1)
    assert report["log"]["intact"] is True
    assert [chain["chain"] for chain in report["log"]["chains"]] == [":account", "staff", "visitors"]


def test_report_counts_an_enrolment_the_pipeline_processed_twice_once() -> None:
    store = _hand_made_log()
    log = AuditLog(store, clock=ticking_clock(START + timedelta(hours=1)))
    enrolment = {"operation": "EmbedFunction", "outcome": "allowed", "caller": "uploader", "consent_reference": CONSENT}
    log.append("visitors", AuditEvent.ENROLMENT, face_ids=[OTHER_FACE_ID], **enrolment)
    log.append("visitors", AuditEvent.ENROLMENT, face_ids=[OTHER_FACE_ID], **enrolment)  # the message redelivered
    log.append("visitors", AuditEvent.DELETION, operation="DeleteFaces", outcome="allowed", face_ids=[OTHER_FACE_ID])
    log.append("visitors", AuditEvent.ENROLMENT, face_ids=[OTHER_FACE_ID], **enrolment)  # enrolled again after it
    totals = _report(store)["totals"]
    assert (totals["enrolments"], totals["faces_enrolled"], totals["repeated_enrolments"]) == (3, 4, 1)
    assert totals["entries"] == 15
    assert "1 enrolment entries repeat faces already enrolled" in render_html(_report(store))


def test_report_counts_only_the_period() -> None:
    # The clock ticks a minute per entry from 09:00: the first six entries fall before 09:06.
    report = _report(_hand_made_log(), since=START + timedelta(minutes=6))
    assert report["totals"]["enrolments"] == 0
    assert report["totals"]["searches"] == 0
    assert report["totals"]["refusals"] == 3
    assert report["period"] == {"since": "2026-11-02T09:06:00+00:00", "until": "2026-11-03T09:00:00+00:00"}
    assert "2026-11-02 09:06:00 UTC to 2026-11-03 09:00:00 UTC" in render_html(report)


def test_report_page_holds_nothing_biometric_and_escapes_the_log() -> None:
    report = _report(_hand_made_log())
    page = render_html(report)
    data = json.dumps(report)

    for secret in (FACE_ID, OTHER_FACE_ID, PROBE_SHA, SUBJECT, CONSENT, CASE):
        assert secret not in page
        assert secret not in data
    assert SCRIPT_CALLER not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    # Self-contained: no script, stylesheet, font or image from anywhere.
    for external in ("<script", "<link", "<img", "src=", "http://", "https://", "@import", "url("):
        assert external not in page
    assert "The audit log is intact" in page
    assert "ThresholdBelowFloor" in page


def test_report_page_says_when_the_log_failed_verification() -> None:
    store = _hand_made_log()
    del store.records["staff"][3]
    report = _report(store)

    assert report["log"]["intact"] is False
    page = render_html(report)
    assert "The audit log FAILED verification" in page
    assert "entry 3 removed: the sequence jumps to 4" in page


# --- the CLI ------------------------------------------------------------------------------------------------


def test_audit_verify_passes_an_intact_table_and_fails_a_tampered_one(
    audit_table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log = AuditLog(DynamoAuditStore(audit_table), clock=ticking_clock())
    appended = _appended(log, "staff", 3)
    (account,) = _appended(log, ":account", 1)

    assert cli.main(["audit", "verify"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f":account: 1 entries, head 1 {account.hash[:12]}, intact",
        f"staff: 3 entries, head 3 {appended[-1].hash[:12]}, intact",
        "signed digests: this stack has none (deploy the current template.yaml)",
        "2 chain(s), 4 entries: all intact",
    ]

    forged = _altered(appended[0], caller="mallory")
    boto3.resource("dynamodb").Table(audit_table).put_item(
        Item={"chain": "staff", "seq": 1, "body": forged.body, "prev_hash": forged.prev_hash, "hash": forged.hash}
    )
    assert cli.main(["audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert "staff: 3 entries, head 3" in out
    assert "  entry 1 altered: its content no longer matches its hash" in out
    assert out.rstrip().endswith("the audit log has been altered or damaged")

    assert cli.main(["audit", "verify", "--chain", "staff", "--json"]) == 1
    line, digests = capsys.readouterr().out.splitlines()
    assert json.loads(line) == {
        "chain": "staff",
        "entries": 3,
        "head_seq": 3,
        "head_hash": appended[-1].hash,
        "intact": False,
        "problems": ["entry 1 altered: its content no longer matches its hash"],
        "signed_seq": None,
    }
    assert json.loads(digests) == {"digests": None}
    assert cli.main(["audit", "verify", "--chain", ":account"]) == 0


def test_audit_list_prints_one_line_per_entry_in_time_order(
    audit_table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = DynamoAuditStore(audit_table)
    log = AuditLog(store, clock=ticking_clock())
    log.append(
        "staff",
        AuditEvent.SEARCH,
        operation="SearchFacesByImage",
        outcome="allowed",
        caller="alice",
        purpose="investigation",
        matches=[[{"face_id": FACE_ID, "similarity": 99.0}, {"face_id": OTHER_FACE_ID, "similarity": 97.5}]],
    )
    log.append(
        ":account",
        AuditEvent.REFUSAL,
        operation="CompareFaces",
        outcome="refused",
        caller="bob",
        reason="QuotaExceeded",
    )
    log.append("staff", AuditEvent.ERASURE, operation="ErasePerson", outcome="allowed", caller="dpo")

    assert cli.main(["audit", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].split() == [
        "2026-11-02T09:00:00.000+00:00",
        "staff",
        "#1",
        "search",
        "SearchFacesByImage",
        "caller=alice",
        "purpose=investigation",
        "allowed",
        "matches=2",
    ]
    assert lines[1].split()[1:] == [
        ":account",
        "#1",
        "refusal",
        "CompareFaces",
        "caller=bob",
        "purpose=-",
        "refused",
        "QuotaExceeded",
    ]

    assert cli.main(["audit", "list", "--chain", "staff", "--since", "2026-11-02T09:01Z"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert "staff #2  erasure  ErasePerson  caller=dpo" in line

    assert cli.main(["audit", "list", "--until", "2026-11-01", "--json"]) == 0
    assert capsys.readouterr().out == ""


def test_report_command_writes_the_page_and_its_json(
    audit_table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = AuditLog(DynamoAuditStore(audit_table), clock=ticking_clock())
    for matched in (1, 0, 1, 1):
        log.append(
            "staff",
            AuditEvent.SEARCH,
            outcome="allowed",
            caller="alice",
            purpose="investigation",
            case_reference=CASE,
            probe_sha256=PROBE_SHA,
            faces_matched=matched,
        )
    log.append("staff", AuditEvent.ERASURE, outcome="allowed", caller="dpo", subject=SUBJECT)

    out = tmp_path / "reports" / "november.html"
    code = cli.main(["report", "--since", "2026-11-01", "--until", "2026-11-30", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("From 2026-11-01 to 2026-11-30: 4 searches (3 matched at least one face, 75.0%)")
    assert "1 erasure," in printed
    assert "The audit log is intact (1 chain, 5 entries verified)." in printed
    assert f"wrote {out}" in printed and f"wrote {out.with_suffix('.json')}" in printed

    page = out.read_text()
    assert "<h2>Searches by purpose</h2>" in page and "75.0%" in page
    assert PROBE_SHA not in page and SUBJECT not in page and CASE not in page
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["totals"]["searches"] == 4
    assert data["match_rate"]["overall"] == 0.75
    assert data["log"]["intact"] is True

    # A tampered log still gets its report, which says so, and the command fails.
    boto3.resource("dynamodb").Table(audit_table).delete_item(Key={"chain": "staff", "seq": 2})
    assert cli.main(["report", "--since", "2026-11-01", "--until", "2026-11-30", "--out", str(out)]) == 1
    assert "The audit log FAILED verification: 2 problems in staff" in capsys.readouterr().out
    assert "FAILED verification" in out.read_text()


def test_report_shows_how_risky_the_searches_were() -> None:
    store = _hand_made_log()  # its searches predate the risk field: "not recorded"
    log = AuditLog(store, clock=ticking_clock())
    for risk in (2e-5, 3e-3, 0.2):
        fields = {"caller": "alice", "purpose": "general", "faces_searched": 1, "faces_matched": 0, "matches": [[]]}
        log.append(
            "staff", AuditEvent.SEARCH, operation="SearchFaces", outcome="allowed", false_match_risk=risk, **fields
        )
    report = _report(store)

    assert report["false_match_risk"]["searches"] == {
        "under 0.01%": 1,
        "0.1% to 1%": 1,
        "10% or more": 1,
        "not recorded": 4,
    }
    assert report["false_match_risk"]["median"] == pytest.approx(3e-3)
    assert report["false_match_risk"]["highest"] == pytest.approx(0.2)
    page = render_html(report)
    assert "False-match risk of searches" in page and "10% or more" in page
